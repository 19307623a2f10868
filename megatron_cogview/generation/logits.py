"""Logits on a contiguous id range of the tied output embedding (all tp ranks get the same values).

Inside `[BOI]..[EOI]` only image ids can be drawn, so projecting onto those rows only (8,192 of 58,240
in CogView) gives the same logits as slicing the full projection, several times cheaper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megatron_cogview.generation.config import require
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.mappings import reduce_from_region


@dataclass(frozen=True)
class IdRanges:
    """A set of allowed ids as half-open ranges [start, end); `span` covers them all."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, ranges: Sequence[tuple[int, int]] | tuple[int, int], vocab_size: int) -> "IdRanges":
        """Validated ranges (one pair or a list of pairs) inside [0, vocab_size)."""
        if len(ranges) == 2 and all(isinstance(x, int) for x in ranges):
            ranges = [ranges]
        pairs = tuple((int(s), int(e)) for s, e in ranges)
        require(len(pairs) > 0, "allowed id ranges are empty; pass at least one [start, end) range")
        for s, e in pairs:
            require(0 <= s < e <= vocab_size, f"id range [{s}, {e}) is empty or outside the vocabulary [0, {vocab_size})")
        return cls(pairs)

    @property
    def span(self) -> tuple[int, int]:
        """Smallest [start, end) holding every range."""
        return min(s for s, _ in self.ranges), max(e for _, e in self.ranges)

    @property
    def contiguous(self) -> bool:
        """True when the ranges fill their span without gaps."""
        return bool(self.span_mask().all())

    def span_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool [span width]: which ids of the span are allowed."""
        lo, hi = self.span
        mask = torch.zeros(hi - lo, dtype=torch.bool, device=device)
        for s, e in self.ranges:
            mask[s - lo : e - lo] = True
        return mask

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        """Elementwise: is the id inside one of the ranges?"""
        hit = torch.zeros_like(ids, dtype=torch.bool)
        for s, e in self.ranges:
            hit |= (ids >= s) & (ids < e)
        return hit


def range_logits(model: CogViewModel, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Logits [..., end - start] of ids [start, end) for hidden [..., h]; identical on every tp rank."""
    emb = model.word_embeddings
    require(0 <= start < end <= emb.num_embeddings, f"id range [{start}, {end}) is outside [0, {emb.num_embeddings})")
    if model.state.tp_size == 1:
        return torch.matmul(hidden, emb.weight[start:end].t())
    lo, hi = max(start, emb.vocab_start), min(end, emb.vocab_end)  # this rank's share of the range
    out = hidden.new_zeros(*hidden.shape[:-1], end - start)
    if lo < hi:
        local = emb.weight[lo - emb.vocab_start : hi - emb.vocab_start]  # [hi - lo, h]
        out[..., lo - start : hi - start] = torch.matmul(hidden, local.t())
    return reduce_from_region(out, model.state.tp_group)  # other ranks add exact zeros
