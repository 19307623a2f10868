"""Evaluation outputs: results.json, a markdown table in the paper's shape, a grid of best and worst samples."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from megatron_cogview.evaluation.scoring import Draw

ROW_NAMES = {"one_sample": "one-sample", "reranked": "reranked"}


def _pct(row: dict[str, Any]) -> str:
    low, high = row["accuracy_ci95"]
    return f"{100 * row['accuracy']:.1f}% [{100 * low:.0f}-{100 * high:.0f}]"


def markdown_table(results: dict[str, Any]) -> str:
    """Rows one-sample / reranked; columns FID-k, IS, CapLoss and checker accuracy (95% CI) where measured."""
    rows = results["rows"]
    first = rows["one_sample"]
    radii = [k for k in results["settings"]["radii"]]
    cols: list[tuple[str, Any]] = []
    if "fid_0" in first:
        cols += [(f"FID-{k:g}", lambda r, k=k: f"{r[f'fid_{k:g}']:.2f}") for k in radii]
        cols.append(("IS", lambda r: f"{r['is_mean']:.2f} ± {r['is_std']:.2f}"))
    if "caption_loss" in first:
        cols.append(("CapLoss", lambda r: f"{r['caption_loss']:.3f}"))
    if "accuracy" in first:
        cols.append(("checker accuracy [95% CI]", _pct))
    head = "| | " + " | ".join(name for name, _ in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for key, row in rows.items():
        lines.append(f"| {ROW_NAMES[key]} | " + " | ".join(fmt(row) for _, fmt in cols) + " |")
    note = (f"{results['captions']} captions, {results['samples_per_caption']} sample(s) per caption"
            + (f", each the lowest Caption Loss of {results['rerank']} draws" if results["rerank"] > 1 else "")
            + f"; {results['reference_images']} reference images; features: {results.get('features', 'none')}.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def best_worst_grid(draws: Sequence[Draw], captions: Sequence[str], target: Path, limit: int = 24) -> None:
    """One row per caption (first `limit`): caption, lowest-CapLoss sample, highest-CapLoss sample."""
    rows = []
    for c, caption in enumerate(captions[:limit]):
        mine = [d for d in draws if d.caption == c]
        if not mine:
            continue
        ordered = sorted(mine, key=lambda d: (d.caption_loss if d.caption_loss is not None else 0.0, d.sample))
        best, worst = Image.open(ordered[0].file).convert("RGB"), Image.open(ordered[-1].file).convert("RGB")
        side = max(64, best.height)
        best, worst = (im.resize((side, side), Image.NEAREST) for im in (best, worst))
        label = Image.new("RGB", (260, side), (255, 255, 255))
        text = caption if len(caption) <= 40 else caption[:37] + "..."
        ImageDraw.Draw(label).text((4, 4), f"{text}\nleft: best, right: worst", fill=(0, 0, 0))
        row = Image.new("RGB", (label.width + 2 * side + 4, side), (255, 255, 255))
        row.paste(label, (0, 0))
        row.paste(best, (label.width, 0))
        row.paste(worst, (label.width + side + 4, 0))
        rows.append(row)
    if not rows:
        return
    sheet = Image.new("RGB", (rows[0].width, sum(r.height + 4 for r in rows)), (230, 230, 230))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    sheet.save(target)


def write_outputs(out: Path, results: dict[str, Any], draws: Sequence[Draw], captions: Sequence[str]) -> None:
    """grid.png, results.md, then results.json last and atomically (its presence means the run finished)."""
    best_worst_grid(draws, captions, out / "grid.png")
    (out / "results.md").write_text(markdown_table(results), encoding="utf-8")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.replace(out / "results.json")
