"""Faults while a checkpoint is written: disk full, SIGTERM, kill -9, a read-only --save folder."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.faults.helpers import assert_intact, assert_one_line, assert_resumes_exactly, clone, launch


def test_disk_full_during_save(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=3)
    proc = launch(data, save, fault={"kind": "enospc_save", "iteration": 6})
    assert_one_line(proc, "could not write checkpoint 6", "disk full", "No space left on device",
                    "the last complete checkpoint (3) is intact", f"relaunch with --load {save}")
    assert_intact(save, 3, [3])  # the half-written folder of checkpoint 6 is gone
    assert not (save / ".cogview_run.lock").exists()
    assert_resumes_exactly(data, save, reference, 3)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[None]:
    """A real size-limited tmpfs at `folder` (needs root and permission to mount; skipped otherwise)."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root and the permission to mount")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.slow
def test_disk_full_on_a_real_small_tmpfs(data: str, reference: Path, tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    with small_tmpfs(mount, "2500k"):  # room for checkpoint 3 (1.6 MB) but not also for checkpoint 6
        save = clone(reference, mount / "run", at=3)
        proc = launch(data, save)
        assert_one_line(proc, "could not write checkpoint 6", "disk full", "MiB free there",
                        "the last complete checkpoint (3) is intact", f"relaunch with --load {save}")
        assert_intact(save, 3, [3])
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)  # the user frees space
        assert_resumes_exactly(data, save, reference, 3)


def test_kill_9_during_save(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=3)
    proc = launch(data, save, fault={"kind": "kill_in_save", "iteration": 6})
    assert proc.returncode == -9, (proc.stdout + proc.stderr)[-3000:]  # nothing can print a line after kill -9
    assert_intact(save, 3, [3], partials=(".partial-6",))  # hidden: no resume or keep-last-N rule reads it
    assert (save / ".cogview_run.lock").exists()  # a stale lock, detected on relaunch
    out = assert_resumes_exactly(data, save, reference, 3)
    assert "warning: taking over the stale lock" in out and "is no longer running on this host" in out
    assert f"warning: deleted the half-written checkpoint folder {save / '.partial-6'}" in out
    assert_intact(save, 8, [3, 6, 8])  # the relaunch deleted the partial folder


def test_sigterm_during_save_finishes_it_then_stops_cleanly(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=3)
    proc = launch(data, save, fault={"kind": "sigterm_in_save", "iteration": 6})
    # SIGTERM is the preemption request: the save in progress completes, one more step runs, it saves, exit 0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "stop signal received: saving at iteration 7 and exiting" in proc.stdout
    assert_intact(save, 7, [3, 6, 7])
    assert_resumes_exactly(data, save, reference, 7)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make `folder` read-only for this user: a read-only bind mount for root, permissions otherwise."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root without permission to mount: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_save_folder(data: str, reference: Path, tmp_path: Path) -> None:
    save = clone(reference, tmp_path / "run", at=3)
    with read_only(save):
        proc = launch(data, save)
    assert_one_line(proc, f"--save '{save}' is not writable", "choose a writable folder")
    assert_intact(save, 3, [3])
    assert_resumes_exactly(data, save, reference, 3)
