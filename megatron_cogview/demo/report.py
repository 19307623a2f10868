"""report/: metrics.json, the sample grid (overview.png), training curves, VQ-VAE reconstructions, summary.md."""
from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

from megatron_cogview.allocator import loaded_allocator
from megatron_cogview.demo.figures import read_curve, sample_grid, training_curves, vqvae_reconstructions
from megatron_cogview.demo.metrics import metrics_table


def _stage_seconds(out: Path) -> dict[str, float]:
    marks = [(json.loads(m.read_text()), m.stem) for m in (out / "stages").glob("*.json")]
    return {name: data.get("seconds", 0.0) for data, name in sorted(marks, key=lambda x: x[0].get("index", 0))}


def write_report(out: Path, settings: Any, _times: dict[str, float]) -> dict[str, Any]:
    """Write report/metrics.json, report/overview.png and report/summary.md; return the metrics."""
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    scores = json.loads((out / "samples" / "scores.json").read_text())
    evaluation = json.loads((out / "eval" / "demo_metrics.json").read_text())
    times = _stage_seconds(out)
    metrics = {
        **{f"{g}_{name}{suffix}": evaluation[g]["rows"][row][key] for g in ("heldout", "seen")
           for name, row in (("accuracy_one_sample", "one_sample"), ("accuracy_post_selection", "reranked"))
           for suffix, key in (("", "accuracy"), ("_ci95", "accuracy_ci95"))},
        "heldout_shapes_fid": {r: evaluation["heldout"]["rows"][r]["fid_0"] for r in ("one_sample", "reranked")},
        "evaluation": evaluation,
        "stage_seconds": times, "total_seconds": round(sum(times.values()), 1),
        "settings": dataclasses.asdict(settings), "seed": settings.seed, "machine": platform.platform(),
        "allocator": loaded_allocator(),
    }
    curves = {"pre-training (text-to-image)": read_curve(out / "logs" / "pretrain.log"),
              "caption model (image-to-text)": read_curve(out / "logs" / "caption.log")}
    training_curves(curves, report / "training_curves.png")
    metrics["training_curves"] = curves
    metrics["vqvae_reconstructions"] = vqvae_reconstructions(out, report / "vqvae_reconstructions.png")
    metrics["sample_grid"] = sample_grid(out, scores, report / "overview.png")
    (report / "metrics.json").write_text(json.dumps(metrics, indent=1))
    lines = [
        "# megatron-cogview laptop demo",
        "",
        "A tiny CogView trained on CPU on synthetic shapes; images generated for captions whose",
        "(colour, shape, position) combination never appeared in training, scored by the attribute checker",
        "(shape, colour and position must all be right), with Wilson 95% intervals; Caption Loss under the",
        "caption model; shapes-FID-k of held-out samples against held-out real images (blur radius k).",
        "",
        *metrics_table(evaluation),
        "",
        *(["The last row reads real held-out images after the VQ-VAE's encode -> decode: every generated image",
           "goes through the same decoder, so that is the most a generated image can score; the rest of a miss rate",
           "is the transformer's.", ""] if "tokenizer_round_trip" in evaluation else []),
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {sum(times.values()):.0f}",
        "",
        "Samples (32 px, shown 4x with nearest neighbour): one row per caption, 8 of its draws; the blue frame",
        "marks the post-selected pick (lowest Caption Loss of all its draws), the bar under each draw is green when the attribute",
        "checker reads colour, shape and position right, red when not.",
        "",
        "![samples](overview.png)",
        "",
        "Training loss (total, text, image) against step, for pre-training and the caption model:",
        "",
        "![training curves](training_curves.png)",
        "",
        f"VQ-VAE: held-out images (top) and their reconstructions (bottom), mean PSNR "
        f"{metrics['vqvae_reconstructions']['mean_psnr_db']:.1f} dB:",
        "",
        "![VQ-VAE reconstructions](vqvae_reconstructions.png)",
        "",
        "Per-sample PNGs, grids and samples.jsonl are under ../samples/.",
    ]
    (report / "summary.md").write_text("\n".join(lines) + "\n")
    return metrics
