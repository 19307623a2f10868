"""Image decoding for preprocessing workers: bytes or path -> RGB uint8 array at the tokenizer's size."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from tokenization.imageproc import resize_center_crop, to_rgb

Decoded = tuple[np.ndarray | None, str | None]  # (image [S, S, 3] uint8, error)


def decode_image(path: str | None, data: bytes | None, size: int) -> Decoded:
    """Open, convert to RGB and resize/centre-crop like ImageTokenizer does; errors come back as text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            source = io.BytesIO(data) if data is not None else path
            if source is None:
                return None, "no image"
            with Image.open(source) as image:
                image.load()
                rgb = resize_center_crop(to_rgb(image), size)
                return np.asarray(rgb, dtype=np.uint8).copy(), None
    except Exception as e:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        return None, f"{type(e).__name__}: {e}"


def decode_task(task: tuple[str | None, bytes | None, int]) -> Decoded:
    """decode_image on a (path, bytes, size) tuple, for executor.map."""
    return decode_image(*task)
