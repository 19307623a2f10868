"""Faults around a running job: a rank killed or hung mid-step, data changed under it, two runs on one --save."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from megatron_cogview.checkpoint.layout import CheckpointError, read_latest
from megatron_cogview.training.save_lock import LOCK_FILE, acquire
from tests.faults.helpers import (
    COMMON,
    DP2,
    ITERS,
    assert_intact,
    assert_one_line,
    assert_resumes_exactly,
    clone,
    command,
    fault_env,
    launch,
)
from tests.training.data import make_dataset
from tests.training.runner import ROOT, base_args


@pytest.mark.slow
def test_rank_killed_mid_step_the_other_exits_promptly(data: str, reference2: Path, tmp_path: Path) -> None:
    save, stamp = clone(reference2, tmp_path / "run", at=3), tmp_path / "killed_at"
    proc = launch(data, save, *DP2, nproc=2, fault={"kind": "kill_step", "iteration": 5, "rank": 1,
                                                      "stamp": str(stamp)})
    exit_s = time.time() - float(stamp.read_text())
    assert_one_line(proc, "[rank 0]: error: lost contact with another rank", "Connection", "relaunch with --load")
    print(f"surviving rank and launcher exited {exit_s:.1f} s after the kill")
    assert_intact(save, 3, [3])
    assert_resumes_exactly(data, save, reference2, 3, *DP2, nproc=2)


@pytest.mark.slow
def test_hung_rank_ends_at_the_distributed_timeout(data: str, tmp_path: Path) -> None:
    # Two ranks started directly (torchrun would add its fixed 30 s grace before killing the stopped rank).
    save, stamp = tmp_path / "run", tmp_path / "stopped_at"
    args = base_args(data, str(save), ITERS, *COMMON, *DP2, "--distributed-timeout-minutes", "0.2")
    fault = fault_env({"kind": "hang_step", "iteration": 2, "rank": 1, "stamp": str(stamp)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ranks = [subprocess.Popen(command(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**fault, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in range(2)]
    try:
        out, err = ranks[0].communicate(timeout=240)
        exit_s = time.time() - float(stamp.read_text())
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert_one_line(subprocess.CompletedProcess(ranks[0].args, ranks[0].returncode, out, err),
                    "[rank 0]: error: lost contact with another rank", "Timed out", "relaunch with --load")
    print(f"with a 12 s timeout, rank 0 exited {exit_s:.1f} s after rank 1 hung")


def test_deleted_shard_stops_then_resumes_once_restored(data: str, reference: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(data, tmp_path / "data")
    save = clone(reference, tmp_path / "run", at=3)
    proc = launch(str(copy), save, fault={"kind": "delete_shards", "iteration": 5, "path": str(copy)})
    assert_one_line(proc, "listed in dataset.json is missing", "restore it and relaunch with --load")
    latest = read_latest(save)
    assert_intact(save, latest, [3, 6][: [3, 6].index(latest) + 1])
    for shard in Path(data).glob("*.tar"):
        shutil.copy(shard, copy / shard.name)
    assert_resumes_exactly(str(copy), save, reference, latest)


def test_replaced_dataset_is_refused_on_resume(data: str, reference: Path, tmp_path: Path) -> None:
    other = make_dataset(str(tmp_path / "other"), seed=1)  # same shard names and counts, other samples
    save = clone(reference, tmp_path / "run", at=3)
    proc = launch(other, save)
    assert_one_line(proc, "the training data differs from the data checkpoint 3", "data fingerprint",
                    "resume with the same --train-data")
    assert_intact(save, 3, [3])


def test_second_run_on_the_same_save_folder_refuses(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=3)
    first = subprocess.Popen(command(base_args(data, str(save), 100000, *COMMON, "--load", str(save))),
                             env=fault_env(None), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # wait until it trains
            if line.startswith("iteration 4/"):
                break
        second = launch(data, save)
        assert_one_line(second, f"--save '{save}' is in use by another run (host {socket.gethostname()}, "
                                f"pid {first.pid}", f"delete {save / LOCK_FILE}")
    finally:
        first.terminate()
        out = first.communicate(timeout=120)[0]
    assert first.returncode == 0, out[-3000:]  # the first run was not disturbed
    assert not (save / LOCK_FILE).exists()


def test_lock_file_owner_and_stale_rules(tmp_path: Path) -> None:
    warnings: list[str] = []
    lock = acquire(str(tmp_path), warnings.append)
    owner = json.loads((tmp_path / LOCK_FILE).read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    with pytest.raises(CheckpointError, match=f"in use by another run .*pid {os.getpid()}"):
        acquire(str(tmp_path), warnings.append)
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    acquire(str(tmp_path), warnings.append).release()  # same host, pid gone: stale
    assert f"pid {dead.pid} is no longer running on this host" in warnings[-1]
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "other-node", "pid": 1}))
    with pytest.raises(CheckpointError, match="host other-node, pid 1"):
        acquire(str(tmp_path), warnings.append)  # another host, fresh heartbeat: alive
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_FILE, (old, old))
    acquire(str(tmp_path), warnings.append).release()  # another host, heartbeat an hour old: stale
    assert "heartbeat stopped 60 minutes ago" in warnings[-1]


@pytest.mark.slow
def test_disk_full_on_one_rank_of_two(data: str, reference2: Path, tmp_path: Path) -> None:
    save = clone(reference2, tmp_path / "run", at=3)
    proc = launch(data, save, *DP2, nproc=2, fault={"kind": "enospc_save", "iteration": 6, "rank": 1})
    assert_one_line(proc, "[rank 1]: error: could not write checkpoint 6", "rank_00001_state.pt", "disk full",
                    "the last complete checkpoint (3) is intact")
    assert_one_line(proc, "[rank 0]: error: lost contact with another rank")
    assert_intact(save, 3, [3])  # rank 0 removed the partial folder of checkpoint 6
