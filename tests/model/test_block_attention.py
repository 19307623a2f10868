"""block_causal_attention (the CPU training path of the sdpa kernel with attention dropout) against dense attention."""
from __future__ import annotations

import math

import pytest
import torch

from megatron_cogview.model.attention import AttentionArgs, block_causal_attention, sdpa_attention
from megatron_cogview.parallel.random import MODEL_PARALLEL, RNGTracker, keep_mask, mask_keep


def _qkv(s: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, s, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep_mask: torch.Tensor | None, p: float) -> torch.Tensor:
    """softmax(QK^T/sqrt(d) + causal) V over the whole square; keep_mask [b, n, s, s] of 0/1 for dropout."""
    s = q.size(-2)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if keep_mask is not None:
        probs = probs * keep_mask / mask_keep(1.0 - p)
    return probs @ v


def _grads(out: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # not all-ones: gradients differ by row
    return torch.autograd.grad((out * weight).sum(), inputs)


@pytest.mark.parametrize("s,block", [(13, 4), (13, 1), (13, 13), (13, 64), (32, 8)])
def test_no_dropout_equals_dense_causal_attention(s: int, block: int) -> None:
    q, k, v = _qkv(s)
    ours = block_causal_attention(q, k, v, 0.0, None, block=block)
    ref = _dense(q, k, v, None, 0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _assembled_mask(shape: tuple[int, int, int, int], p: float, seed: int, block: int) -> torch.Tensor:
    """The full [b, n, s, s] keep mask from the per-block draws, in block order (lower triangle only is used)."""
    b, n, s, _ = shape
    gen = torch.Generator().manual_seed(seed)
    full = torch.zeros(shape, dtype=torch.float64)
    for i0 in range(0, s, block):
        i1 = min(s, i0 + block)
        full[:, :, i0:i1, :i1] = keep_mask(torch.empty(b, n, i1 - i0, i1, dtype=torch.float64), 1.0 - p, gen)
    return full


@pytest.mark.parametrize("s,block", [(13, 4), (20, 7)])
def test_dropout_equals_dense_attention_with_the_same_keep_mask(s: int, block: int) -> None:
    p = 0.3
    q, k, v = _qkv(s, seed=1)
    ours = block_causal_attention(q, k, v, p, torch.Generator().manual_seed(5), block=block)
    ref = _dense(q, k, v, _assembled_mask((2, 3, s, s), p, 5, block), p)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dropped = (_assembled_mask((2, 3, s, s), p, 5, block) == 0).double()
    assert 0.2 < dropped.tril().sum() / torch.ones(s, s).tril().sum() / 6 < 0.4  # about p of the causal entries


def test_sdpa_kernel_takes_the_block_path_on_cpu_with_dropout() -> None:
    q, k, v = _qkv(300, seed=2)
    tracker = RNGTracker()
    tracker.add(MODEL_PARALLEL, 11)
    args = AttentionArgs(causal=True, dropout_p=0.1, training=True, tracker=tracker)
    ours = sdpa_attention(q, k, v, args)
    ref = block_causal_attention(q, k, v, 0.1, torch.Generator().manual_seed(11))
    assert torch.equal(ours, ref)
    eval_args = AttentionArgs(causal=True, dropout_p=0.1, training=False, tracker=tracker)  # no dropout: torch's kernel
    torch.testing.assert_close(sdpa_attention(q, k, v, eval_args), _dense(q, k, v, None, 0.0), rtol=1e-10, atol=1e-10)


def test_sdpa_kernel_takes_the_block_path_on_cpu_for_one_block_without_dropout() -> None:
    q, k, v = _qkv(75, seed=3)  # the demo's sequence: one block of query rows
    args = AttentionArgs(causal=True, dropout_p=0.0, training=True)
    ours = sdpa_attention(q, k, v, args)
    assert torch.equal(ours, block_causal_attention(q, k, v, 0.0, None))
    ref = _dense(q, k, v, None, 0.0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    long_q, long_k, long_v = _qkv(300, seed=4)  # longer than one block, no dropout: torch's fused kernel
    long_out = sdpa_attention(long_q, long_k, long_v, args)
    assert not torch.equal(long_out, block_causal_attention(long_q, long_k, long_v, 0.0, None))
    torch.testing.assert_close(long_out, _dense(long_q, long_k, long_v, None, 0.0), rtol=1e-10, atol=1e-10)
