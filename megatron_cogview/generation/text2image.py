"""Text-to-image sampling core: prompt ids `[ROI1] text [BASE] [BOI1]` -> a grid of image codes per sample."""
from __future__ import annotations

from typing import Sequence

import torch

from megatron_cogview.generation.config import GenerationConfig, require
from megatron_cogview.generation.decoding import Progress, Prompt, decode
from megatron_cogview.model import CogViewModel


def generate_image_codes(
    model: CogViewModel,
    prompts: Sequence[Prompt],
    num_image_tokens: int,
    image_range: tuple[int, int],
    config: GenerationConfig,
    seeds: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Codes long [b, num_image_tokens] (ids minus image_range start), only image ids ever drawn."""
    start, end = image_range
    require(0 <= start < end <= model.config.vocab_size, f"image id range [{start}, {end}) is outside the vocabulary")
    result = decode(model, prompts, num_image_tokens, config, allowed=[(start, end)], seeds=seeds, progress=progress)
    return result.tokens - start

