"""The demo report's figures, and re-runs after one stage's output is deleted (slow: shares the fast demo)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from megatron_cogview.cli import main
from megatron_cogview.demo.figures import LABEL_W, PAD, SCALE, SHOWN, read_curve
from megatron_cogview.demo.metrics import ROUND_TRIP_IMAGES
from megatron_cogview.demo.pipeline import FAST, STAGE_FIELDS

pytestmark = pytest.mark.slow


def test_report_has_upscaled_grid_curves_and_reconstructions(demo: Path) -> None:
    report = demo / "report"
    summary = (report / "summary.md").read_text()
    for name in ("overview.png", "training_curves.png", "vqvae_reconstructions.png"):
        assert f"]({name})" in summary and (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["seed"] == FAST.seed and metrics["settings"]["gpt_iters"] == FAST.gpt_iters
    # the curves are the logged training lines, every one of them
    logged = [l for l in (demo / "logs" / "pretrain.log").read_text().splitlines() if l.startswith("iteration")]
    curve = metrics["training_curves"]["pre-training (text-to-image)"]
    assert len(curve) == len(logged) >= 2 and curve == read_curve(demo / "logs" / "pretrain.log")
    assert float(re.search(r"\| loss ([\d.]+)", logged[-1]).group(1)) == pytest.approx(curve[-1]["loss"])
    assert len(metrics["training_curves"]["caption model (image-to-text)"]) >= 2
    # the grid: one row per caption, each sample cell a nearest-neighbour blow-up of the sample's own pixels
    grid = metrics["sample_grid"]
    scores = json.loads((demo / "samples" / "scores.json").read_text())
    assert grid["rows"] == sum(len(scores[g]["per_prompt"]) for g in ("heldout", "seen"))
    sheet = Image.open(report / "overview.png").convert("RGB")
    assert sheet.size == (grid["width"], grid["height"]) and sheet.width >= min(SHOWN, FAST.samples_per_prompt) * 32 * SCALE
    records = [json.loads(x) for x in (demo / "samples" / "heldout" / "samples.jsonl").read_text().splitlines()]
    first_id = next(iter(scores["heldout"]["per_prompt"]))
    first = min((r for r in records if r["id"] == first_id), key=lambda r: r["sample"])
    sample = Image.open(demo / "samples" / "heldout" / first["file"]).convert("RGB")
    big = sample.resize((sample.width * SCALE, sample.height * SCALE), Image.NEAREST)
    cell = sheet.crop((LABEL_W, PAD, LABEL_W + big.width, PAD + big.height))
    assert cell.tobytes() == big.tobytes()  # the first row's first cell: its first draw, 4x, unblurred
    recon = metrics["vqvae_reconstructions"]
    assert recon["images"] == 8 and all(p > 0 for p in recon["psnr_db"])
    # the tokenizer's ceiling: held-out real images read after encode -> decode, a row of the summary's table
    heldout = len((demo / "data" / "synth" / "heldout.jsonl").read_text().splitlines())
    rt = metrics["evaluation"]["tokenizer_round_trip"]
    assert rt["images"] == min(ROUND_TRIP_IMAGES, heldout) and 0 <= rt["correct"] <= rt["images"]
    assert set(rt["by_shape"]) == {"square", "circle", "triangle"}
    assert f"through the VQ-VAE (the ceiling) | {rt['images']} | encode -> decode | {100 * rt['accuracy']:.1f}%" in summary


def test_deleting_one_stage_output_reruns_it_and_the_later_stages(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(demo / "eval")  # the output of stage 8 of 9
    assert main(["demo", "--fast", "--out", str(demo)]) == 0
    out = capsys.readouterr().out
    total = len(STAGE_FIELDS)
    skipped = {int(m) for m in re.findall(rf"\[(\d+)/{total}\] [^\n]*: done before, skipped", out)}
    ran = {int(m) for m in re.findall(rf"\[(\d+)/{total}\] [^\n]* \.\.\.", out)}
    assert skipped == set(range(1, 8)) and ran == {8, 9}, out
    assert (demo / "eval" / "demo_metrics.json").is_file() and (demo / "report" / "summary.md").is_file()
