"""`cogview demo --fast` end to end, then the generate CLI on what it trained (slow: ~2-3 min)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_cogview.cli import main
from megatron_cogview.demo.pipeline import STAGE_FIELDS

pytestmark = pytest.mark.slow


def test_demo_writes_report_and_checkpoints(demo: Path) -> None:
    metrics = json.loads((demo / "report" / "metrics.json").read_text())
    scores = json.loads((demo / "samples" / "scores.json").read_text())
    from PIL import Image

    from data_utils.checker import check_image

    for group in ("heldout", "seen"):  # re-read every sample with the attribute checker, against the captions
        records = [json.loads(x) for x in (demo / "samples" / group / "samples.jsonl").read_text().splitlines()]
        records = [r for r in records if "error" not in r]
        per_prompt = scores[group]["per_prompt"]
        assert len(records) == len(per_prompt) * scores[group]["samples_per_prompt"]
        hits = 0
        for r in records:
            got = check_image(Image.open(demo / "samples" / group / r["file"]).convert("RGB"))
            hits += [got.color, got.shape, got.position] == per_prompt[r["id"]]["expected"]
        accuracy, (low, high) = metrics[f"{group}_accuracy_one_sample"], metrics[f"{group}_accuracy_one_sample_ci95"]
        assert accuracy == hits / len(records) and low <= accuracy <= high and low < high, (group, hits, accuracy)
    assert (demo / "report" / "overview.png").stat().st_size > 0
    assert "held-out combinations" in (demo / "report" / "summary.md").read_text()
    assert scores["heldout"]["prompts"] == 10  # every held-out combination was prompted
    assert (demo / "checkpoints" / "text2image" / "latest").is_file()
    # the tokenizer's extra scenes at twice the pixels (read as random windows at the model's size)
    from megatron_cogview.demo.pipeline import FAST

    twice = sorted((demo / "data" / "synth-vq-2x" / "images").glob("*.png"))
    assert len(twice) == round(FAST.num_images * FAST.vq_2x_fraction) > 0
    assert Image.open(twice[0]).size == (2 * FAST.image_size,) * 2


def test_demo_rerun_skips_completed_stages(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fast", "--out", str(demo)]) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == len(STAGE_FIELDS)


def test_generate_text2image_with_post_selection(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle at the top left\n\nbad\tid\twith tabs\np2\ta blue square at the bottom right\n")
    out = tmp_path / "gen"
    code = main(["generate", "text2image", "--load", str(demo / "checkpoints" / "text2image"), "--prompts",
                 str(prompts), "--num-samples", "3", "--out", str(out), "--caption-model",
                 str(demo / "checkpoints" / "image2text"), "--top-k", "20", "--seed", "7"])
    assert code == 0
    err = capsys.readouterr().err
    assert "more than one tab" in err  # the bad line is reported, the others still run
    recs = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    good = [r for r in recs if "error" not in r]
    assert {r["id"] for r in good} == {"0001", "p2"} and len(good) == 6
    assert all((out / r["file"]).is_file() for r in good) and (out / "p2" / "grid.png").is_file()
    for pid in ("0001", "p2"):  # written best CapLoss first
        losses = [r["caption_loss"] for r in sorted(good, key=lambda r: r["rank"]) if r["id"] == pid]
        assert losses == sorted(losses)
    # same seed -> same images, run to run
    runs = []
    for name in ("g2", "g3"):
        main(["generate", "text2image", "--load", str(demo / "checkpoints" / "text2image"), "--prompt",
              "a blue square at the bottom right", "--num-samples", "2", "--out", str(tmp_path / name), "--top-k",
              "20", "--seed", "7"])
        runs.append([p.read_bytes() for p in sorted((tmp_path / name / "0001").glob("0*.png"))])
    assert len(runs[0]) == 2 and runs[0] == runs[1]


def test_generate_bad_input(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = str(demo / "checkpoints" / "text2image")
    assert main(["generate", "text2image", "--load", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other_tok"
    shutil.copytree(demo / "tokenizers" / "vqvae", other)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(other / "model.safetensors"))
    assert main(["generate", "text2image", "--load", ck, "--prompt", "x", "--image-tokenizer", str(other)]) == 2
    assert "is not the one checkpoint" in capsys.readouterr().err
    assert main(["generate", "image2text", "--load", ck, str(tmp_path / "nope.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_image2text_cli(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = next((demo / "data" / "synth" / "images").glob("*.png"))
    assert main(["generate", "image2text", "--load", str(demo / "checkpoints" / "image2text"), str(image),
                 "--max-len", "8", "--temperature", "0"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"].endswith(".png") and len(line["captions"]) == 1
