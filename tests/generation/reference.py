"""Independent references: uncached generation (a full forward over the whole prefix every step)."""
from __future__ import annotations

from typing import Sequence

import torch

from megatron_cogview.generation import GenerationConfig, draw_uniforms, sample
from megatron_cogview.model import CogViewModel


@torch.no_grad()
def uncached_generate(
    model: CogViewModel,
    prompt: Sequence[int],
    steps: int,
    config: GenerationConfig,
    allowed: torch.Tensor | None,
    seed: int,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """One prompt alone: recompute full-vocabulary logits over the whole sequence at each step."""
    seq = torch.tensor([list(prompt)])
    u = draw_uniforms([seed], steps)
    new: list[int] = []
    for t in range(steps):
        logits = model(seq, gather=True)[:, -1]  # [1, V]
        token = int(sample(logits, config, u[:, t], allowed)[0])
        new.append(token)
        if token in stop_ids:
            break
        seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return new


def allowed_mask(vocab: int, ranges: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Bool [V]: True inside the ranges."""
    mask = torch.zeros(vocab, dtype=torch.bool)
    for s, e in ranges:
        mask[s:e] = True
    return mask
