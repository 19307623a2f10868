"""Training checkpoints: DeepSpeed's files + per-rank state, made visible atomically, last N kept."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_cogview.checkpoint.layout import (
    CheckpointError,
    CheckpointMeta,
    iteration_dir,
    read_latest,
    read_meta,
    write_meta,
    write_trackers,
)
from megatron_cogview.parallel.state import ParallelState


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


def save_checkpoint(
    engine: Any,
    save: str,
    iteration: int,
    state: ParallelState,
    meta: CheckpointMeta,
    client: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int,
) -> None:
    """Write checkpoint `iteration` on every rank; trackers move to it only once all files are complete."""
    engine.save_checkpoint(save, tag=str(iteration), client_state={**client, "cogview": meta.to_dict()},
                           save_latest=False)
    target = rank_state_file(save, iteration, state.rank)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(rank_state, tmp)
    os.replace(tmp, target)
    _barrier(state)  # every rank's files are complete past this point
    if state.rank == 0:
        write_meta(save, iteration, meta)
        write_trackers(save, iteration)
        prune(save, keep_last, keep=iteration)
    _barrier(state)


def prune(save: str, keep_last: int, keep: int) -> None:
    """Delete all but the newest `keep_last` iteration directories (never `keep`)."""
    its = sorted(int(p.name) for p in Path(save).iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name))
    for it in its[:-keep_last] if keep_last > 0 else []:
        if it != keep:
            shutil.rmtree(iteration_dir(save, it), ignore_errors=True)


def has_checkpoint(load: str) -> bool:
    """True when `load` has a tracker file naming a checkpoint."""
    try:
        read_latest(load)
        return True
    except CheckpointError:
        return False


def load_checkpoint(engine: Any, load: str, state: ParallelState) -> Resumed:
    """Restore engine (weights, optimizer, loss scaler, LR schedule) and this rank's extra state."""
    iteration, meta = read_meta(load)
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
