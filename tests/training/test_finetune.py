"""finetune/caption_model.py: image-to-text fine-tuning from the text-to-image shards and checkpoint."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from finetune.caption_model import to_image_to_text
from tests.training.data import LAYOUT, SEQ_LEN, make_dataset, records
from tests.training.runner import ROOT, base_args, env, losses, train
from tokenization.unified import split_sequence


def test_reordering_keeps_text_and_image() -> None:
    for rec in list(records(5)):
        tokens, positions = to_image_to_text(rec.tokens, LAYOUT)
        assert tokens.shape == rec.tokens.shape == (SEQ_LEN,)
        before = {p.kind: p.ids.tolist() for p in split_sequence(LAYOUT, rec.tokens) if p.kind != "command"}
        parts = split_sequence(LAYOUT, tokens)
        after = {p.kind: p.ids.tolist() for p in parts if p.kind != "command"}
        assert before == after
        names = [p.name(LAYOUT) for p in parts if p.kind == "command"]
        assert names[:4] == ["[BASE]", "[BOI1]", "[EOI1]", "[ROI1]"]
        assert [p.kind for p in parts][:3] == ["command", "command", "image"]
        assert np.array_equal(positions[: len(tokens)], np.arange(SEQ_LEN))


def test_caption_model_finetunes_from_pretrained(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=128, samples_per_shard=32)
    train(base_args(data, str(tmp_path / "t2i"), 10))
    args = base_args(data, str(tmp_path / "cap"), 10, "--finetune-from", str(tmp_path / "t2i"))
    proc = subprocess.run([sys.executable, "-m", "finetune.caption_model", *args], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning from the weights of" in proc.stdout
    l = losses(tmp_path / "cap")
    assert l[10] < l[1]
    # a checkpoint of another shape is refused in one line
    bad = base_args(data, str(tmp_path / "bad"), 2, "--finetune-from", str(tmp_path / "t2i"), "--hidden-size", "32")
    proc = train(bad, check=False)
    assert proc.returncode == 2 and "does not fit this model" in proc.stderr
