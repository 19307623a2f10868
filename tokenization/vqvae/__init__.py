"""Trainable VQ-VAE image tokenizer: config, model, EMA quantiser, (de)serialisation."""

from __future__ import annotations

import importlib
from typing import Any

from tokenization.vqvae.config import TrainOptions, VQVAEConfig

# The torch-backed names load on first use, so the configs (and the CLI flags made from them) stay cheap.
_LAZY = {
    "VQVAE": "tokenization.vqvae.model",
    "VQVAEOutput": "tokenization.vqvae.model",
    "EMAQuantizer": "tokenization.vqvae.quantizer",
    "QuantizerOutput": "tokenization.vqvae.quantizer",
    "CONFIG_NAME": "tokenization.vqvae.serialization",
    "WEIGHTS_NAME": "tokenization.vqvae.serialization",
    "load_pretrained": "tokenization.vqvae.serialization",
    "save_pretrained": "tokenization.vqvae.serialization",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenization.vqvae' has no attribute {name!r}")


__all__ = [
    "CONFIG_NAME",
    "EMAQuantizer",
    "QuantizerOutput",
    "TrainOptions",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "WEIGHTS_NAME",
    "load_pretrained",
    "save_pretrained",
]
