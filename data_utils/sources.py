"""Raw (image, caption) inputs for preprocessing: JSONL/TSV tables, image folders, img2dataset-style tars."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from tokenization.image_files import IMAGE_EXTENSIONS, is_image_name

from .errors import DataError
from .image_sources import walk_images
from .wds import ShardReadError, iter_tar

CAPTION_KEYS = ("caption", "text", "txt", "prompt")
IMAGE_KEYS = ("image", "image_path", "path", "file", "filename")


@dataclass(frozen=True)
class RawItem:
    """One input pair before decoding: image as a file path or encoded bytes, caption text (may be empty)."""

    key: str
    caption: str
    image_path: str | None = None
    image_bytes: bytes | None = None
    error: str | None = None  # set when the input itself is broken (reported as unreadable)


def _pick(row: dict, names: Sequence[str], wanted: str | None, what: str, where: str) -> str:
    """The value of the `wanted` column, or of the first known column name present."""
    if wanted is not None:
        if wanted not in row:
            raise DataError(f"{where} has no {what} column {wanted!r}; columns are {sorted(row)}")
        return str(row[wanted] or "")
    for name in names:
        if name in row:
            return str(row[name] or "")
    raise DataError(f"{where} has no {what} column (tried {', '.join(names)}); name it with --{what}-column")


def _jsonl_items(path: str, caption_column: str | None, image_column: str | None) -> Iterator[RawItem]:
    """Items of a JSONL file whose lines hold an image path (relative to the file) and a caption."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key = f"{os.path.splitext(os.path.basename(path))[0]}_{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawItem(key, "", error=f"{path}:{lineno}: invalid JSON ({e})")
                continue
            image = _pick(row, IMAGE_KEYS, image_column, "image", path)
            caption = _pick(row, CAPTION_KEYS, caption_column, "caption", path)
            key = str(row.get("key") or os.path.splitext(os.path.basename(image))[0] or key)
            yield RawItem(key, caption, image_path=os.path.join(base, image))


def _tsv_items(path: str, caption_column: str | None, image_column: str | None) -> Iterator[RawItem]:
    """Items of a TSV: with a header naming image/caption columns, or two columns (image, caption)."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        first = next(rows, None)
        if first is None:
            return
        names = [c.strip().lower() for c in first]
        header = bool(set(names) & set(IMAGE_KEYS + CAPTION_KEYS)) or caption_column is not None
        if header:
            table = (dict(zip(names, r)) for r in rows)
        else:
            table = (dict(zip(("image", "caption"), r)) for r in _prepend(first, rows))
        for lineno, row in enumerate(table, 2 if header else 1):
            image = _pick(row, IMAGE_KEYS, image_column.lower() if image_column else None, "image", path)
            caption = _pick(row, CAPTION_KEYS, caption_column.lower() if caption_column else None, "caption", path)
            key = str(row.get("key") or os.path.splitext(os.path.basename(image))[0] or f"line{lineno}")
            yield RawItem(key, caption, image_path=os.path.join(base, image))


def _prepend(first: list[str], rows: Iterator[list[str]]) -> Iterator[list[str]]:
    """`first` followed by the remaining rows."""
    yield first
    yield from rows


def _folder_items(folder: str) -> Iterator[RawItem]:
    """Images under a folder (sorted, recursive) with captions in same-name .txt files."""
    for path in walk_images(folder):
        stem = os.path.splitext(path)[0]
        caption = ""
        if os.path.exists(stem + ".txt"):
            with open(stem + ".txt", encoding="utf-8", errors="replace") as f:
                caption = f.read()
        yield RawItem(os.path.relpath(stem, folder), caption, image_path=path)


def _tar_items(path: str) -> Iterator[RawItem]:
    """Samples of an img2dataset-style tar: KEY.jpg|png|webp + KEY.txt [+ KEY.json]; a bad tail is reported."""
    try:
        for sample in iter_tar(path):
            key = str(sample["__key__"])
            image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            caption = bytes(sample.get("txt", b"")).decode("utf-8", errors="replace")
            if not caption and "json" in sample:
                try:
                    caption = str(json.loads(bytes(sample["json"])).get("caption") or "")
                except (ValueError, AttributeError):
                    caption = ""
            if image_ext is None:
                yield RawItem(key, caption, error=f"{path}: sample {key!r} has no image file")
            else:
                yield RawItem(key, caption, image_bytes=bytes(sample[image_ext]))
    except ShardReadError as e:
        yield RawItem(f"{e.key or 'tail'}_broken", "", error=str(e))


def input_files(inputs: Sequence[str]) -> list[str]:
    """The inputs with folders of .tar shards expanded into their tars: the units preprocessing parts split."""
    files: list[str] = []
    for path in inputs:
        if not os.path.exists(path):
            raise DataError(f"input {path} not found; pass JSONL/TSV files, image folders or .tar shards")
        tars = sorted(f for f in os.listdir(path) if f.endswith(".tar")) if os.path.isdir(path) else []
        if tars and not any(is_image_name(f) for f in os.listdir(path)):
            files += [os.path.join(path, t) for t in tars]
        else:
            files.append(path)
    return files


def iter_inputs(
    inputs: Sequence[str], caption_column: str | None = None, image_column: str | None = None
) -> Iterator[RawItem]:
    """Every raw item of the inputs, in a fixed order (so an interrupted run can continue)."""
    for path in inputs:
        if not os.path.exists(path):
            raise DataError(f"input {path} not found; pass JSONL/TSV files, image folders or .tar shards")
    for path in inputs:
        lower = path.lower()
        if os.path.isdir(path):
            tars = sorted(f for f in os.listdir(path) if f.endswith(".tar"))
            has_images = any(is_image_name(f) for f in os.listdir(path))
            if tars and not has_images:
                for tar in tars:
                    yield from _tar_items(os.path.join(path, tar))
            else:
                yield from _folder_items(path)
        elif lower.endswith(".tar"):
            yield from _tar_items(path)
        elif lower.endswith((".jsonl", ".json")):
            yield from _jsonl_items(path, caption_column, image_column)
        elif lower.endswith((".tsv", ".txt")):
            yield from _tsv_items(path, caption_column, image_column)
        else:
            raise DataError(f"cannot tell what {path} is; use .jsonl, .tsv, .tar or a folder of images + .txt captions")
