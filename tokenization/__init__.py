"""tokenization: SentencePiece text tokenizer, VQ-VAE image tokenizer and CogView's unified token layout."""

from __future__ import annotations

import importlib
from typing import Any

from tokenization.errors import TokenizationError
from tokenization.layout import COMMAND_TOKENS, TokenLayout

# Heavier names load on first use, so `import tokenization` stays cheap (no torch / sentencepiece).
_LAZY = {
    "TextTokenizer": "tokenization.text",
    "train_text_tokenizer": "tokenization.text",
    "ImageTokenizer": "tokenization.image",
    "UnifiedTokenizer": "tokenization.unified",
    "Part": "tokenization.unified",
    "split_sequence": "tokenization.unified",
    "TemplateSequence": "tokenization.templates",
    "text_to_image": "tokenization.templates",
    "image_to_text": "tokenization.templates",
    "super_resolution": "tokenization.templates",
    "pure_text": "tokenization.templates",
    "text_to_image_prompt": "tokenization.templates",
    "VQVAEConfig": "tokenization.vqvae.config",
}

__all__ = ["COMMAND_TOKENS", "TokenLayout", "TokenizationError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenization' has no attribute {name!r}")
