"""Training checkpoints: DeepSpeed's files + per-rank state, made visible atomically, last N kept.

A checkpoint is written into `<save>/.partial-<iteration>/`, renamed to `<save>/<iteration>/` once every
rank's files and the meta file are complete, and only then do the trackers move to it; a crash at any
point leaves the previous checkpoint named by the trackers and at most a hidden partial folder, which
the next run (holding the folder's lock) deletes.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from megatron_cogview.checkpoint.layout import (
    DS_TRACKER,
    META_FILE,
    TRACKER,
    CheckpointError,
    CheckpointMeta,
    iteration_dir,
    read_latest,
    read_meta,
    write_meta,
    write_trackers,
)
from megatron_cogview.parallel.state import ParallelState
from megatron_cogview.training.faults import first_line, from_collective

PARTIAL_PREFIX = ".partial-"


def rank_state_file(save: str | Path, iteration: int, rank: int) -> Path:
    """Per-rank state (data position, RNG streams) that DeepSpeed's dp-rank-0 files cannot hold."""
    return iteration_dir(save, iteration) / f"rank_{rank:05d}_state.pt"


@dataclass
class Resumed:
    """What a loaded checkpoint restores beyond the engine's own state."""

    iteration: int
    client: dict[str, Any]
    rank_state: dict[str, Any]


def _barrier(state: ParallelState) -> None:
    if dist.is_initialized() and state.world_size > 1:
        dist.barrier()


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only, I/O error); the previous one is intact."""


def partial_dir(save: str | Path, iteration: int) -> Path:
    """Where checkpoint `iteration` is written before it is renamed to its iteration folder."""
    return Path(save) / f"{PARTIAL_PREFIX}{iteration}"


def iteration_folders(folder: str | Path) -> list[int]:
    """Iterations of the folders named by a number under `folder` (complete or not), ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name))


def complete_iterations(folder: str | Path) -> list[int]:
    """Iterations whose folder is complete (its meta file is written last, after every rank's files)."""
    return [it for it in iteration_folders(folder) if (iteration_dir(folder, it) / META_FILE).is_file()]


def remove_partials(save: str | Path) -> list[str]:
    """Delete half-written checkpoint folders left by a crash (call with the save folder's lock held)."""
    save = Path(save)
    removed = [p.name for p in save.glob(f"{PARTIAL_PREFIX}*") if p.is_dir()] if save.is_dir() else []
    for name in removed:
        shutil.rmtree(save / name, ignore_errors=True)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_failed(save: str, iteration: int, error: BaseException) -> CheckpointSaveError:
    first = first_line(error)
    try:
        free = f"; {shutil.disk_usage(save).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    try:
        last = f"the last complete checkpoint ({read_latest(save)}) is intact"
    except CheckpointError:
        last = "no earlier checkpoint exists"
    signs = ("No space left", "unexpected pos", "file write failed")
    full = getattr(error, "errno", None) == errno.ENOSPC or any(s in str(error) for s in signs)
    return CheckpointSaveError(
        f"could not write checkpoint {iteration} to {save!r} ({'disk full' if full else 'write failed'}: {first}{free}); "
        f"{last}: free space or fix the folder (or choose another --save), then relaunch with --load {save}"
    )


def save_checkpoint(
    engine: Any,
    save: str,
    iteration: int,
    state: ParallelState,
    meta: CheckpointMeta,
    client: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int,
    deletable: Callable[[int], bool] = lambda it: True,
) -> None:
    """Write checkpoint `iteration` into a hidden partial folder on every rank; once all files are complete,
    rank 0 renames it to its iteration folder, then moves the trackers, then prunes (only `deletable` ones).
    A failed write removes the partial folder and raises CheckpointSaveError."""
    partial = partial_dir(save, iteration)
    try:
        engine.save_checkpoint(save, tag=partial.name, client_state={**client, "cogview": meta.to_dict()},
                               save_latest=False)
        target = partial / rank_state_file(save, iteration, state.rank).name
        tmp = target.with_name(target.name + ".tmp")
        torch.save(rank_state, tmp)
        os.replace(tmp, target)
        _barrier(state)  # every rank's files are complete past this point
        if state.rank == 0:
            write_meta(save, partial.name, meta)
            final = iteration_dir(save, iteration)
            if final.exists():  # a copy of this iteration from a run that never moved the trackers to it
                shutil.rmtree(final)
            os.rename(partial, final)
            _fsync_dir(Path(save))
            write_trackers(save, iteration)
            prune(save, keep_last, keep=iteration, deletable=deletable)
    except (OSError, RuntimeError) as e:  # disk full shows as either, depending on which writer hit it
        if state.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        if from_collective(e):
            raise  # a peer died or hung during the save: reported as such by the entry point
        raise _save_failed(save, iteration, e) from None
    _barrier(state)


def prune(save: str, keep_last: int, keep: int, deletable: Callable[[int], bool] = lambda it: True) -> None:
    """Delete all but the newest `keep_last` iteration folders; never `keep`, never one `deletable` refuses."""
    its = iteration_folders(save)
    for it in its[:-keep_last] if keep_last > 0 else []:
        if it != keep and deletable(it):
            shutil.rmtree(iteration_dir(save, it), ignore_errors=True)


def resume_iteration(load: str) -> int | None:
    """The iteration to resume from: None when `load` holds no checkpoint at all; a CheckpointError naming
    the tracker and the complete iterations found when the tracker is unreadable or names no complete folder."""
    found = complete_iterations(load)
    tracker = Path(load) / TRACKER
    listed = ", ".join(map(str, found)) if found else "none"
    fix = (f"; to resume from the newest complete one: echo {found[-1]} | tee {tracker} {Path(load) / DS_TRACKER}"
           if found else "; start a new run with another --save (or --finetune-from)")
    try:
        it = read_latest(load)
    except CheckpointError as e:
        if not iteration_folders(load):
            return None  # nothing saved yet (or not a folder): a fresh start
        raise CheckpointError(f"{e}, yet the folder holds iteration folders (complete: {listed}); refusing to start "
                              f"from scratch over them{fix}") from None
    if it not in found:
        what = "is incomplete" if iteration_dir(load, it).is_dir() else "is missing"
        raise CheckpointError(f"{tracker} names iteration {it} but folder {iteration_dir(load, it)} {what} "
                              f"(complete iterations found: {listed}){fix}")
    return it


def has_checkpoint(load: str) -> bool:
    """True when `load` holds a checkpoint to resume from (a CheckpointError when its tracker is unusable)."""
    return resume_iteration(load) is not None


def load_checkpoint(engine: Any, load: str, state: ParallelState) -> Resumed:
    """Restore engine (weights, optimizer, loss scaler, LR schedule) and this rank's extra state."""
    iteration, meta = read_meta(load, resume_iteration(load))
    if meta.tensor_parallel_size != state.tp_size:
        raise CheckpointError(
            f"checkpoint {load!r} was saved at tensor-parallel size {meta.tensor_parallel_size}, this run uses "
            f"{state.tp_size}; convert it with: cogview convert --load {load} --save NEW_DIR --target-tp {state.tp_size}"
        )
    path, client = engine.load_checkpoint(load, tag=str(iteration), load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {iteration} from {load!r}")
    rank_file = rank_state_file(load, iteration, state.rank)
    if not rank_file.is_file():
        raise CheckpointError(
            f"{rank_file} is missing: the checkpoint was saved with a different world size; resume with the same "
            "number of ranks (or convert it and start a new run from its weights)"
        )
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    return Resumed(iteration=iteration, client=client or {}, rank_state=rank_state)
