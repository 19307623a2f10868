"""CogView's three-region sparse attention (training only).

Every query attends, under one joint softmax, to
  1. pivots: every text token (any id >= sparse_image_tokens) plus image tokens sampled uniformly at random
     per sequence until there are `sparse_num_pivot` pivots in all; and
  2. a causal local window: the `sparse_window` tokens ending at the query (itself included);
never to a later token. A sampled image pivot outside the window stands for the image tokens that were not
sampled: its score gets + log(s / num_pivot) (s = sequence length), CogView's sampling correction. Text pivots
and window keys get no correction. The sample is drawn once per forward from the model's replicated RNG
stream, so every tensor-parallel rank (each holding other heads) uses the same pattern.

Two backends compute the same thing: `sdpa` (torch SDPA with a dense [b, 1, s, s] additive bias) and `flex`
(torch FlexAttention with a mask_mod / score_mod, compiled: no [s, s] tensor, blocks outside the pattern
skipped; torch has no FlexAttention backward on CPU, so `auto` trains with flex on CUDA and sdpa on CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F

from megatron_cogview.config import ModelConfig


@dataclass
class SparsePattern:
    """Which keys are pivots for each sequence of a batch, and the window; shared by every layer."""

    pivots: torch.Tensor  # bool [b, s]: text tokens and sampled image tokens
    sampled: torch.Tensor  # bool [b, s]: the sampled image pivots (these get the correction)
    window: int
    correction: float  # log(s / num_pivot)
    backend: str

    def allowed(self) -> torch.Tensor:
        """Bool [b, 1, s, s]: query i may attend key j."""
        s = self.pivots.size(1)
        i = torch.arange(s, device=self.pivots.device).view(s, 1)
        j = torch.arange(s, device=self.pivots.device).view(1, s)
        local = (j <= i) & (i - j < self.window)  # [s, s]
        causal = j <= i
        return (local.unsqueeze(0) | (causal.unsqueeze(0) & self.pivots.unsqueeze(1))).unsqueeze(1)

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive float [b, 1, s, s]: -inf where not allowed, the correction on sampled pivots outside the window."""
        s = self.pivots.size(1)
        i = torch.arange(s, device=self.pivots.device).view(s, 1)
        j = torch.arange(s, device=self.pivots.device).view(1, s)
        far = (i - j >= self.window).unsqueeze(0)  # [1, s, s] (beyond the window)
        corrected = (far & self.sampled.unsqueeze(1)).unsqueeze(1)  # [b, 1, s, s]
        out = torch.zeros(corrected.shape, dtype=dtype, device=self.pivots.device)
        out.masked_fill_(corrected, self.correction)
        return out.masked_fill_(~self.allowed(), float("-inf"))


def sample_pattern(tokens: torch.Tensor, config: ModelConfig, generator: torch.Generator | None) -> SparsePattern:
    """Pivots for `tokens` [b, s]: every non-image token, then image tokens drawn uniformly per row."""
    b, s = tokens.shape
    is_text = tokens >= config.sparse_image_tokens  # [b, s]
    want = (config.sparse_num_pivot - is_text.sum(dim=1)).clamp_min(0)  # [b] image pivots per row
    device = generator.device if generator is not None else tokens.device
    keys = torch.rand(b, s, generator=generator, device=device).to(tokens.device)  # [b, s]
    keys = keys.masked_fill(is_text, 2.0)  # text sorts last: never "sampled"
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s, device=tokens.device).expand(b, s))
    sampled = (rank < want.unsqueeze(1)) & ~is_text  # [b, s]
    return SparsePattern(pivots=is_text | sampled, sampled=sampled, window=config.sparse_window,
                         correction=math.log(s / config.sparse_num_pivot), backend=config.sparse_backend)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of q [b, n, s, d] over k, v [b, n, s, d] restricted to `pattern` (see the module doc)."""
    flex = pattern.backend == "flex" or (pattern.backend == "auto" and q.is_cuda and dropout_p == 0.0)
    if flex:
        if dropout_p > 0.0:
            raise ValueError("FlexAttention has no attention dropout; use sparse_backend='sdpa' or dropout 0")
        if not q.is_cuda and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise ValueError("FlexAttention has no backward on CPU in this torch; use sparse_backend='sdpa' (or 'auto')")
        return _flex(q, k, v, pattern)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=pattern.bias(q.dtype), dropout_p=dropout_p)


@lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    pivots, sampled, window, correction = pattern.pivots, pattern.sampled, pattern.window, pattern.correction

    def mask_mod(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return (ki <= qi) & ((qi - ki < window) | pivots[b, ki])

    def score_mod(score: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return score + torch.where(sampled[b, ki] & (qi - ki >= window), correction, 0.0)

    bsz, _, s, _ = q.shape
    block_mask = create_block_mask(mask_mod, bsz, None, s, s, device=q.device)
    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)
