"""Generation: batched sampling, KV-cached decoding, text-to-image, image-to-text and post-selection.

The core takes token ids and id ranges only; turning text into ids and codes into pictures is the
entry layer's job (megatron_cogview.tasks).
"""
from __future__ import annotations

import importlib
from typing import Any

from megatron_cogview.generation.config import GenerationConfig, GenerationError

# The torch-backed names load on first use, so GenerationConfig (and the CLI flags made from it) stays cheap.
_LAZY = {
    **dict.fromkeys(("DecodeResult", "decode", "inference"), "megatron_cogview.generation.decoding"),
    "generate_text": "megatron_cogview.generation.image2text",
    **dict.fromkeys(("IdRanges", "range_logits"), "megatron_cogview.generation.logits"),
    **dict.fromkeys(("CaptionTemplate", "Selection", "caption_loss", "post_select", "rerank"),
                    "megatron_cogview.generation.post_selection"),
    **dict.fromkeys(("draw_uniforms", "process_logits", "sample", "top_k_filter", "top_p_filter"),
                    "megatron_cogview.generation.sampling"),
    "generate_image_codes": "megatron_cogview.generation.text2image",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'megatron_cogview.generation' has no attribute {name!r}")


__all__ = [
    "GenerationConfig", "GenerationError", "DecodeResult", "decode", "inference", "generate_text", "IdRanges",
    "range_logits", "CaptionTemplate", "Selection", "caption_loss", "post_select", "rerank", "draw_uniforms",
    "process_logits", "sample", "top_k_filter", "top_p_filter", "generate_image_codes",
]
