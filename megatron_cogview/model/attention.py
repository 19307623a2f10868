"""Attention kernels (PB-relax, plain, fused SDPA) and a preallocated key/value cache.

All kernels take q [b, n, sq, d], k and v [b, n, sk, d] and either `causal=True` (query i sits at
absolute position sk - sq + i) or a bool `mask` broadcastable to [b, n, sq, sk] (True = attend).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_cogview.model.masks import causal_mask
from megatron_cogview.model.sparse import SparsePattern, sparse_attention
from megatron_cogview.parallel.random import MODEL_PARALLEL, RNGTracker, dropout, keep_mask, mask_keep


@dataclass
class AttentionArgs:
    """Per-call options of an attention kernel."""

    causal: bool = True
    mask: torch.Tensor | SparsePattern | None = None  # a SparsePattern only ever reaches the sparse kernel
    dropout_p: float = 0.0
    training: bool = False
    tracker: RNGTracker | None = None


def _bool_mask(args: AttentionArgs, sq: int, sk: int, device: torch.device) -> torch.Tensor | None:
    """The effective bool mask (None when nothing is masked)."""
    mask = args.mask
    if args.causal and not (sq == 1):  # a single new query sees the whole cache
        causal = causal_mask(sq, sk, device=device)
        mask = causal if mask is None else (mask & causal)
    return mask


def _probs_dropout(probs: torch.Tensor, args: AttentionArgs) -> torch.Tensor:
    if not args.training or args.dropout_p == 0.0:
        return probs
    gen = args.tracker.generator(MODEL_PARALLEL) if args.tracker is not None else None
    return dropout(probs, args.dropout_p, gen, training=True)  # each tp rank holds other heads


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V computed as written (scores formed at full scale)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.size(-1))  # [b, n, sq, sk]
    mask = _bool_mask(args, q.size(-2), k.size(-2), q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(_probs_dropout(probs, args), v)


def pb_relax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs, alpha: float = 32.0
) -> torch.Tensor:
    """CogView's PB-relax: softmax(((Q / (alpha sqrt d)) K^T - rowmax) * alpha) V, overflow-free in fp16."""
    scores = torch.matmul(q * (1.0 / (alpha * math.sqrt(q.size(-1)))), k.transpose(-1, -2))  # [b, n, sq, sk] / alpha
    mask = _bool_mask(args, q.size(-2), k.size(-2), q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.detach().amax(dim=-1, keepdim=True)  # softmax is shift-invariant: no gradient needed
    probs = torch.softmax((scores - row_max) * alpha, dim=-1)
    return torch.matmul(_probs_dropout(probs, args), v)


BLOCK_ROWS = 128  # query rows per block of block_causal_attention
BLOCK_PATH_LABEL = "cogview::block_causal_attention"  # its profiler label


def block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, generator: torch.Generator | None,
    block: int = BLOCK_ROWS,
) -> torch.Tensor:
    """Causal softmax(Q K^T / sqrt(d)) V with dropout p on the probabilities, one block of query rows at a time.

    Query block [i0, i1) only forms scores against keys [0, i1): about half of the s x s square, so half the
    matmul work, softmax traffic and dropout draws of the full-square path that torch's scaled_dot_product_attention
    takes on CPU whenever dropout is on (its fused CPU kernel has no dropout). Scores come from one baddbmm (scale
    and causal bias fused into the batched matmul). The dropout mask comes from `generator` (the tracker's
    model-parallel stream), pre-scaled by 1 / mask_keep(1 - p).
    """
    with torch.profiler.record_function(BLOCK_PATH_LABEL):  # names this path in profiles (bench/gpu_checks.py)
        return _block_causal(q, k, v, p, generator, block)


