"""Tensor-parallel layers: column- and row-parallel linears and a vocab-parallel embedding.

Every layer initialises the FULL master weight from a CPU generator and keeps its own slice
(`parallel.sharding.shard`), so the same seed gives the same master weight at any tp size (TP=2
shards are exact slices of the TP=1 weight). Each sharded parameter is tagged with its `Sharding`
(kind, partition dim, stride), which gradient clipping and checkpoint conversion read; replicated
parameters carry none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megatron_cogview.parallel.mappings import (
    copy_to_region,
    gather_from_region,
    reduce_from_region,
    scatter_to_region,
)
from megatron_cogview.parallel.sharding import Sharding, mark_sharded, shard, sharding_of
from megatron_cogview.parallel.state import ParallelState, require_state


def is_parallel_param(param: torch.Tensor) -> bool:
    """True for a parameter sharded across the tensor-parallel group."""
    return sharding_of(param).sharded


def init_master(
    shape: tuple[int, ...], std: float, generator: torch.Generator | None
) -> torch.Tensor:
    """A full master weight N(0, std^2) drawn on CPU from `generator` (fp32)."""
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)


def _parameter(
    master_shape: tuple[int, ...],
    sharding: Sharding,
    state: ParallelState,
    std: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> nn.Parameter:
    """A sharded parameter initialised from its master weight (or left empty on the meta device)."""
    local_shape = list(master_shape)
    local_shape[sharding.dim] //= state.tp_size
    if device is not None and torch.device(device).type == "meta":
        param = nn.Parameter(torch.empty(local_shape, device="meta", dtype=dtype))
    else:
        master = init_master(master_shape, std, generator)
        local = shard(master, sharding.dim, state.tp_size, state.tp_rank, sharding.stride)
        param = nn.Parameter(local.to(device=device, dtype=dtype))
    mark_sharded(param, sharding)
    return param


class ColumnParallelLinear(nn.Module):
    """Y = X A^T + b with A split along its output rows: each rank computes its output columns."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        state: ParallelState,
        *,
        bias: bool = True,
        gather_output: bool = False,
        stride: int = 1,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.state = require_state(state, "ColumnParallelLinear")
        state.check_divisible("out_features", out_features)
        if out_features % (state.tp_size * stride):
            raise ValueError(f"out_features={out_features} does not split into tp {state.tp_size} x stride {stride}")
        self.in_features, self.out_features = in_features, out_features
        self.out_per_rank = out_features // state.tp_size
        self.gather_output = gather_output
        sharding = Sharding("column", 0, stride)
        self.weight = _parameter((out_features, in_features), sharding, state, init_std, generator, device, dtype)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_per_rank, device=device, dtype=dtype))
            mark_sharded(self.bias, sharding)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_region(x, self.state.tp_group)
        y = F.linear(x, self.weight, self.bias)  # [b, s, out/tp]
        return gather_from_region(y, self.state.tp_group) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """Y = X A^T + b with A split along its input columns; partial products are summed over tp."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        state: ParallelState,
        *,
        bias: bool = True,
        input_is_parallel: bool = True,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.state = require_state(state, "RowParallelLinear")
        state.check_divisible("in_features", in_features)
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel = input_is_parallel
        self.weight = _parameter(
            (out_features, in_features), Sharding("row", 1), state, init_std, generator, device, dtype
        )
        if bias:  # replicated: added once, after the reduction
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_region(x, self.state.tp_group)
        partial = F.linear(x, self.weight)  # [b, s, out], this rank's share of the sum
        y = reduce_from_region(partial, self.state.tp_group)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows (the vocabulary) are split over tp ranks; lookups are summed over tp."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        state: ParallelState,
        *,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.state = require_state(state, "VocabParallelEmbedding")
        state.check_divisible("vocab_size", num_embeddings)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.per_rank = num_embeddings // state.tp_size
        self.vocab_start = state.tp_rank * self.per_rank
        self.vocab_end = self.vocab_start + self.per_rank
        self.weight = _parameter(
            (num_embeddings, embedding_dim), Sharding("vocab", 0), state, init_std, generator, device, dtype
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.state.tp_size == 1:
            return F.embedding(ids, self.weight)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight)  # [b, s, h]
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_region(out, self.state.tp_group)
