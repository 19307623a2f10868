"""Collectives across a tensor-parallel group as autograd Functions (Megatron's mappings).

Each takes the group explicitly; with a None group (or a group of one rank) each is the identity.
  copy_to_region:     forward identity,           backward all-reduce
  reduce_from_region: forward all-reduce,         backward identity
  scatter_to_region:  forward keep own last-dim slice, backward all-gather on the last dim
  gather_from_region: forward all-gather last dim,  backward keep own slice
"""
from __future__ import annotations

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def group_size(group: Group) -> int:
    """Number of ranks in `group` (1 for None)."""
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group: Group) -> int:
    """This process's rank inside `group` (0 for None)."""
    return 0 if group is None else dist.get_rank(group)


def all_reduce(x: torch.Tensor, group: Group, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """x reduced with op (in place when contiguous) over `group`; x itself for a group of one."""
    if group_size(group) == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, op=op, group=group)
    return x


def _split_last_dim(x: torch.Tensor, group: Group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    last = x.size(-1)
    if last % world:
        raise ValueError(f"last dimension {last} is not divisible by the tensor-parallel size {world}")
    return x.chunk(world, dim=-1)[group_rank(group)].contiguous()


def _gather_last_dim(x: torch.Tensor, group: Group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return all_reduce(grad.clone(), ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        return all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _split_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather_last_dim(grad, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return _gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _split_last_dim(grad, ctx.group), None


def copy_to_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Enter a tensor-parallel region: identity forward, all-reduce of the gradient."""
    return x if group_size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Leave a tensor-parallel region by summing partial results over the group."""
    return x if group_size(group) == 1 else _ReduceFromRegion.apply(x, group)


def scatter_to_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension; the gradient is all-gathered."""
    return x if group_size(group) == 1 else _ScatterToRegion.apply(x, group)


def gather_from_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate every rank's last-dimension slice; the gradient is split back."""
    return x if group_size(group) == 1 else _GatherFromRegion.apply(x, group)
