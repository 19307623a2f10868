"""Launch pretrain_gpt2.py as a user would (python or torchrun) and read its metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "pretrain_gpt2.py")


def env() -> dict[str, str]:
    # DS_ACCELERATOR=cpu pins the run to the CPU (gloo) even on a machine with GPUs.
    e = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    e.pop("WORLD_SIZE", None)
    e.pop("RANK", None)
    return e


def command(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, ENTRY, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", ENTRY, *args]


def train(args: list[str], nproc: int = 1, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run to completion; on failure show the output."""
    proc = subprocess.run(command(args, nproc), env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def metrics(save: str | Path, kind: str = "train") -> list[dict]:
    """Records of metrics.jsonl (train lines by default)."""
    path = Path(save) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def losses(save: str | Path) -> dict[int, float]:
    """iteration -> loss of every logged step (use --log-interval 1)."""
    return {r["iteration"]: r["loss"] for r in metrics(save)}


def base_args(data: str, save: str, iters: int, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--train-data", data, "--train-iters", str(iters), "--micro-batch-size", "8",
            "--log-interval", "1", "--lr", "3e-3", "--warmup", "2", "--save", save, *extra]
