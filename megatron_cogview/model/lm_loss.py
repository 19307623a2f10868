"""Fused, chunked language-model loss over the tied, vocab-parallel output embedding.

The loss sum_i w_i * CE(h_i W^T, y_i) is computed chunk by chunk of tokens, and the gradients with
respect to h and W are formed in the same pass (they are linear in the scalar upstream gradient),
so neither the [tokens, vocab] logits nor their fp32 copy ever exist for the whole batch. That is
the dominant cost of a small CogView step (vocab 58,240): same three matmuls, a fraction of the memory
traffic. Under tensor parallelism each rank handles its vocab slice; the row max and the softmax
denominators are all-reduced per chunk, and the hidden-state gradient is summed by the
`copy_to_region` that precedes this function.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_cogview.parallel.mappings import Group, all_reduce, group_rank

DEFAULT_CHUNK_ELEMENTS = 1 << 26  # logits elements per chunk (256 MiB in fp32; still no [tokens, vocab] tensor kept)


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as fp32. Half-precision inputs keep tensor-core speed on CUDA (out_dtype: fp32 accumulation and
    result). CPU has no mixed-dtype mm: bf16 runs as a bf16 GEMM (fp32 accumulation, result rounded to bf16, as
    every other autocast matmul of the step; ~4x faster than upcasting on CPUs with bf16 dot products), fp16 is
    upcast (exact; its range could overflow a half result)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a build or layout without the mixed-dtype kernel: exact, slower
            pass
    elif a.dtype == torch.bfloat16:
        return torch.mm(a, b).float()
    return torch.mm(a.float(), b.float())


def _grad_scale(loss_weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A power of two S with max|w| * S near the top of `dtype`'s range: d(logits) = w * (softmax - onehot)
    is bounded by |w|, so S * d cannot overflow, and softmax values far below the smallest normal number
    (1/vocab at vocab 58,240 is below fp16's 6.1e-5) keep their precision. S = 1 outside fp16."""
    if dtype != torch.float16:  # bf16 has fp32's exponent range
        return torch.ones((), device=loss_weights.device)
    w_max = loss_weights.abs().max().clamp_min(1e-30)
    return torch.exp2(torch.floor(torch.log2(2.0**14 / w_max)))  # stays on the device: no host sync


class _FusedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,  # [n, h]
        weight: torch.Tensor,  # [V/tp, h]
        labels: torch.Tensor,  # [n] global ids
        loss_weights: torch.Tensor,  # [n] fp32
        group: Group,
        chunk: int,
        with_grads: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.size(0)
        per_rank = weight.size(0)
        start = group_rank(group) * per_rank
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if with_grads else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grads else None
        scale = _grad_scale(loss_weights, weight.dtype) if with_grads else None
        for i in range(0, n, chunk):
            h = hidden[i : i + chunk]  # [c, h]
            y = labels[i : i + chunk]
            logits = torch.matmul(h, weight.t()).float()  # [c, V/tp]
            row_max = logits.max(dim=-1).values
            row_max = all_reduce(row_max, group, dist.ReduceOp.MAX)
            logits.sub_(row_max.unsqueeze(-1))
            outside = (y < start) | (y >= start + per_rank)
            local_y = (y - start).masked_fill(outside, 0)
            predicted = logits.gather(-1, local_y.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
            predicted = all_reduce(predicted, group)
            probs = logits.exp_()
            sum_exp = probs.sum(dim=-1)
            sum_exp = all_reduce(sum_exp, group)
            losses[i : i + chunk] = torch.log(sum_exp) - predicted
            if with_grads:
                # d(w * CE)/d logits = w * softmax - w * onehot(y), on this rank's vocab slice: one pass
                # scales exp(logits) by w / sum_exp, then -w lands on the target column.
                # Half precision: scaled by the power of two S before the cast, divided out in fp32.
                w = loss_weights[i : i + chunk] * scale
                probs.mul_((w / sum_exp).unsqueeze(-1))
                probs.scatter_add_(-1, local_y.unsqueeze(-1), -(w * (~outside).to(w.dtype)).unsqueeze(-1))
                d = probs.to(weight.dtype)
                if d.dtype == torch.float32:
                    grad_hidden[i : i + chunk] = torch.matmul(d, weight)  # [c, h]; summed over tp by copy_to_region
                    grad_weight.addmm_(d.t(), h)  # [V/tp, h], accumulated in place
                else:
                    grad_hidden[i : i + chunk] = _mm_fp32(d, weight).div_(scale)  # cast to hidden's dtype
                    grad_weight.add_(_mm_fp32(d.t(), h))  # fp32 accumulation over chunks; S divided out once
        if with_grads and weight.dtype != torch.float32:
            grad_weight.div_(scale)
        total = (losses * loss_weights).sum()
        ctx.mark_non_differentiable(losses)
        if with_grads:
            ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total, losses

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor, _grad_losses: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_total.to(grad_hidden.dtype)
        gw = (grad_weight * grad_total.float()).to(ctx.weight_dtype)
        return gh, gw, None, None, None, None, None


def fused_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor,
    group: Group,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_i * CE_i, per-token CE [n] fp32 detached) for hidden [n, h] against the vocab slice weight."""
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1] or loss_weights.shape != labels.shape:
        raise ValueError(
            f"fused_lm_loss wants hidden [n, h], labels [n], weights [n]; got {tuple(hidden.shape)}, "
            f"{tuple(labels.shape)}, {tuple(loss_weights.shape)}"
        )
    chunk = max(1, chunk_elements // weight.size(0))
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # Cast once here instead of per chunk and per matmul (autocast would re-cast the [V/tp, h]
        # weight three times per chunk); the Function then runs with autocast off.
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return _FusedLMLoss.apply(hidden.to(dtype), weight.to(dtype), labels, loss_weights.float(), group, chunk,
                                      with_grads)
    return _FusedLMLoss.apply(hidden, weight, labels, loss_weights.float(), group, chunk, with_grads)
