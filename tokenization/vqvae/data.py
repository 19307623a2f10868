"""VQ-VAE training data: decoding a list of ImageSource (files or tar members) as one map-style dataset.

Which images --data names is worked out by data_utils/image_sources.py (find_images) before training starts."""

from __future__ import annotations

import io
import sys
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tokenization.errors import TokenizationError
from tokenization.image_files import ImageSource
from tokenization.imageproc import normalize, pil_to_tensor, resize_center_crop, resize_shorter_side, to_rgb


class ImageFolderDataset(Dataset):
    """Map-style dataset of normalised image tensors [c, S, S]; unreadable images are replaced by the next one.

    By default every image is resized (shorter side to S) and centre-cropped. With `random_crop` an item is an
    S x S window of the image at its own pixels (images with a side under S are first resized up to S on that
    side), placed at random: the tokenizer then learns the scale of larger images (what super-resolution decodes
    at 2x) instead of their downscaled copies. Keys are then `(index, draw)` pairs (ResumableBatchSampler with
    `tag_epochs`): a window depends only on `seed`, the index and the draw, so workers and resumed runs agree."""

    def __init__(
        self, sources: Sequence[ImageSource], image_size: int, mean: Sequence[float], std: Sequence[float],
        cache: bool = False, random_crop: bool = False, seed: int = 0,
    ) -> None:
        self.sources = list(sources)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.random_crop, self.seed = random_crop, seed
        self._handles: dict[str, io.BufferedReader] = {}
        self._warned = False
        # cache: each item's decoded pixels (resized, or at their own size with random_crop) kept as uint8 after its
        # first read (3 x H x W bytes per item, per loader process); the [0, 1] floats are k / 255, so the uint8 copy
        # gives back the same tensor
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.sources)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # open files do not cross into worker processes
        return state

    def _load(self, source: ImageSource) -> torch.Tensor:
        if source.offset < 0:
            opened = Image.open(source.path)
        else:
            handle = self._handles.get(source.path)
            if handle is None:
                handle = self._handles[source.path] = open(source.path, "rb")
            handle.seek(source.offset)
            opened = Image.open(io.BytesIO(handle.read(source.size)))
        with opened as image:
            if not self.random_crop:
                image.draft("RGB", (self.image_size, self.image_size))  # fast JPEG down-scaling when much larger
            return pil_to_tensor(self._fit(to_rgb(image)))

    def _fit(self, image: Image.Image) -> Image.Image:
        """Resized and centre-cropped to S x S; with random_crop kept at its own size unless a side is under S."""
        if not self.random_crop:
            return resize_center_crop(image, self.image_size)
        return image if min(image.size) >= self.image_size else resize_shorter_side(image, self.image_size)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        if self._cache is not None and index in self._cache:
            image = self._cache[index].float().div_(255.0)
        else:
            image = self._read(index)
            if self._cache is not None:
                self._cache[index] = image.mul(255.0).round_().to(torch.uint8)
        if self.random_crop:
            image = self.window(image, index, draw)
        return normalize(image, self.mean, self.std)

    def window(self, image: torch.Tensor, index: int, draw: int) -> torch.Tensor:
        """The S x S window of `image` [c, H, W] that item `index` shows on its `draw`-th read."""
        size = self.image_size
        _, h, w = image.shape
        rng = np.random.default_rng((self.seed, index, draw))
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        return image[:, top : top + size, left : left + size]

    def _read(self, index: int) -> torch.Tensor:
        """Pixels [3, S, S] ([3, H, W] with random_crop) in [0, 1] of item `index` (the next readable image when it
        cannot be read)."""
        for attempt in range(16):
            source = self.sources[(index + attempt) % len(self.sources)]
            try:
                image = self._load(source)
                break
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                if not self._warned:
                    print(f"warning: skipping unreadable image {source.path} ({e})", file=sys.stderr)
                    self._warned = True
        else:
            raise TokenizationError(
                f"16 images in a row near {self.sources[index].path!r} are unreadable; check --data"
            )
        return image


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches over a fresh seeded permutation per epoch; starts at any step, so resumes are exact.

    With `world` > 1 each global batch of `batch_size` items is cut into `world` equal slices and this sampler
    yields slice `rank` (data-parallel ranks see disjoint parts of the same global batches)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world: int = 1, tag_epochs: bool = False) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} ranks")
        self.num_items, self.batch_size, self.seed, self.start_step = num_items, batch_size, seed, start_step
        self.rank, self.world = rank, world
        self.tag_epochs = tag_epochs  # yield (index, epoch) pairs (ImageFolderDataset's random_crop keys)

    def _epoch(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list]:
        position = self.start_step * self.batch_size  # index into the endless stream of epochs
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        while True:
            batch: list = []
            while len(batch) < self.batch_size:
                take = order[offset : offset + self.batch_size - len(batch)].tolist()
                batch += [(i, epoch) for i in take] if self.tag_epochs else take
                offset += len(take)
                if offset >= self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
            share = self.batch_size // self.world
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return sys.maxsize
