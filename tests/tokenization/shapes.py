"""Tiny synthetic images for the tokenizer tests: coloured shapes drawn with Pillow."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE = [
    (230, 40, 40),
    (40, 200, 60),
    (40, 80, 230),
    (240, 220, 40),
    (240, 240, 240),
    (20, 20, 20),
    (200, 60, 200),
    (40, 210, 210),
]


def shape_image(rng: random.Random, size: int = 32) -> Image.Image:
    """One image: a flat background with one or two filled rectangles/ellipses in palette colours."""
    background, *colours = rng.sample(PALETTE, 3)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for colour in colours[: rng.randint(1, 2)]:
        x0, y0 = rng.randint(0, size // 2), rng.randint(0, size // 2)
        x1, y1 = rng.randint(x0 + size // 4, size), rng.randint(y0 + size // 4, size)
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return image


def shape_images(n: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    """n reproducible shape images."""
    rng = random.Random(seed)
    return [shape_image(rng, size) for _ in range(n)]


def write_folder(directory: Path, n: int, seed: int = 0, size: int = 32, ext: str = "png") -> Path:
    """Save n shape images as files in directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(shape_images(n, seed, size)):
        image.save(directory / f"img{i:04d}.{ext}")
    return directory
