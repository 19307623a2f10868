"""Gradient-norm clipping that counts tp-sharded parameters once and replicated ones once."""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.distributed as dist

from megatron_cogview.parallel.layers import is_parallel_param
from megatron_cogview.parallel.state import ParallelState


def grad_norm(params: Iterable[torch.Tensor], state: ParallelState, norm_type: float = 2.0) -> float:
    """Global norm of the gradients of `params` over the whole (tp-sharded) model."""
    grads_sharded, grads_replicated = [], []
    for p in params:
        if p.grad is None:
            continue
        (grads_sharded if is_parallel_param(p) else grads_replicated).append(p.grad.detach())
    device = (grads_sharded + grads_replicated)[0].device if grads_sharded or grads_replicated else torch.device("cpu")
    if math.isinf(norm_type):
        local = torch.zeros((), dtype=torch.float32, device=device)
        for g in grads_sharded + grads_replicated:
            local = torch.maximum(local, g.abs().max().float())
        if state.tp_size > 1:
            dist.all_reduce(local, op=dist.ReduceOp.MAX, group=state.tp_group)
        return float(local)
    if norm_type != 2.0:
        raise ValueError(f"norm_type={norm_type} is not supported; use 2 or inf")
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads_sharded:
        sharded += g.float().pow(2).sum()
    if state.tp_size > 1:
        dist.all_reduce(sharded, group=state.tp_group)  # each shard is a distinct part of the model
    replicated = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads_replicated:
        replicated += g.float().pow(2).sum()  # identical on every tp rank: counted once, not tp times
    return float((sharded + replicated).sqrt())


def clip_grad_norm(
    params: Iterable[torch.Tensor], max_norm: float, state: ParallelState, norm_type: float = 2.0
) -> float:
    """Scale gradients in place so their global norm is at most max_norm; returns the norm before.

    A non-finite norm leaves the gradients untouched (the caller should skip the step).
    """
    params = [p for p in params if p.grad is not None]
    total = grad_norm(params, state, norm_type)
    if math.isfinite(total) and max_norm > 0:
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for p in params:
                p.grad.detach().mul_(coef)
    return total
