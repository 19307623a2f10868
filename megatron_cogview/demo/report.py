"""report/: metrics.json, a PNG overview grid with captions, and a short markdown summary."""
from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from megatron_cogview.demo.metrics import metrics_table


def _stage_seconds(out: Path) -> dict[str, float]:
    marks = [(json.loads(m.read_text()), m.stem) for m in (out / "stages").glob("*.json")]
    return {name: data.get("seconds", 0.0) for data, name in sorted(marks, key=lambda x: x[0].get("index", 0))}


def _overview(out: Path, scores: dict[str, Any], target: Path) -> None:
    """One row per prompt: its caption, then its sample grid (best CapLoss first)."""
    rows = []
    for group in ("heldout", "seen"):
        for pid, p in scores.get(group, {}).get("per_prompt", {}).items():
            grid = Image.open(out / "samples" / group / p["grid"]).convert("RGB")
            scale = max(1, 96 // grid.height) if grid.height < 96 else 1
            grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
            label = Image.new("RGB", (260, grid.height), (255, 255, 255))
            mark = "ok " if p["best_correct"] else "bad"
            ImageDraw.Draw(label).text((4, 4), f"[{group}] {mark}\n{p['prompt']}", fill=(0, 0, 0))
            row = Image.new("RGB", (label.width + grid.width, grid.height), (255, 255, 255))
            row.paste(label, (0, 0))
            row.paste(grid, (label.width, 0))
            rows.append(row)
    if not rows:
        return
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 4 for r in rows)), (230, 230, 230))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    sheet.save(target)


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
        "settings": dataclasses.asdict(settings), "machine": platform.platform(),
    }
    (report / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _overview(out, scores, report / "overview.png")
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
        "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {sum(times.values()):.0f}",
        "",
        "![overview](overview.png)",
        "",
        "Per-sample PNGs, grids and samples.jsonl are under ../samples/.",
    ]
    (report / "summary.md").write_text("\n".join(lines) + "\n")
    return metrics
