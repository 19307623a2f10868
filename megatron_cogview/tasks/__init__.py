"""Entry-layer task wiring: joins the generation core with the tokenizers (prompts in, PNGs and JSONL out)."""
from megatron_cogview.tasks.captioning import caption_images, rerank_images
from megatron_cogview.tasks.prompts import PromptFile, PromptFileError, PromptLine, parse_prompts, read_prompts
from megatron_cogview.tasks.text_to_image import sample_seed, text_to_image, text_to_image_file

__all__ = [
    "PromptFile", "PromptFileError", "PromptLine", "parse_prompts", "read_prompts", "sample_seed", "text_to_image",
    "text_to_image_file", "caption_images", "rerank_images",
]
