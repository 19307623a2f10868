"""megatron_cogview/finetune/style.py and scripts/finetune_style.sh: the style recipe's defaults, refusal, and a real mixed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cogview.finetune.style import main, style_argv
from tests.training.data import make_dataset
from tests.training.runner import ROOT, base_args, env, train


def test_defaults_fill_only_flags_not_given() -> None:
    argv = style_argv(["--lr=1e-4", "--finetune-from", "ckpt", "--train-iters", "7"])
    assert argv[:4] == ["--warmup", "0.01", "--txt-loss-scale", "0.1"]
    assert argv[4:] == ["--lr=1e-4", "--finetune-from", "ckpt", "--train-iters", "7"]


def test_random_start_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--train-data", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --finetune-from" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_style_script_mixes_style_data_and_finetunes(tmp_path: Path) -> None:
    general = make_dataset(str(tmp_path / "general"), n=64, seed=0)
    style = make_dataset(str(tmp_path / "style"), n=64, seed=1)
    train(base_args(general, str(tmp_path / "t2i"), 2))
    e = {**env(), "STYLE_DATA": style, "GENERAL_DATA": general, "STYLE_WEIGHT": "3", "PYTHON": sys.executable,
         "FINETUNE_FROM": str(tmp_path / "t2i"), "SAVE": str(tmp_path / "ft"), "PRESET": "tiny", "ITERS": "2",
         "EXTRA": ""}
    proc = subprocess.run(["bash", "scripts/finetune_style.sh"], env=e, cwd=ROOT, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fine-tuning from the weights of" in proc.stdout
    assert (tmp_path / "ft" / "latest").read_text().strip() == "2"
    meta = json.loads(next((tmp_path / "ft").glob("*/cogview_meta.json")).read_text())
    assert meta["tokenizers"]["layout_fingerprint"]
    assert os.path.exists(tmp_path / "ft" / "metrics.jsonl")
