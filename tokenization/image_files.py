"""Which files are images (the one extension list every image reader uses) and where one image lives (ImageSource)."""
from __future__ import annotations

from dataclasses import dataclass

# lower case, without the dot; in a tar sample with several images the first one listed here is taken
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def is_image_name(name: str) -> bool:
    """True if the file name ends in one of IMAGE_EXTENSIONS (any case)."""
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageSource:
    """One image to decode: a file path, or a member of an uncompressed tar (byte offset and size)."""

    path: str
    offset: int = -1  # >= 0: the image bytes are tar[offset : offset + size]
    size: int = 0
