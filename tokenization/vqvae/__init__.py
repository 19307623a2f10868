"""Trainable VQ-VAE image tokenizer: config, model, EMA quantiser, (de)serialisation."""

from tokenization.vqvae.config import VQVAEConfig
from tokenization.vqvae.model import VQVAE, VQVAEOutput
from tokenization.vqvae.quantizer import EMAQuantizer, QuantizerOutput
from tokenization.vqvae.serialization import CONFIG_NAME, WEIGHTS_NAME, load_pretrained, save_pretrained

__all__ = [
    "CONFIG_NAME",
    "EMAQuantizer",
    "QuantizerOutput",
    "VQVAE",
    "VQVAEConfig",
    "VQVAEOutput",
    "WEIGHTS_NAME",
    "load_pretrained",
    "save_pretrained",
]
