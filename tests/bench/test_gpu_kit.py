"""The GPU kit on CPU: bench/gpu_validate.py --tiny runs every stage, and the offline wheelhouse installs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_validate.py"


def _env() -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        e.pop(k, None)
    return e


def test_unknown_stage_is_one_clear_error() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--only", "nope"], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown stage 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_tiny_validation_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["stage"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert list(results) == ["env", "kernels", "launcher", "mfu", "generate", "fp16", "tp"]
    assert all(r["ok"] for r in results.values())
    # each stage measured what it says, not just "ok"
    assert results["env"]["bf16_gemm_tflops"] > 0 and results["env"]["copy_gb_s"] > 0
    assert set(results["kernels"]["sdpa"]) == {"train", "prefill", "decode"}
    assert all(results["kernels"]["sdpa"].values())  # every phase dispatched to some SDPA kernel
    assert results["kernels"]["checkpointing"]["max_grad_rel"] < 1e-5
    assert results["launcher"]["iterations"] == [1, 2, 3, 4, 5, 6]
    assert [r["checkpoint_activations"] for r in results["mfu"]["runs"]] == [False, True]
    assert all(r["tokens_per_s"] > 0 for r in results["mfu"]["runs"])
    assert [(r["batch"], r["mode"]) for r in results["generate"]["runs"]] == [
        (1, "eager"), (1, "static"), (2, "eager"), (2, "static")]
    assert results["generate"]["same_tokens"] == [True, True]
    assert set(results["fp16"]["arms"]) == {"pre-ln+plain", "sandwich+pb-relax"}
    assert results["tp"]["tp1"] == pytest.approx(results["tp"]["tp2"], rel=1e-4)
    assert "[ok ] tp" in proc.stdout and "7/7 stages ok" in proc.stdout


@pytest.mark.slow
def test_wheelhouse_installs_the_project_offline(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "make_wheelhouse.sh"), str(wheels)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")}
    assert {"megatron_cogview", "deepspeed", "sentencepiece", "webdataset", "numpy"} <= names
    assert "torch" not in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900, capture_output=True)  # the node's own torch
    proc = subprocess.run([*pip, "--no-index", "--find-links", str(wheels), "megatron-cogview"], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([str(venv / "bin" / "cogview"), "info", "--preset", "tiny"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
