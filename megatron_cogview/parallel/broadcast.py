"""Broadcast of a data batch from tensor-parallel rank 0 to its tp peers."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron_cogview.parallel.state import ParallelState


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host tensors reach a GPU through pinned memory and a non-blocking copy (the host does not wait)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def broadcast_batch(batch: dict[str, Any] | None, state: ParallelState, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Return tp rank 0's `batch` on every tp peer (tensors moved to `device`); others pass None.

    Tensors travel as tensors (one broadcast each, after one small metadata broadcast);
    other values (e.g. sample keys) travel in the metadata.
    """
    if state.tp_size == 1:
        if batch is None:
            raise ValueError("broadcast_batch: tp rank 0 must pass a batch")
        return {k: (to_device(v, device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    src = state.tp_src_rank
    if state.tp_rank == 0:
        if batch is None:
            raise ValueError("broadcast_batch: tp rank 0 must pass a batch")
        meta = {
            k: (("tensor", tuple(v.shape), v.dtype) if torch.is_tensor(v) else ("object", v))
            for k, v in batch.items()
        }
    else:
        meta = None
    box = [meta]
    dist.broadcast_object_list(box, src=src, group=state.tp_group)
    meta = box[0]
    out: dict[str, Any] = {}
    for key, info in meta.items():
        if info[0] == "object":
            out[key] = info[1]
            continue
        _, shape, dtype = info
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool collectives
        if state.tp_rank == 0:
            t = to_device(batch[key], device).to(dtype=wire).contiguous()
        else:
            t = torch.empty(shape, dtype=wire, device=device)
        dist.broadcast(t, src=src, group=state.tp_group)
        out[key] = t.to(dtype) if wire != dtype else t
    return out
