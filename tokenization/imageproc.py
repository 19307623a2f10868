"""Image preprocessing shared by ImageTokenizer and VQ-VAE training: RGB, resize, centre crop, normalise."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tokenization.errors import TokenizationError


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of a PIL image; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is size (bicubic, antialiased), keeping the aspect ratio."""
    w, h = image.size
    if w < 1 or h < 1:
        raise TokenizationError(f"image has an empty side ({w}x{h}); drop it from the input")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to size (bicubic, antialiased) and crop the centre size x size."""
    image = resize_shorter_side(image, size)
    nw, nh = image.size
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # [H, W, 3] -> [3, H, W]


def tensor_resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images [b, c, H, W] -> [b, c, size, size] (shorter side resized, antialiased; centre crop)."""
    _, _, h, w = images.shape
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = images[:, :, top : top + size, left : left + size]
    return images


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel on [b, c, H, W] or [c, H, W]."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - m) / s


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of normalize, clamped to [0, 1]."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * s + m).clamp_(0.0, 1.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float image [3, H, W] in [0, 1] -> RGB PIL image."""
    array = (
        image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    )  # -> [H, W, 3]
    return Image.fromarray(array)


def load_image(path: str, size: int) -> torch.Tensor:
    """Open an image file -> float tensor [3, size, size] in [0, 1]."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # fast JPEG down-scaling when much larger
        return pil_to_tensor(resize_center_crop(to_rgb(image), size))
