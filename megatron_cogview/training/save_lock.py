"""One run per --save folder: a lock file naming the owner's host and pid, with stale-lock detection.

The lock is created with O_EXCL by global rank 0 and refreshed (its mtime) by a heartbeat thread. A lock
is stale when its owner ran on this host and that pid is gone, or when it ran on another host and the
heartbeat stopped for longer than STALE_AFTER_S. Acquiring also proves that --save is writable.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from megatron_cogview.checkpoint.layout import CheckpointError
from megatron_cogview.parallel.state import ParallelState
from megatron_cogview.training.checkpointing import iteration_folders, remove_partials

LOCK_FILE = ".cogview_run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(path: Path, owner: dict[str, Any]) -> str | None:
    """Why the lock held by `owner` is stale, or None when its run may still be alive."""
    if owner.get("host") == socket.gethostname():
        pid = int(owner.get("pid", -1))
        return None if pid > 0 and _pid_alive(pid) else f"pid {pid} is no longer running on this host"
    age = time.time() - path.stat().st_mtime
    return f"its heartbeat stopped {age / 60:.0f} minutes ago" if age > STALE_AFTER_S else None


def _not_writable(save: str, error: OSError) -> CheckpointError:
    return CheckpointError(f"--save {save!r} is not writable ({error.strerror or error}): choose a writable folder "
                           "or fix its permissions, then relaunch (resume with --load pointing at your checkpoints)")


@dataclass
class SaveLock:
    """A held lock on one --save folder; release() removes it (only if it is still ours)."""

    path: Path
    owner: dict[str, Any]
    _stop: threading.Event = field(default_factory=threading.Event)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def start(self) -> "SaveLock":
        threading.Thread(target=self._beat, name="save-lock-heartbeat", daemon=True).start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it still names this process."""
        self._stop.set()
        try:
            if json.loads(self.path.read_text(encoding="utf-8")) == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass


def acquire(save: str, warn: Callable[[str], None]) -> SaveLock:
    """Create the lock in `save` (a CheckpointError when another live run holds it or save is not writable)."""
    folder, owner = Path(save), _owner()
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    held = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    held = {}
                reason = stale_reason(path, held) if held else "the lock file is unreadable"
                if reason is None:
                    raise CheckpointError(
                        f"--save {save!r} is in use by another run (host {held.get('host')}, pid {held.get('pid')}, "
                        f"started {held.get('started')}): wait for it to end or choose another --save; if that run "
                        f"is gone, delete {path}") from None
                warn(f"taking over the stale lock {path} of host {held.get('host')} pid {held.get('pid')} ({reason})")
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(owner, f)
            return SaveLock(path, owner).start()
    except OSError as e:
        raise _not_writable(save, e) from None
    raise CheckpointError(f"could not take the lock {path}: another run keeps re-creating it; choose another --save")


def prepare_save_folder(save: str, load: str, state: ParallelState, warn: Callable[[str], None]) -> SaveLock | None:
    """Lock --save, refuse to train over another run's checkpoints, and delete half-written folders of a crash.
    Rank 0 does the work; every rank raises the same CheckpointError when it fails."""
    lock, message = None, ""
    if state.rank == 0:
        try:
            lock = acquire(save, warn)
            its = iteration_folders(save)
            if its and not (load and os.path.realpath(load) == os.path.realpath(save)):
                lock.release()
                lock = None
                raise CheckpointError(
                    f"--save {save!r} already holds checkpoints (iterations {', '.join(map(str, its))}) that this run "
                    f"would overwrite or prune: pass --load {save} to continue that run, or choose an empty --save")
            for name in remove_partials(save):
                warn(f"deleted the half-written checkpoint folder {os.path.join(save, name)} of an interrupted save")
        except CheckpointError as e:
            message = str(e)
    if dist.is_initialized() and state.world_size > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise CheckpointError(message)
    return lock
