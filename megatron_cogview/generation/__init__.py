"""Generation: batched sampling, KV-cached decoding, text-to-image, image-to-text and post-selection.

The core takes token ids and id ranges only; turning text into ids and codes into pictures is the
entry layer's job (megatron_cogview.tasks).
"""
from megatron_cogview.generation.config import GenerationConfig, GenerationError
from megatron_cogview.generation.decode import DecodeResult, decode, inference
from megatron_cogview.generation.image2text import generate_text
from megatron_cogview.generation.logits import IdRanges, range_logits
from megatron_cogview.generation.post_selection import CaptionTemplate, Selection, caption_loss, post_select, rerank
from megatron_cogview.generation.sampling import draw_uniforms, process_logits, sample, top_k_filter, top_p_filter
from megatron_cogview.generation.text2image import generate_image_codes

__all__ = [
    "GenerationConfig", "GenerationError", "DecodeResult", "decode", "inference", "generate_text", "IdRanges",
    "range_logits", "CaptionTemplate", "Selection", "caption_loss", "post_select", "rerank", "draw_uniforms",
    "process_logits", "sample", "top_k_filter", "top_p_filter", "generate_image_codes",
]
