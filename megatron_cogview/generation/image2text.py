"""Image-to-text (captioning) core: sample text ids after `[BASE] [BOI1] codes [EOI1] [ROI1]`."""
from __future__ import annotations

from typing import Sequence

from megatron_cogview.generation.config import GenerationConfig, require
from megatron_cogview.generation.decoding import Prompt, decode
from megatron_cogview.model import CogViewModel


def generate_text(
    model: CogViewModel,
    prompts: Sequence[Prompt],
    max_text_len: int,
    text_range: tuple[int, int],
    config: GenerationConfig,
    *,
    stop_ids: Sequence[int] = (),
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """Per prompt, the sampled text ids (drawn from text_range or stop_ids) up to a stop id or max_text_len."""
    start, end = text_range
    vocab = model.config.vocab_size
    require(0 <= start < end <= vocab, f"text id range [{start}, {end}) is outside the vocabulary [0, {vocab})")
    stops = sorted({int(s) for s in stop_ids})
    require(all(0 <= s < vocab for s in stops), f"stop ids {stops} must lie in the vocabulary [0, {vocab})")
    allowed = [(start, end)] + [(s, s + 1) for s in stops if not start <= s < end]
    result = decode(model, prompts, max_text_len, config, allowed=allowed, stop_ids=stops, seeds=seeds)
    texts = []
    for i in range(len(prompts)):
        ids = result.row(i)
        texts.append(ids[:-1] if ids and ids[-1] in stops else ids)
    return texts
