"""Batched logits processing (temperature, top-k, top-p, allowed-id masks) and seeded per-sample draws.

Every filter works row by row on a batch [b, V] (thresholds are per row). Randomness comes from one
torch.Generator per sample that draws all of that sample's uniforms up front, so sample i's tokens do
not depend on which batch (or chunk, or tensor-parallel rank) it is generated in.
"""
from __future__ import annotations

from typing import Sequence

import torch

from megatron_cogview.generation.config import GenerationConfig, require

NEG_INF = float("-inf")


def apply_allowed(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Set logits of disallowed ids to -inf; allowed is bool [V] or [b, V] (True = may be drawn)."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed, NEG_INF)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep, per row, the logits >= that row's k-th largest (ties at the threshold survive); others -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [b, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep, per row, the most likely ids until their probability reaches p (the top id always stays)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [b, V]
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely ids (in sort order)
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, NEG_INF)


def process_logits(logits: torch.Tensor, config: GenerationConfig, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits [b, V] after the allowed mask, temperature, top-k and top-p (in that order)."""
    out = apply_allowed(logits.float(), allowed)
    if config.greedy:
        return out
    if config.temperature != 1.0:
        out = out / config.temperature
    return top_p_filter(top_k_filter(out, config.top_k), config.top_p)


def draw_uniforms(seeds: Sequence[int], steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """float64 [b, steps] in [0, 1): row i comes from its own generator seeded with seeds[i]."""
    rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device) if rows else torch.zeros(0, steps, dtype=torch.float64, device=device)


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Ids [b]: row i takes the first id whose cumulative probability exceeds uniforms[i] (never a 0-prob id)."""
    cdf = probs.double().cumsum(dim=-1)  # [b, V]
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(1)  # [b, 1]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [b]
    last_possible = probs.size(-1) - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(-1)  # guards u*total rounding
    return torch.minimum(ids, last_possible)


def sample(
    logits: torch.Tensor,
    config: GenerationConfig,
    uniforms: torch.Tensor | None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ids [b] drawn from logits [b, V] (argmax when greedy; else one uniform per row, float [b])."""
    filtered = process_logits(logits, config, allowed)
    if config.greedy:
        return filtered.argmax(dim=-1)
    require(uniforms is not None, "sampling needs one uniform per row (see draw_uniforms)")
    return sample_inverse_cdf(torch.softmax(filtered, dim=-1), uniforms)
