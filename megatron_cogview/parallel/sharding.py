"""How a parameter is split over tensor-parallel ranks, and the one function that cuts and re-cuts it.

A parallel layer tags each parameter it creates with a `Sharding` (`param.sharding`); replicated
parameters carry none. A sharded master tensor of size S along `dim` with stride s is s blocks of
S/s rows, each block cut into tp equal pieces; rank r holds piece r of every block, in block order
(for a fused QKV weight, stride 3, that is [Q_r; K_r; V_r]). `reslice` is that rule: the layers use it
to take their shard of a freshly drawn master weight, checkpoint conversion to re-cut saved shards
for another tp size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

KINDS = ("replicated", "column", "row", "vocab")


@dataclass(frozen=True)
class Sharding:
    """How one parameter is split: kind is 'replicated', 'column', 'row' or 'vocab' (rows of a padded vocabulary)."""

    kind: str
    dim: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sharding kind {self.kind!r} is not one of {', '.join(KINDS)}")

    @property
    def sharded(self) -> bool:
        """True when each tp rank holds a slice."""
        return self.kind != "replicated"


NOT_SHARDED = Sharding("replicated")


def mark_sharded(param: torch.Tensor, sharding: Sharding) -> None:
    """Tag a parameter with how it is split (plus the Megatron/DeepSpeed attribute names derived from it)."""
    if not sharding.sharded:
        raise ValueError("only sharded parameters are tagged; replicated ones carry no sharding")
    param.sharding = sharding
    param.tensor_model_parallel = True
    param.partition_dim = sharding.dim
    param.partition_stride = sharding.stride


def sharding_of(param: torch.Tensor) -> Sharding:
    """The sharding a parallel layer tagged `param` with (NOT_SHARDED for a replicated tensor)."""
    return getattr(param, "sharding", NOT_SHARDED)


def split_ranges(size: int, parts: int, index: int, stride: int = 1) -> list[tuple[int, int]]:
    """(start, length) of the master rows (along the split dim) that piece `index` of `parts` holds, in order."""
    if size % (parts * stride):
        raise ValueError(f"dimension of size {size} does not split into {parts} shards x stride {stride}")
    block = size // stride
    piece = block // parts
    return [(b * block + index * piece, piece) for b in range(stride)]


def reslice(
    shards: Sequence[torch.Tensor],
    dim: int,
    out_tp: int,
    out_rank: int,
    *,
    stride: int = 1,
    new_size: int | None = None,
) -> torch.Tensor:
    """Rank `out_rank`'s slice at out_tp of the master that `shards` (all tp ranks, in order) form; a fresh tensor.

    `new_size` re-pads the master along dim (stride 1 only): rows past the old size are zero-filled,
    rows past the new size dropped. Only the needed pieces are read (narrow), so untouched pages of
    memory-mapped inputs stay on disk.
    """
    first = shards[0]
    old_size = first.size(dim) * len(shards)
    size = old_size if new_size is None else new_size
    if size != old_size and stride != 1:
        raise ValueError("re-padding is only defined for stride-1 parameters")
    held: list[tuple[int, int, int, int]] = []  # (master start, length, input rank, start in that shard)
    for rank in range(len(shards)):
        local = 0
        for start, length in split_ranges(old_size, len(shards), rank, stride):
            held.append((start, length, rank, local))
            local += length
    held.sort()
    parts: list[torch.Tensor] = []
    for lo, length in split_ranges(size, out_tp, out_rank, stride):
        hi = lo + length
        for start, n, rank, local in held:
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                parts.append(shards[rank].narrow(dim, local + a - start, b - a))
        if hi > old_size:  # new padding rows
            shape = list(first.shape)
            shape[dim] = hi - max(lo, old_size)
            parts.append(torch.zeros(shape, dtype=first.dtype, device=first.device))
    return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0].clone(memory_format=torch.contiguous_format)


def shard(master: torch.Tensor, dim: int, tp_size: int, tp_rank: int, stride: int = 1) -> torch.Tensor:
    """This rank's slice of `master` along `dim` (see the module docstring for the stride rule)."""
    return reslice([master], dim, tp_size, tp_rank, stride=stride)


def unshard(shards: Sequence[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """Inverse of `shard`: rebuild the master tensor from all tp shards in rank order."""
    return reslice(shards, dim, 1, 0, stride=stride)
