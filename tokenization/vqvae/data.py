"""VQ-VAE training data: decoding a list of ImageSource (files or tar members) as one map-style dataset.

Which images --data names is worked out by data_utils/image_sources.py (find_images) before training starts."""

from __future__ import annotations

import io
import sys
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tokenization.errors import TokenizationError
from tokenization.image_files import ImageSource
from tokenization.imageproc import load_image, normalize, pil_to_tensor, resize_center_crop, to_rgb


class ImageFolderDataset(Dataset):
    """Map-style dataset of normalised image tensors [c, S, S]; unreadable images are replaced by the next one."""

    def __init__(
        self, sources: Sequence[ImageSource], image_size: int, mean: Sequence[float], std: Sequence[float],
        cache: bool = False,
    ) -> None:
        self.sources = list(sources)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self._handles: dict[str, io.BufferedReader] = {}
        self._warned = False
        # cache: each item's decoded, resized pixels kept as uint8 after its first read (3 x size^2 bytes per item,
        # per loader process); the [0, 1] floats are k / 255, so the uint8 copy gives back the same tensor
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.sources)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # open files do not cross into worker processes
        return state

    def _load(self, source: ImageSource) -> torch.Tensor:
        if source.offset < 0:
            return load_image(source.path, self.image_size)
        handle = self._handles.get(source.path)
        if handle is None:
            handle = self._handles[source.path] = open(source.path, "rb")
        handle.seek(source.offset)
        with Image.open(io.BytesIO(handle.read(source.size))) as image:
            image.draft("RGB", (self.image_size, self.image_size))
            return pil_to_tensor(resize_center_crop(to_rgb(image), self.image_size))

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return normalize(self._cache[index].float().div_(255.0), self.mean, self.std)
        image = self._read(index)
        if self._cache is not None:
            self._cache[index] = image.mul(255.0).round_().to(torch.uint8)
        return normalize(image, self.mean, self.std)

    def _read(self, index: int) -> torch.Tensor:
        """Pixels [3, S, S] in [0, 1] of item `index` (the next readable image when it cannot be read)."""
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
                 world: int = 1) -> None:
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} ranks")
        self.num_items, self.batch_size, self.seed, self.start_step = num_items, batch_size, seed, start_step
        self.rank, self.world = rank, world

    def _epoch(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_step * self.batch_size  # index into the endless stream of epochs
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        while True:
            batch: list[int] = []
            while len(batch) < self.batch_size:
                take = order[offset : offset + self.batch_size - len(batch)].tolist()
                batch += take
                offset += len(take)
                if offset >= self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
            share = self.batch_size // self.world
            yield batch[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return sys.maxsize
