"""`cogview evaluate` end to end on the fast demo's checkpoints with --features shapes (slow), and the demo's
evaluation stage: CIs, shapes-FID and Caption Loss in its report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_cogview.cli import main

pytestmark = pytest.mark.slow


def _args(demo: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--load", str(demo / "checkpoints" / "text2image"), "--caption-model",
            str(demo / "checkpoints" / "image2text"), "--data", str(demo / "data" / "synth" / "heldout.jsonl"),
            "--out", str(out), "--features", "shapes", "--shapes-model",
            str(demo / "eval" / "shapes_extractor.safetensors"), "--samples-per-caption", "2", "--rerank", "3",
            "--top-k", "20", "--seed", "3", "--max-batch", "64", "--blur", "0", "2", "--max-references", "300",
            *extra]


def test_evaluate_shapes_end_to_end_and_resume(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main(_args(demo, out)) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    one, best = results["rows"]["one_sample"], results["rows"]["reranked"]
    assert results["captions"] == 10 and results["reference_images"] == 300
    assert one["trials"] == 10 * 6 and best["trials"] == one["images"] == best["images"] == 20
    assert best["caption_loss"] <= one["caption_loss"]  # reranking never worsens the mean CapLoss
    for row in (one, best):
        assert row["fid_0"] >= 0 and row["fid_2"] >= 0 and 1.0 <= row["is_mean"] <= 72.0
        low, high = row["accuracy_ci95"]
        assert low <= row["accuracy"] <= high
    assert "| one-sample |" in printed and "| reranked |" in printed
    assert (out / "results.md").read_text().startswith("| | FID-0 | FID-2 | IS | CapLoss | checker accuracy")
    assert Image.open(out / "grid.png").width > 0
    recs = [json.loads(x) for x in (out / "samples" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 60 and all((out / "samples" / r["file"]).is_file() for r in recs)

    # a stopped run (the last caption's records never written) continues, and scores the same
    keep = [r for r in recs if r["id"] != "c00009"]
    (out / "samples" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    assert main(_args(demo, out)) == 0
    assert "continuing: 9 of 10 captions" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]

    # other settings in the same folder: refused (exit 2) unless --overwrite
    assert main(_args(demo, out, "--temperature", "0.5")) == 2
    assert "holds samples made with other settings" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text()) == again  # the finished run's files stay as they were


def test_caption_loss_is_the_teacher_forced_nll_from_full_logits(demo: Path) -> None:
    """The CapLoss the evaluation ranks by equals -(1/|t|) sum log p(t_i | image, t_<i) from the full logits."""
    from data_utils.shards import Manifest
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.tasks.captioning import caption_template, rerank_images
    from tokenization.image import ImageTokenizer
    from tokenization.layout import TokenLayout
    from tokenization.text import TextTokenizer
    from tokenization.unified import UnifiedTokenizer

    torch.set_num_threads(1)
    model, _ = load_model(demo / "checkpoints" / "image2text", ParallelState.single())
    model.eval()
    layout = TokenLayout.from_dict(Manifest.load(str(demo / "data" / "shards" / "text2image")).layout)
    tok = UnifiedTokenizer(TextTokenizer(str(demo / "tokenizers" / "text.model")),
                           ImageTokenizer.from_pretrained(str(demo / "tokenizers" / "vqvae")), layout)
    rows = [json.loads(x) for x in (demo / "data" / "synth" / "heldout.jsonl").read_text().splitlines()[:2]]
    images = [Image.open(demo / "data" / "synth" / r["image"]).convert("RGB") for r in rows]
    codes = tok.image.encode(images).view(1, 2, -1)  # type: ignore[union-attr]
    caption = rows[0]["caption"]
    got = rerank_images(model, tok, [caption], codes, keep=2).scores[0]
    t = caption_template(tok)
    text = tok.encode_text(caption)
    for j in range(2):
        image = layout.image_id(codes[0, j]).tolist()
        seq = torch.tensor([[*t.head, *image, *t.middle, *text]])
        with torch.no_grad():
            logp = torch.log_softmax(model(seq, gather=True)[0].double(), -1)
        start = 4 + len(image)
        ref = -sum(logp[start + i - 1, tok_id].item() for i, tok_id in enumerate(text)) / len(text)
        assert float(got[j]) == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_evaluate_bad_input_is_one_line_and_writes_nothing(demo: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    base = ["evaluate", "--load", str(demo / "checkpoints" / "text2image"), "--out", str(out)]
    heldout = str(demo / "data" / "synth" / "heldout.jsonl")
    cases = [
        (["--data", heldout, "--features", "inception", "--inception-weights", str(tmp_path / "missing.pth")],
         "missing.pth' not found; download"),
        (["--data", heldout, "--features", "inception"], "needs --inception-weights"),
        (["--data", heldout, "--rerank", "4"], "needs --caption-model"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append((["--data", str(empty), "--features", "none"], "holds no (caption, image) pairs"))
    orphan = tmp_path / "orphan.jsonl"
    orphan.write_text(json.dumps({"image": "nowhere.png", "caption": "a red circle at the top left"}) + "\n")
    cases.append((["--data", str(orphan), "--features", "none"], "has no image"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists()


def test_demo_report_has_cis_fid_and_caption_loss(demo: Path) -> None:
    metrics = json.loads((demo / "report" / "metrics.json").read_text())
    for key in ("heldout_accuracy_one_sample", "heldout_accuracy_post_selection", "seen_accuracy_post_selection"):
        low, high = metrics[key + "_ci95"]
        assert low <= metrics[key] <= high
    ev = metrics["evaluation"]["heldout"]["rows"]
    assert ev["reranked"]["caption_loss"] <= ev["one_sample"]["caption_loss"]
    assert np.isfinite(metrics["heldout_shapes_fid"]["one_sample"])
    assert ev["one_sample"]["trials"] == 10 * 4 and ev["reranked"]["trials"] == 10 * 2
    assert "best of 2 by CapLoss" in (demo / "report" / "summary.md").read_text()
