"""Entry-layer task wiring: joins the generation core with the tokenizers (prompts in, PNGs and JSONL out)."""
from megatron_cogview.tasks.captioning import caption_images, rerank_images
from megatron_cogview.tasks.prompts import PromptFile, PromptFileError, PromptLine, parse_prompts, read_prompts
from megatron_cogview.tasks.text_to_image import generate_images, generate_images_from_file, sample_seed

__all__ = [
    "PromptFile", "PromptFileError", "PromptLine", "parse_prompts", "read_prompts", "sample_seed", "generate_images",
    "generate_images_from_file", "caption_images", "rerank_images",
]
