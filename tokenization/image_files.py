"""Which files are images: the one extension list every image reader uses (folders, image lists, tar samples)."""
from __future__ import annotations

# lower case, without the dot; in a tar sample with several images the first one listed here is taken
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def is_image_name(name: str) -> bool:
    """True if the file name ends in one of IMAGE_EXTENSIONS (any case)."""
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS
