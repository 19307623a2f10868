"""Weights & Biases logging (offline mode): the same fields and values as metrics.jsonl, one run across resumes."""
from __future__ import annotations

import json
from pathlib import Path

from tests.training.data import make_dataset
from tests.training.runner import base_args, command, env, metrics


def _run(args: list[str], wandb_dir: Path) -> None:
    import subprocess

    e = {**env(), "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    proc = subprocess.run(command(args), env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_offline_run_logs_every_metrics_field_and_resume_continues_it(tmp_path: Path) -> None:
    data = make_dataset(str(tmp_path / "data"), n=64)
    save, wdir = tmp_path / "run", tmp_path / "wb"
    wdir.mkdir()
    common = ["--wandb-project", "cogview-test", "--save-interval", "2"]
    _run(base_args(data, str(save), 4, *common, "--exit-interval", "2"), wdir)
    _run(base_args(data, str(save), 4, *common, "--load", str(save)), wdir)
    run_id = (save / "wandb_run_id.txt").read_text().strip()
    runs = sorted((wdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)  # the resumed launch continued the run
    logged = b"".join(p.read_bytes() for r in runs for p in r.glob("run-*.wandb"))
    records = metrics(save)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    for rec in records:
        for key, value in rec.items():
            if key in ("kind", "iteration", "time") or not isinstance(value, (int, float)):
                continue
            assert f"train/{key}".encode() in logged, key
            assert json.dumps(value).encode() in logged, (rec["iteration"], key, value)
