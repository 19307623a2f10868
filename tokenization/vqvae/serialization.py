"""Save/load a VQ-VAE as `model.safetensors` + `config.json` in one directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tokenization.errors import TokenizationError
from tokenization.vqvae.config import VQVAEConfig
from tokenization.vqvae.model import VQVAE

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(model: VQVAE, directory: str | os.PathLike[str]) -> Path:
    """Write model.safetensors + config.json into directory (atomic renames); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state["quantizer.initialized"] = state["quantizer.initialized"].to(torch.uint8)  # bool -> portable dtype
    tmp_weights, tmp_config = out / f".{WEIGHTS_NAME}.tmp", out / f".{CONFIG_NAME}.tmp"
    save_file(state, str(tmp_weights), metadata={"format": "pt", "kind": "cogview-vqvae"})
    model.config.save(tmp_config)
    os.replace(tmp_weights, out / WEIGHTS_NAME)
    os.replace(tmp_config, out / CONFIG_NAME)
    return out


def load_pretrained(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> VQVAE:
    """Load a VQ-VAE saved by save_pretrained (eval mode, on device)."""
    path = Path(directory)
    if not path.is_dir():
        raise TokenizationError(
            f"image tokenizer directory {str(path)!r} not found; pass the --out of `cogview tokenizer train-vqvae`"
        )
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise TokenizationError(
            f"{str(path)!r} has no {WEIGHTS_NAME}; pass a directory written by `cogview tokenizer train-vqvae`"
        )
    config = VQVAEConfig.load(path / CONFIG_NAME)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise TokenizationError(f"cannot read {str(weights)!r} ({e}); the file is corrupt, re-export it") from e
    if "quantizer.initialized" in state:
        state["quantizer.initialized"] = state["quantizer.initialized"].to(torch.bool)
    model = VQVAE(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise TokenizationError(
            f"weights in {str(weights)!r} do not match its config.json ({first}); re-export the tokenizer"
        ) from e
    return model.to(device).eval()
