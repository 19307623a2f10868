"""Import the released CogView VQ-VAE (`vqvae_hard_biggerset_011.pt`, a pickled state dict) as our format.

The release is a rosinality-style VQ-VAE: `enc_b.blocks` = (conv4x4/s2, ReLU) x n then a 1x1 conv;
`quantize_t` = an EMA codebook stored as [code_dim, codebook_size]; `dec.blocks` = convT4x4/s2,
(ReLU, convT4x4/s2) x (n - 1), ReLU, 1x1 conv. It maps one to one onto VQVAEConfig(architecture=
"cogview-original"); the shapes in the file fix every size, so nothing has to be given by hand.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch

from tokenization.errors import TokenizationError
from tokenization.vqvae.config import VQVAEConfig
from tokenization.vqvae.model import VQVAE

ORIGINAL_MEAN = (0.79093, 0.76271, 0.75340)
ORIGINAL_STD = (0.30379, 0.32279, 0.32800)
"""Per-channel normalisation the released VQ-VAE was trained with (applied before encoding, undone after)."""
ORIGINAL_IMAGE_SIZE = 256
_ENC = re.compile(r"^enc_b\.blocks\.(\d+)\.(weight|bias)$")
_DEC = re.compile(r"^dec\.blocks\.(\d+)\.(weight|bias)$")
_QUANT = ("quantize_t.embed", "quantize_t.cluster_size", "quantize_t.embed_avg")


def read_state_file(path: str | os.PathLike[str], trust_pickle: bool = False,
                    log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint (weights_only=True; the full unpickler only with trust_pickle)."""
    path = Path(path)
    if not path.is_file():
        raise TokenizationError(f"VQ-VAE checkpoint {str(path)!r} not found; pass the released .pt file")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not trust_pickle:
            raise TokenizationError(
                f"{path} cannot be loaded safely with weights_only=True: {reason}; if you trust its origin, "
                "pass --trust-pickle (the full unpickler can run arbitrary code)"
            ) from None
        log(f"warning: loading {path} with the full unpickler because --trust-pickle was given")
        data = _full_load(path)
    except Exception as e:  # damaged file or not a torch checkpoint
        raise TokenizationError(f"cannot read {path} (damaged, or not a torch checkpoint): {e}") from None
    return _state_dict(data, path)


def _full_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TokenizationError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `data` (itself, or under 'module'/'model'/'state_dict'), without a 'module.' prefix."""
    if isinstance(data, dict):
        for key in ("module", "model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise TokenizationError(f"{path} holds no VQ-VAE state dict (a dict of tensors); pass the released .pt file")
    if all(str(k).startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _indices(state: dict[str, torch.Tensor], pattern: re.Pattern[str]) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def original_config(state: dict[str, torch.Tensor], path: str = "the file", image_size: int = ORIGINAL_IMAGE_SIZE) -> VQVAEConfig:
    """The VQVAEConfig a released-architecture state dict describes (a one-line TokenizationError if it is not one)."""
    missing = [k for k in _QUANT if k not in state]
    enc, dec = _indices(state, _ENC), _indices(state, _DEC)
    if missing or not enc or not dec:
        what = f"missing {missing[0]}" if missing else "no enc_b.blocks / dec.blocks convolutions"
        raise TokenizationError(
            f"{path} is not a CogView-original VQ-VAE ({what}); pass vqvae_hard_biggerset_011.pt or a file of the "
            "same architecture (a VQ-VAE trained here is already in our format)"
        )
    n = len(enc) - 1  # n strided convs + the 1x1 projection
    if enc != list(range(0, 2 * n + 1, 2)) or dec != list(range(0, 2 * n + 1, 2)):
        raise TokenizationError(
            f"{path} has encoder/decoder blocks {enc}/{dec}, not the released layout (even indices 0..2n: strided "
            "convs without residual blocks); this architecture variant is not supported"
        )
    first, embed = state["enc_b.blocks.0.weight"], state["quantize_t.embed"]
    if first.dim() != 4 or embed.dim() != 2:
        raise TokenizationError(f"{path}: enc_b.blocks.0.weight or quantize_t.embed has an unexpected rank")
    code_dim, codebook = int(embed.shape[0]), int(embed.shape[1])
    return VQVAEConfig(
        image_size=image_size, in_channels=int(first.shape[1]), hidden_channels=int(first.shape[0]), num_res_blocks=0,
        downsample=2**n, codebook_size=codebook, code_dim=code_dim, normalize_mean=ORIGINAL_MEAN,
        normalize_std=ORIGINAL_STD, architecture="cogview-original",
    )


def original_to_ours(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Rename (and transpose the codebook of) a released state dict into VQVAE's keys; n = strided stages."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _ENC.match(key):
            i, kind = int(m.group(1)), m.group(2)
            out[f"encoder.conv_out.{kind}" if i == 2 * n else f"encoder.down.{i}.{kind}"] = value
        elif m := _DEC.match(key):
            i, kind = int(m.group(1)), m.group(2)
            out[f"decoder.conv_in.{kind}" if i == 0 else f"decoder.up.{i - 1}.{kind}"] = value
        elif key not in _QUANT:
            out[key] = value  # unknown keys make load_state_dict fail with their names
    out["quantizer.codebook"] = state["quantize_t.embed"].t().contiguous()  # [d, K] -> [K, d]
    out["quantizer.embed_avg"] = state["quantize_t.embed_avg"].t().contiguous()  # [d, K] -> [K, d]
    out["quantizer.cluster_size"] = state["quantize_t.cluster_size"]
    out["quantizer.initialized"] = torch.ones((), dtype=torch.bool)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def import_original_vqvae(path: str | os.PathLike[str], trust_pickle: bool = False, image_size: int = ORIGINAL_IMAGE_SIZE,
                          log: Callable[[str], None] = print) -> VQVAE:
    """Build our VQVAE (eval mode, fp32) from the released CogView VQ-VAE file."""
    state = read_state_file(path, trust_pickle, log)
    config = original_config(state, str(path), image_size)
    model = VQVAE(config)
    try:
        model.load_state_dict(original_to_ours(state, config.num_downsamples), strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise TokenizationError(f"{path} does not match the CogView-original VQ-VAE layout: {detail}") from None
    return model.eval()
