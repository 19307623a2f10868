"""Enumerating image inputs: brace patterns, image folders, image-list files and tar members (by byte offset).

The VQ-VAE trainer's --data and the preprocess folder reader (data_utils/sources.py) list images here; the
trainer receives the resulting ImageSource list and only decodes (tokenization/vqvae/data.py).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Sequence

from tokenization.image_files import IMAGE_EXTENSIONS, ImageSource, is_image_name

from .errors import DataError
from .remote import expand

LIST_SUFFIXES = (".txt", ".lst", ".list")
_COMPRESSED_SUFFIXES = (".gz", ".tgz", ".bz2", ".xz", ".zst")


def walk_images(folder: str) -> list[str]:
    """Image files under `folder`, recursively: each directory's files sorted by name, then its subfolders sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if is_image_name(f)]
    return found


def folder_images(folder: str) -> list[ImageSource]:
    """The regular image files under `folder`, sorted by path components (a file before a same-named folder's)."""
    files = sorted((Path(p) for p in walk_images(folder)), key=lambda p: p.parts)
    return [ImageSource(str(p)) for p in files if p.is_file()]


def tar_images(path: str) -> list[ImageSource]:
    """Image members of an uncompressed webdataset tar (`KEY.jpg|png|...`; the first image per key), by offset."""
    if Path(path).suffix in _COMPRESSED_SUFFIXES:
        raise DataError(f"{path!r} is compressed; train-vqvae reads uncompressed .tar shards (decompress it first)")
    seen: set[tuple[str, str]] = set()
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
                    out.append(ImageSource(path, member.offset_data, member.size))
    except tarfile.TarError as e:
        raise DataError(f"cannot read tar {path!r} ({e}); is it a complete, uncompressed tar?") from e
    return out


def listed_images(path: str) -> list[ImageSource]:
    """Paths listed one per line (relative ones are relative to the list file; a TAB ends the path); '#' comments."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("\t")[0].strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        out.append(ImageSource(str(p if p.is_absolute() else Path(path).parent / p)))
    return out


def _is_tar(path: Path) -> bool:
    return path.suffix.lower() in (".tar", ".tgz") or ".tar." in path.name.lower()


def find_images(data: Sequence[str]) -> list[ImageSource]:
    """Every image named by --data entries (folders, image lists, tars, single images; brace patterns expanded)."""
    sources: list[ImageSource] = []
    for entry in data:
        for name in expand(str(entry)):
            path = Path(name)
            if path.is_dir():
                found = folder_images(name)
            elif not path.is_file():
                raise DataError(
                    f"--data {name!r} not found; pass a folder of images, an image-list file or .tar shards"
                )
            elif _is_tar(path):
                found = tar_images(str(path))
            elif path.suffix.lower() in LIST_SUFFIXES:
                found = listed_images(str(path))
            elif is_image_name(path.name):
                found = [ImageSource(str(path))]
            else:
                raise DataError(f"--data {name!r}: unknown kind of file; use a folder, a .txt image list or .tar shards")
            if not found:
                raise DataError(f"--data {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            sources += found
    if not sources:
        raise DataError("no training images found; check --data")
    return sources
