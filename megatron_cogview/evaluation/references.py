"""Evaluation inputs: (caption, reference image) pairs from JSONL/TSV, image folders with .txt captions or tars."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data_utils.sources import iter_inputs
from data_utils.synth import LANGS, all_combinations, caption_for
from megatron_cogview.config import ConfigError
from tokenization.imageproc import resize_center_crop, to_rgb

Combination = tuple[str, str, str]


@dataclass(frozen=True)
class References:
    """Unique captions in input order, their synthetic (colour, shape, position) if every one is synthetic,
    and every reference image as uint8 [N, 3, s, s] (centre-cropped and resized to the generated size)."""

    captions: list[str]
    combinations: list[Combination] | None
    images: torch.Tensor


def synthetic_combination(caption: str) -> Combination | None:
    """The (colour, shape, position) a built-in synthetic caption (English or Chinese) describes, else None."""
    table = {caption_for(*c, lang=lang): c for c in all_combinations() for lang in LANGS}
    return table.get(caption.strip())


def _decode(item_path: str | None, data: bytes | None, size: int) -> np.ndarray:
    image = Image.open(item_path) if item_path is not None else Image.open(io.BytesIO(data or b""))
    return np.asarray(resize_center_crop(to_rgb(image), size))


def read_references(inputs: Sequence[str], image_size: int, *, max_captions: int | None = None,
                    max_references: int | None = None) -> References:
    """Read every pair up front; a missing/broken image or an input without pairs is a one-line ConfigError."""
    captions: dict[str, None] = {}
    images: list[np.ndarray] = []
    count = 0
    for item in iter_inputs(list(inputs)):
        count += 1
        where = item.image_path or item.key
        if item.error:
            raise ConfigError(f"{item.error}; every caption needs its reference image (fix or drop that row)")
        if item.image_path is not None and not os.path.isfile(item.image_path):
            raise ConfigError(f"caption {item.caption.strip()!r} has no image: {item.image_path} does not exist; "
                              "every caption needs its reference image (fix or drop that row)")
        if max_references is None or len(images) < max_references:
            try:
                images.append(_decode(item.image_path, item.image_bytes, image_size))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise ConfigError(f"cannot read reference image {where} ({e}); fix or drop that row") from None
        if item.caption.strip():
            captions.setdefault(item.caption.strip(), None)
    source = ", ".join(inputs)
    if count == 0:
        raise ConfigError(f"{source} holds no (caption, image) pairs; pass a JSONL of caption + image path, a "
                          "folder of images with same-name .txt captions, or an img2dataset tar")
    if len(images) < 2:
        raise ConfigError(f"{source} holds {len(images)} reference image(s); FID needs at least 2 (more is better)")
    if not captions:
        raise ConfigError(f"{source} holds images but no captions to prompt with; add the captions")
    chosen = list(captions)[:max_captions]
    combos = [synthetic_combination(c) for c in chosen]
    known = None if any(c is None for c in combos) else [c for c in combos if c is not None]
    return References(chosen, known, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
