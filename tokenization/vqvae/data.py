"""Image sources for VQ-VAE training: folders, image-list files and webdataset tars, as one map-style dataset."""

from __future__ import annotations

import io
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tokenization.errors import TokenizationError
from tokenization.image_files import IMAGE_EXTENSIONS, is_image_name
from tokenization.imageproc import load_image, normalize, pil_to_tensor, resize_center_crop, to_rgb

_LIST_SUFFIXES = (".txt", ".lst", ".list")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class ImageSource:
    """One training image: a file path, or a member of an uncompressed tar (byte offset and size)."""

    path: str
    offset: int = -1  # >= 0: the image bytes are tar[offset : offset + size]
    size: int = 0


def expand_braces(pattern: str) -> list[str]:
    """Expand webdataset-style numeric ranges: `shard-{000..009}.tar` -> 10 names (zero padding kept)."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[: match.start()] + str(i).zfill(width) + pattern[match.end() :])
    return out


def _tar_members(path: Path) -> list[ImageSource]:
    """Image members of a webdataset tar (`KEY.jpg|png|...`; the first image per key)."""
    if path.suffix in (".gz", ".tgz", ".bz2", ".xz", ".zst"):
        raise TokenizationError(
            f"{str(path)!r} is compressed; train-vqvae reads uncompressed .tar shards (decompress it first)"
        )
    seen: set[str] = set()
    out = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                key, _, ext = base.partition(".")  # webdataset: the key ends at the first dot
                if ext.lower() in IMAGE_EXTENSIONS and (directory, key) not in seen:
                    seen.add((directory, key))
                    out.append(ImageSource(str(path), member.offset_data, member.size))
    except tarfile.TarError as e:
        raise TokenizationError(f"cannot read tar {str(path)!r} ({e}); is it a complete, uncompressed tar?") from e
    return out


def _folder_images(path: Path) -> list[ImageSource]:
    files = sorted(p for p in path.rglob("*") if is_image_name(p.name) and p.is_file())
    return [ImageSource(str(p)) for p in files]


def _list_images(path: Path) -> list[ImageSource]:
    """Paths listed one per line (relative ones are relative to the list file); '#' starts a comment."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("\t")[0].strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        out.append(ImageSource(str(p if p.is_absolute() else path.parent / p)))
    return out


def find_images(data: Sequence[str]) -> list[ImageSource]:
    """All training images named by --data entries: folders, image lists (.txt), tars (brace ranges ok), images."""
    sources: list[ImageSource] = []
    for entry in data:
        for name in expand_braces(str(entry)):
            path = Path(name)
            if path.is_dir():
                found = _folder_images(path)
            elif not path.is_file():
                raise TokenizationError(
                    f"--data {name!r} not found; pass a folder of images, an image-list file or .tar shards"
                )
            elif path.suffix.lower() == ".tar" or ".tar." in path.name.lower() or path.suffix.lower() == ".tgz":
                found = _tar_members(path)
            elif path.suffix.lower() in _LIST_SUFFIXES:
                found = _list_images(path)
            elif is_image_name(path.name):
                found = [ImageSource(str(path))]
            else:
                raise TokenizationError(
                    f"--data {name!r}: unknown kind of file; use a folder, a .txt image list or .tar shards"
                )
            if not found:
                raise TokenizationError(f"--data {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            sources += found
    if not sources:
        raise TokenizationError("no training images found; check --data")
    return sources


class ImageFolderDataset(Dataset):
    """Map-style dataset of normalised image tensors [c, S, S]; unreadable images are replaced by the next one."""

    def __init__(
        self, sources: Sequence[ImageSource], image_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.sources = list(sources)
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self._handles: dict[str, io.BufferedReader] = {}
        self._warned = False

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
        return normalize(image, self.mean, self.std)


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
