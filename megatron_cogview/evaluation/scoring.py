"""Score generated samples: one-sample vs reranked sets, FID-k, IS, Caption Loss, checker accuracy with 95% CIs.

Each caption has S groups of R draws (sample j is in group j // R). The reranked set keeps the lowest-CapLoss
draw of every group; the one-sample set's FID and IS use the first draw of every group (the same number of
images, so FIDs are comparable), its CapLoss and accuracy use every draw (lower variance, same expectation).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from data_utils.progress import progress
from megatron_cogview.evaluation.metrics import fid_from_features, gaussian_blur, inception_score, wilson_interval

Combination = tuple[str, str, str]


class Extractor(Protocol):
    """Anything with extract(uint8 images [N, 3, H, W]) -> (features [N, d], class probabilities [N, C])."""

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Draw:
    """One generated image of a caption: caption index, sample index, file, CapLoss (None without a caption model)."""

    caption: int
    sample: int
    file: Path
    caption_loss: float | None


def extract_all(extractor: Extractor, images: torch.Tensor, radius: float = 0, batch: int = 64,
                desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features and class probabilities of uint8 images, blurred by `radius` first, in batches."""
    feats, probs = [], []
    with progress(images.size(0), desc, "img") as bar:
        for start in range(0, images.size(0), batch):
            f, p = extractor.extract(gaussian_blur(images[start : start + batch], radius))
            feats.append(f.float())
            probs.append(p.float())
            bar.update(min(batch, images.size(0) - start))
    return torch.cat(feats), torch.cat(probs)


def load_images(files: Sequence[Path]) -> torch.Tensor:
    """uint8 [N, 3, H, W] of PNG files of one size."""
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def select_sets(draws: Sequence[Draw], rerank: int) -> dict[str, list[Draw]]:
    """{'one_sample_first': first draw of each group, 'one_sample_all': every draw, 'reranked': best of each group}."""
    groups: dict[tuple[int, int], list[Draw]] = {}
    for d in draws:
        groups.setdefault((d.caption, d.sample // rerank), []).append(d)
    ordered = [sorted(g, key=lambda d: d.sample) for _, g in sorted(groups.items())]
    sets = {"one_sample_first": [g[0] for g in ordered], "one_sample_all": sorted(draws, key=lambda d: (d.caption, d.sample))}
    if rerank > 1 and all(d.caption_loss is not None for d in draws):
        sets["reranked"] = [min(g, key=lambda d: (d.caption_loss, d.sample)) for g in ordered]
    return sets


def _accuracy(picked: Sequence[Draw], combos: Sequence[Combination], checked: dict[Path, Combination | None]) -> dict[str, Any]:
    hits = sum(checked[d.file] == combos[d.caption] for d in picked)
    low, high = wilson_interval(hits, len(picked))
    return {"accuracy": hits / max(1, len(picked)), "accuracy_ci95": [low, high], "correct": hits, "trials": len(picked)}


def score(draws: Sequence[Draw], rerank: int, reference_images: torch.Tensor, extractor: Extractor | None,
          radii: Sequence[float] = (0, 1, 2, 4, 8), combos: Sequence[Combination] | None = None,
          checker: Callable[[Image.Image], Combination | None] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per row ('one_sample', and 'reranked' when rerank > 1 with CapLoss) as plain JSON-able dicts."""
    sets = select_sets(draws, rerank)
    rows: dict[str, dict[str, Any]] = {"one_sample": {}}
    if "reranked" in sets:
        rows["reranked"] = {}
    fid_sets = {"one_sample": sets["one_sample_first"], "reranked": sets.get("reranked", [])}
    stat_sets = {"one_sample": sets["one_sample_all"], "reranked": sets.get("reranked", [])}
    if extractor is not None:
        real = {k: extract_all(extractor, reference_images, k, desc=f"reference features (blur {k})")[0] for k in radii}
        for row in rows:
            images = load_images([d.file for d in fid_sets[row]])
            rows[row]["images"] = int(images.size(0))
            for k in radii:
                feats, probs = extract_all(extractor, images, k, desc=f"{row} features (blur {k})")
                rows[row][f"fid_{k:g}"] = fid_from_features(real[k], feats)
                if k == 0:
                    rows[row]["is_mean"], rows[row]["is_std"] = inception_score(probs, splits=10)
    for row in rows:
        losses = [d.caption_loss for d in stat_sets[row] if d.caption_loss is not None]
        if losses:
            rows[row]["caption_loss"] = float(np.mean(losses))
    if combos is not None and checker is not None:
        checked = {d.file: checker(Image.open(d.file).convert("RGB")) for d in sets["one_sample_all"]}
        for row in rows:
            rows[row].update(_accuracy(stat_sets[row], combos, checked))
    return rows
