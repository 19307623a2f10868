"""Cross entropy over logits whose vocabulary dimension is split across tensor-parallel ranks."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_cogview.parallel.mappings import Group, group_rank, group_size


def _all_reduce(x: torch.Tensor, group: Group, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
    if group_size(group) > 1:
        dist.all_reduce(x, op=op, group=group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group: Group) -> torch.Tensor:  # type: ignore[override]
        # logits [..., V/tp] (this rank's vocab slice), target [...] (global ids)
        ctx.input_dtype = logits.dtype
        logits = logits.float()
        row_max = logits.max(dim=-1).values
        _all_reduce(row_max, group, dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)  # new fp32 tensor; the input is not touched

        per_rank = logits.size(-1)
        start = group_rank(group) * per_rank
        outside = (target < start) | (target >= start + per_rank)
        local_target = (target - start).masked_fill(outside, 0)
        predicted = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1)
        predicted = predicted.masked_fill(outside, 0.0)
        _all_reduce(predicted, group)

        exp = shifted.exp_()
        sum_exp = exp.sum(dim=-1)
        _all_reduce(sum_exp, group)
        loss = torch.log(sum_exp) - predicted

        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, outside, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        softmax, outside, local_target = ctx.saved_tensors
        grad = softmax  # d loss / d logits = softmax - onehot(target), reusing the saved buffer
        hit = (~outside).to(grad.dtype)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -hit.unsqueeze(-1))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group: Group) -> torch.Tensor:
    """Per-token loss -log softmax(logits)[target] (fp32) where logits hold this rank's vocab slice."""
    if logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree before the vocab dim")
    return _VocabParallelCrossEntropy.apply(logits, target, group)
