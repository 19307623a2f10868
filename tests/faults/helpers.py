"""Shared pieces of the fault-injection suite: launch a run with a fault, check the three promises.

Every fault test checks (1) one clear error line and a non-zero exit, no traceback; (2) the last complete
checkpoint is intact and no half-written folder is left; (3) relaunching with --load continues and
matches an uninterrupted run's losses exactly.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from megatron_cogview.checkpoint.layout import DS_TRACKER, META_FILE, TRACKER, read_latest
from tests.training.runner import ROOT, base_args, env, losses

INJECT = str(ROOT / "tests" / "faults" / "inject.py")
ITERS = 8
# checkpoints 3, 6 and 8 in a full run; a small shuffle buffer opens the shards one after another
COMMON = ("--save-interval", "3", "--keep-last", "10", "--shuffle-buffer", "16")
DP2 = ("--micro-batch-size", "4")  # with nproc=2: the same global batch on two data-parallel ranks


def command(args: list[str], nproc: int = 1) -> list[str]:
    """pretrain_gpt2.py's main behind the fault injector, under python or torchrun."""
    if nproc == 1:
        return [sys.executable, INJECT, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", INJECT, *args]


def fault_env(fault: dict | None) -> dict[str, str]:
    e = env()
    if fault is not None:
        e["COGVIEW_FAULT"] = json.dumps(fault)
    return e


def launch(data: str, save: Path, *extra: str, fault: dict | None = None, nproc: int = 1, iters: int = ITERS,
           load: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    """One run of the tiny model (resuming from `save` when `load`), with an optional fault."""
    args = base_args(data, str(save), iters, *COMMON, *extra) + (["--load", str(save)] if load else [])
    return subprocess.run(command(args, nproc), env=fault_env(fault), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def clone(reference: Path, dst: Path, at: int) -> Path:
    """A copy of the reference run's folder as it was right after checkpoint `at` (later ones removed)."""
    dst.mkdir(parents=True)
    for it in (p for p in reference.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) <= at):
        shutil.copytree(it, dst / it.name)
    for name in (TRACKER, DS_TRACKER):
        (dst / name).write_text(str(at))
    return dst


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """(1): a non-zero exit, no traceback from our processes, and an error line containing every needle.
    (torchrun itself reports a failed child with its own traceback; that one is the launcher's, not ours.)"""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    if "torch.distributed.run" in proc.args:
        assert not [l for l in out.splitlines() if l.startswith("[rank") and "Traceback" in l], out[-4000:]
    else:
        assert "Traceback" not in out, out[-4000:]
    lines = [l for l in proc.stderr.splitlines() if ": error: " in l and all(n in l for n in needles)]
    assert lines, (needles, proc.stderr[-3000:])
    return lines[0]


def assert_intact(save: Path, latest: int, folders: list[int], partials: tuple[str, ...] = ()) -> None:
    """(2): the trackers name `latest`, every iteration folder is complete, and the only half-written folders
    are the hidden `partials` (a kill -9 leaves one; the next run deletes it)."""
    assert read_latest(save) == latest
    assert (save / DS_TRACKER).read_text().strip() == str(latest)
    names = sorted(p.name for p in save.iterdir() if p.is_dir())
    assert names == sorted([*partials, *map(str, folders)]), names
    for it in folders:
        assert (save / str(it) / META_FILE).is_file()
        assert (save / str(it) / "mp_rank_00_model_states.pt").is_file()


def assert_resumes_exactly(data: str, save: Path, reference: Path, resumed_at: int, *extra: str,
                           nproc: int = 1) -> str:
    """(3): a relaunch with --load resumes at `resumed_at` and logs the reference run's losses after it;
    returns its stdout."""
    (save / "metrics.jsonl").unlink(missing_ok=True)
    proc = launch(data, save, *extra, nproc=nproc)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"resumed from {save} at iteration {resumed_at}" in proc.stdout
    got, ref = losses(save), losses(reference)
    assert sorted(got) == list(range(resumed_at + 1, ITERS + 1))
    assert [got[i] for i in sorted(got)] == [ref[i] for i in sorted(got)]
    assert read_latest(save) == ITERS
    return proc.stdout