def _block_causal(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, generator: torch.Generator | None, block: int
) -> torch.Tensor:
    b, n, s, d = q.shape
    q3, k3, v3 = (x.contiguous().view(b * n, s, d) for x in (q, k, v))
    keep = 1.0 - p
    outputs = []
    for i0 in range(0, s, block):
        i1 = min(s, i0 + block)
        future = torch.ones(i1 - i0, i1, dtype=torch.bool, device=q.device).triu_(i0 + 1)  # key j > query i0 + r
        bias = torch.zeros(i1 - i0, i1, dtype=q.dtype, device=q.device).masked_fill_(future, float("-inf"))
        scores = torch.baddbmm(bias.expand(b * n, -1, -1), q3[:, i0:i1], k3[:, :i1].transpose(1, 2),
                               alpha=1.0 / math.sqrt(d))  # [b n, i1 - i0, i1]
        probs = torch.softmax(scores, dim=-1)
        if p > 0.0:
            probs = probs * keep_mask(probs, keep, generator).mul_(1.0 / mask_keep(keep))
        outputs.append(torch.bmm(probs, v3[:, :i1]))  # [b n, i1 - i0, d]
    return torch.cat(outputs, dim=1).view(b, n, s, d)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs) -> torch.Tensor:
    """torch's fused scaled_dot_product_attention (flash / memory-efficient kernels where available). CPU training
    of plain causal self-attention takes block_causal_attention instead when attention dropout is on (forward +
    backward at sequence 1,088: about 0.7x the time of torch's dropout path) or when the sequence fits one block
    (sequence 75: about 0.7x the time of torch's flash kernel, whose fixed costs dominate short rows;
    bench/block_attention.py)."""
    p = args.dropout_p if args.training else 0.0
    sq, sk = q.size(-2), k.size(-2)
    plain_causal = args.mask is None and args.causal and sq == sk
    if q.device.type == "cpu" and args.training and plain_causal and (p > 0.0 or sq <= BLOCK_ROWS):
        if p > 0.0 and args.tracker is None:
            raise ValueError("attention dropout in training needs an RNGTracker")
        gen = args.tracker.generator(MODEL_PARALLEL) if p > 0.0 else None
        return block_causal_attention(q, k, v, p, gen)
    if plain_causal:
        kwargs = dict(is_causal=True)
    else:
        kwargs = dict(attn_mask=_bool_mask(args, sq, sk, q.device))
    if p > 0.0:
        if args.tracker is None:
            raise ValueError("attention dropout in training needs an RNGTracker")
        with args.tracker.fork(MODEL_PARALLEL):  # the fused kernel draws from the default generator
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def attend(
    kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: AttentionArgs, alpha: float = 32.0
) -> torch.Tensor:
    """Dispatch to the named kernel: 'sdpa', 'pb-relax', 'plain' or 'sparse'."""
    if kernel == "sdpa":
        return sdpa_attention(q, k, v, args)
    if kernel == "sparse":
        if not isinstance(args.mask, SparsePattern):  # eval and generation: dense causal attention
            return sdpa_attention(q, k, v, args)
        p = args.dropout_p if args.training else 0.0
        if p > 0.0:
            if args.tracker is None:
                raise ValueError("attention dropout in training needs an RNGTracker")
            with args.tracker.fork(MODEL_PARALLEL):  # the fused kernel draws from the default generator
                return sparse_attention(q, k, v, args.mask, p)
        return sparse_attention(q, k, v, args.mask)
    if kernel == "pb-relax":
        return pb_relax_attention(q, k, v, args, alpha)
    if kernel == "plain":
        return plain_attention(q, k, v, args)
    raise ValueError(f"unknown attention kernel {kernel!r}; choose sdpa, pb-relax, plain or sparse")


class KVCache:
    """Preallocated keys/values of every layer, written in place: [b, heads/tp, max_len, head_dim] each."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, num_heads, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already stored (same for every layer once a forward completes)
        self.slot: torch.Tensor | None = None  # static mode: the device-side write position (see make_static)

    def make_static(self) -> "KVCache":
        """Switch one-token appends to shape-static writes at a device-side slot (CUDA graphs, torch.compile).

        A static append writes K/V at `slot` and returns the whole preallocated cache, so every decode step
        has the same shapes; the caller masks slots beyond `slot` out of attention. From here on `slot`
        counts stored tokens on the device and `length` stays where it was (no Python int changes per step).
        """
        for buffer in (*self.keys, *self.values):  # unwritten slots are masked, but 0 * NaN garbage is NaN
            buffer[:, :, self.length :].zero_()
        self.slot = torch.full((), self.length, dtype=torch.long, device=self.keys[0].device)
        return self

    @property
    def batch_size(self) -> int:
        return self.keys[0].size(0)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [b, n, s_new, d] after the current length; return all keys/values so far."""
        if self.slot is not None and k.size(2) == 1:  # static step: every slot, written at a device position
            self.keys[layer].index_copy_(2, self.slot.view(1), k)
            self.values[layer].index_copy_(2, self.slot.view(1), v)
            return self.keys[layer], self.values[layer]  # [b, n, max_len, d]
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens exceed its capacity of {self.max_len}")
        self.keys[layer][:, :, start:end].copy_(k)
        self.values[layer][:, :, start:end].copy_(v)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more tokens as stored (called once per model forward)."""
        if self.slot is not None:
            self.slot.add_(n)
            return
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (e.g. drop finished samples) in place of the old cache."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
