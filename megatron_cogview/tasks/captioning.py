"""Image-to-text and post-selection wiring: images/captions through the tokenizers into the generation core."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from megatron_cogview.generation import (
    CaptionTemplate,
    GenerationConfig,
    GenerationError,
    Selection,
    generate_text,
    post_select,
)
from megatron_cogview.model import CogViewModel
from tokenization.templates import IMAGE, IMAGE_TO_TEXT, TEXT, image_to_text_prompt
from tokenization.unified import UnifiedTokenizer


def caption_template(tokenizer: UnifiedTokenizer) -> CaptionTemplate:
    """The image2text template's commands around the image, as ids of the tokenizer's layout."""
    layout = tokenizer.layout
    head = IMAGE_TO_TEXT.command_ids(layout, before=IMAGE)
    middle = IMAGE_TO_TEXT.command_ids(layout, before=TEXT, after=IMAGE)
    return CaptionTemplate(head, middle)


def caption_images(
    model: CogViewModel,
    tokenizer: UnifiedTokenizer,
    images: Sequence[Image.Image] | torch.Tensor,
    config: GenerationConfig,
    *,
    max_text_len: int = 32,
    stop_tokens: Sequence[str] = ("[PAD]", "[EOI1]"),
    num_samples: int = 1,
) -> list[list[str]]:
    """num_samples captions per image (PIL images, or raw code grids [b, h, w]); sampling stops at stop_tokens."""
    if tokenizer.image is None and not isinstance(images, torch.Tensor):
        raise GenerationError("captioning PIL images needs a UnifiedTokenizer with an image tokenizer")
    codes = images if isinstance(images, torch.Tensor) else tokenizer.image.encode(list(images))
    layout = tokenizer.layout
    prompts = [image_to_text_prompt(layout, c).tokens.tolist() for c in codes for _ in range(num_samples)]
    room = model.config.max_position_embeddings - len(prompts[0])
    if room < 1:
        raise GenerationError(f"the image alone fills the model's {model.config.max_position_embeddings} positions")
    stops = [layout.command(t) for t in stop_tokens]
    seeds = [config.seed + i for i in range(len(prompts))]
    text_range = (layout.text_offset, layout.command_offset)
    ids = generate_text(model, prompts, min(max_text_len, room), text_range, config, stop_ids=stops, seeds=seeds)
    texts = [tokenizer.decode_text(t) for t in ids]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(codes))]


def rerank_images(
    caption_model: CogViewModel,
    tokenizer: UnifiedTokenizer,
    captions: Sequence[str],
    candidates: torch.Tensor,
    keep: int,
    config: GenerationConfig | None = None,
) -> Selection:
    """Post-selection: the `keep` candidates (raw codes [P, N, n]) of each caption with the lowest CapLoss."""
    layout = tokenizer.layout
    n = candidates.size(-1)
    # positions first_label .. first_label + T - 1 are inputs; the last caption token is only a label
    room = caption_model.config.max_position_embeddings - IMAGE_TO_TEXT.first_label(image_codes=n)
    texts = []
    for caption in captions:
        ids = tokenizer.encode_text(caption)[: max(room, 0)]
        if not ids:
            raise GenerationError(f"caption {caption!r} has no text tokens that fit beside {n} image codes")
        texts.append(ids)
    image_ids = layout.image_id(candidates.long())
    return post_select(caption_model, image_ids, texts, caption_template(tokenizer), keep, config)
