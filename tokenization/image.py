"""ImageTokenizer: images <-> VQ-VAE code grids, batched, without gradients, on CPU or GPU."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from tokenization.errors import TokenizationError
from tokenization.imageproc import (
    denormalize,
    normalize,
    pil_to_tensor,
    resize_center_crop,
    tensor_resize_center_crop,
    tensor_to_pil,
    to_rgb,
)
from tokenization.vqvae.model import VQVAE
from tokenization.vqvae.serialization import load_pretrained

ImageInput = Union[Image.Image, torch.Tensor, Sequence[Image.Image]]


class ImageTokenizer:
    """Wraps a trained VQ-VAE: encode images to int64 codes [b, h, w], decode codes to PIL images."""

    def __init__(self, model: VQVAE, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None, batch_size: int = 64
    ) -> "ImageTokenizer":
        """Load model.safetensors + config.json from a directory (device: "cpu", "cuda", ...; default CPU)."""
        return cls(load_pretrained(directory, device=device or "cpu"), batch_size=batch_size)

    @property
    def num_codes(self) -> int:
        """Codebook size (number of distinct image tokens)."""
        return self.config.codebook_size

    @property
    def grid_size(self) -> int:
        """Side of the code grid at the default image size."""
        return self.config.grid_size

    @property
    def image_size(self) -> int:
        """Default input/output side in pixels."""
        return self.config.image_size

    @property
    def downsample(self) -> int:
        """Pixels per code along each side."""
        return self.config.downsample

    def at_grid(self, grid: int) -> "ImageTokenizer":
        """The same tokenizer (same model and fingerprint) whose default image is a grid x grid code grid."""
        other = copy.copy(self)
        other._fingerprint = self.fingerprint()
        other.config = dataclasses.replace(self.config, image_size=grid * self.downsample)
        return other

    def fingerprint(self) -> str:
        """sha256 over the config and every weight tensor (dtype, shape, bytes)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode("utf-8"))
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                if t.dtype == torch.bool:
                    t = t.to(torch.uint8)
                digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode("utf-8"))
                digest.update(t.numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def preprocess(self, images: ImageInput, image_size: int | None = None) -> torch.Tensor:
        """Images -> normalised float tensor [b, c, S, S] on the CPU (resize shorter side, centre crop)."""
        size = image_size or self.image_size
        if size % self.downsample:
            raise TokenizationError(
                f"image_size {size} is not a multiple of the tokenizer's downsample {self.downsample}"
            )
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != self.config.in_channels or not batch.is_floating_point():
                raise TokenizationError(
                    f"image tensors must be float [b, {self.config.in_channels}, H, W] in [0, 1], got "
                    f"{batch.dtype} {tuple(images.shape)}"
                )
            batch = tensor_resize_center_crop(batch.float(), size)
        else:
            items = list(images)
            if not items or not all(isinstance(im, Image.Image) for im in items):
                raise TokenizationError("encode takes a PIL image, a list of PIL images or a float tensor [b, c, H, W]")
            batch = torch.stack([pil_to_tensor(resize_center_crop(to_rgb(im), size)) for im in items])
        return normalize(batch, self.config.normalize_mean, self.config.normalize_std)

    @torch.no_grad()
    def encode(self, images: ImageInput, image_size: int | None = None) -> torch.Tensor:
        """Code grids LongTensor [b, S/ds, S/ds] (on CPU) of images at image_size (default: the trained size)."""
        batch = self.preprocess(images, image_size)
        out = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = batch[start : start + self.batch_size].to(self.device, non_blocking=True)
            out.append(self.model.encode(chunk).to("cpu"))
        return torch.cat(out)

    def _as_codes(self, codes: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Validate codes and shape them [b, h, w] (accepts [h, w], [b, h, w] or flat [b, h*w] square grids)."""
        t = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TokenizationError(f"codes must be integers, got {t.dtype}")
        t = t.long()
        if t.dim() == 1:
            t = t.unsqueeze(0)
        if t.dim() == 2 and t.shape[0] != t.shape[1]:  # [b, h*w] of square grids
            side = int(round(t.shape[1] ** 0.5))
            if side * side != t.shape[1]:
                raise TokenizationError(f"cannot shape {t.shape[1]} codes into a square grid; pass codes [b, h, w]")
            t = t.view(t.shape[0], side, side)  # [b, h*w] -> [b, h, w]
        elif t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3:
            raise TokenizationError(f"codes must be [h, w] or [b, h, w], got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_codes):
            raise TokenizationError(
                f"codes must lie in 0..{self.num_codes - 1}, got {int(t.min())}..{int(t.max())}; "
                "pass raw image codes (subtract the layout's image_offset)"
            )
        return t

    @torch.no_grad()
    def decode_to_tensor(self, codes: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """Float images [b, c, h*ds, w*ds] in [0, 1] (on CPU) of code grids."""
        grids = self._as_codes(codes)
        out = []
        for start in range(0, grids.shape[0], self.batch_size):
            chunk = grids[start : start + self.batch_size].to(self.device)
            pixels = self.model.decode(chunk).float()
            out.append(denormalize(pixels, self.config.normalize_mean, self.config.normalize_std).to("cpu"))
        return torch.cat(out)

    def decode(self, codes: torch.Tensor | np.ndarray | Sequence[int]) -> list[Image.Image]:
        """PIL images of code grids [b, h, w] (or one grid [h, w])."""
        return [tensor_to_pil(image) for image in self.decode_to_tensor(codes)]

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ImageTokenizer(image_size={c.image_size}, grid={c.grid_size}x{c.grid_size}, "
            f"codes={c.codebook_size}, device={self.device})"
        )
