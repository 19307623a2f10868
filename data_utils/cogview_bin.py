"""`cogview preprocess --from-cogview-bin`: the original CogView's binary datasets -> our token shards.

CogView's `CompactBinaryDataset` files are raw int32 rows of `text_len` text ids (unified ids, i.e.
SentencePiece id + number of image codes, padded with -1 at the end) followed by grid x grid image
codes; the original wrapped each row as `[ROI1] text [BASE] [BOI1] codes [EOI1]`. Rows are streamed from
a memory map into shards of the same template, with the tokenizers' fingerprints in dataset.json so
training checks them like any other data. Shard k always holds the same rows, so an interrupted run
continues where it stopped.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from tokenization import templates
from tokenization.image import ImageTokenizer
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer

from .errors import DataError
from .progress import progress
from .shards import MANIFEST_NAME, Manifest, ShardInfo, storage_dtype
from .writer import TokenRecord, shard_name, write_shard

PROGRESS_DIR = ".progress"
BIN_TASKS = ("text2image", "image2text")


@dataclass(frozen=True)
class BinConfig:
    """One conversion of CompactBinaryDataset files into shards."""

    files: tuple[str, ...]
    text_tokenizer: str
    image_tokenizer: str
    out: str
    text_len: int = 64
    text_ids: str = "unified"  # "unified" (text id + image codes, as the original stored them) or "raw"
    seq_len: int = 1089
    task: str = "text2image"
    samples_per_shard: int = 1000
    prefix: str = "data"

    def __post_init__(self) -> None:
        if not self.files:
            raise DataError("no binary files given; pass --from-cogview-bin FILE [FILE ...]")
        if self.task not in BIN_TASKS:
            raise DataError(f"--task {self.task} cannot be built from a CogView binary file (it holds one image per "
                            f"row); use one of {', '.join(BIN_TASKS)}")
        if self.text_ids not in ("unified", "raw"):
            raise DataError(f"--text-ids {self.text_ids!r} must be unified or raw")
        if self.text_len < 1 or self.samples_per_shard < 1:
            raise DataError("--bin-text-len and --samples-per-shard must be >= 1")
        shard_name(self.prefix, 0)  # validates the prefix


def open_rows(path: str, row_len: int) -> np.ndarray:
    """The int32 rows [n, row_len] of one file, memory-mapped."""
    if not os.path.isfile(path):
        raise DataError(f"binary dataset {path!r} not found")
    size = os.path.getsize(path)
    if size == 0 or size % (4 * row_len):
        raise DataError(f"{path} has {size} bytes, not a multiple of {4 * row_len} (rows of {row_len} int32 ids); "
                        "is it a CompactBinaryDataset file, and do --bin-text-len and the VQ-VAE's grid match it?")
    return np.memmap(path, dtype=np.int32, mode="r", shape=(size // (4 * row_len), row_len))


class _Converter:
    """Row -> TokenRecord for one run (tokenizers, layout and checks)."""

    def __init__(self, config: BinConfig) -> None:
        self.config = config
        self.text = TextTokenizer(config.text_tokenizer)
        self.image = ImageTokenizer.from_pretrained(config.image_tokenizer)
        self.layout = TokenLayout(self.image.num_codes, self.text.vocab_size)
        self.codes = self.image.grid_size ** 2
        self.row_len = config.text_len + self.codes

    def settings(self) -> dict:
        """What determines the output bytes (a continued run must match them)."""
        c = self.config
        return {"from_cogview_bin": [os.path.abspath(f) for f in c.files], "text_len": c.text_len, "text_ids": c.text_ids,
                "seq_len": c.seq_len, "task": c.task, "samples_per_shard": c.samples_per_shard, "prefix": c.prefix,
                "layout": self.layout.to_dict(), "text_tokenizer": self.text.fingerprint(),
                "image_tokenizer": self.image.fingerprint()}

    def record(self, path: str, index: int, row: np.ndarray, stats: dict[str, int]) -> TokenRecord | None:
        """The sequence of one row (None for a row without text)."""
        lay = self.layout
        text = row[: self.config.text_len].astype(np.int64)
        text = text[text > -1]
        codes = row[self.config.text_len :].astype(np.int64)
        where = f"{path} row {index}"
        if self.config.text_ids == "unified":
            if text.size and not bool(lay.is_text(text).all()):
                raise DataError(f"{where} has text ids {int(text.min())}..{int(text.max())} outside the text range "
                                f"{lay.text_offset}..{lay.command_offset - 1}; if the file stores raw SentencePiece ids "
                                "pass --text-ids raw, else check the tokenizers")
            text = text - lay.text_offset
        if codes.min() < 0 or codes.max() >= lay.num_image_tokens:
            raise DataError(f"{where} has image codes {int(codes.min())}..{int(codes.max())} outside "
                            f"0..{lay.num_image_tokens - 1}; check --bin-text-len and the VQ-VAE")
        if not text.size:
            stats["empty_caption"] += 1
            return None
        if self.config.task == "text2image":
            seq = templates.text_to_image(lay, text, codes, self.config.seq_len)
        else:
            seq = templates.image_to_text(lay, codes, text, self.config.seq_len)
        stats["truncated"] += int(seq.text_truncated > 0)
        stats["truncated_pieces"] += seq.text_truncated
        name = os.path.splitext(os.path.basename(path))[0]
        meta = {"source": f"{name}:{index}", "task": self.config.task, "text_len": int(text.size),
                "text_truncated": seq.text_truncated}
        return TokenRecord(f"{name}_{index:09d}", seq.tokens, seq.position_ids, self.text.decode(text.tolist()), meta)


def _rows(files: tuple[str, ...], row_len: int) -> Iterator[tuple[str, int, np.ndarray]]:
    for path in files:
        rows = open_rows(path, row_len)
        for i in range(rows.shape[0]):
            yield path, i, rows[i]


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)


def convert_cogview_bin(config: BinConfig, log: Callable[[str], None] = print) -> Manifest:
    """Write shards + dataset.json under config.out from CompactBinaryDataset files; continues a stopped run."""
    run = _Converter(config)
    total_rows = sum(open_rows(f, run.row_len).shape[0] for f in config.files)  # checks every file first
    settings = run.settings()
    if os.path.exists(os.path.join(config.out, MANIFEST_NAME)):
        done = Manifest.load(config.out)
        if done.settings != settings:
            raise DataError(f"{config.out} already holds a dataset made with other settings; use a new --out")
        log(f"{config.out} is already complete ({done.num_samples} samples); nothing to do")
        return done
    progress_dir = os.path.join(config.out, PROGRESS_DIR)
    os.makedirs(progress_dir, exist_ok=True)
    settings_file = os.path.join(progress_dir, "settings.json")
    if os.path.exists(settings_file):
        with open(settings_file, encoding="utf-8") as f:
            if json.load(f) != settings:
                raise DataError(f"{config.out} holds an unfinished run with other settings; use a new --out or delete it")
    else:
        _write_json(settings_file, settings)
    dtype = storage_dtype(run.layout.vocab_size)
    keys = ("read", "written", "empty_caption", "truncated", "truncated_pieces")
    totals, shards = dict.fromkeys(keys, 0), []
    rows = _rows(config.files, run.row_len)
    n = config.samples_per_shard
    with progress(total_rows, "cogview-bin", "row") as bar:
        for index in range(-(-total_rows // n)):
            name = shard_name(config.prefix, index)
            record_file = os.path.join(progress_dir, name + ".json")
            chunk = [next(rows) for _ in range(min(n, total_rows - index * n))]
            if os.path.exists(record_file) and os.path.exists(os.path.join(config.out, name)):
                with open(record_file, encoding="utf-8") as f:
                    done_record = json.load(f)
            else:
                stats = dict.fromkeys(keys, 0)
                stats["read"] = len(chunk)
                records = [r for path, i, row in chunk if (r := run.record(path, i, row, stats)) is not None]
                info = write_shard(config.out, config.prefix, index, records, config.seq_len, dtype)
                stats["written"] = info.samples
                done_record = {"shard": asdict(info), "stats": stats}
                _write_json(record_file, done_record)
            shards.append(ShardInfo(**done_record["shard"]))
            for k in keys:
                totals[k] += done_record["stats"][k]
            bar.update(len(chunk))
    if not totals["written"]:
        raise DataError(f"{', '.join(config.files)} hold no rows with text; nothing to write")
    manifest = Manifest(
        task=config.task, seq_len=config.seq_len, dtype=dtype, layout=run.layout.to_dict(),
        layout_fingerprint=run.layout.fingerprint(), text_tokenizer_fingerprint=run.text.fingerprint(),
        image_tokenizer_fingerprint=run.image.fingerprint(), shards=shards, stats=totals, settings=settings,
        root=os.path.abspath(config.out),
    )
    manifest.save(config.out)
    shutil.rmtree(progress_dir, ignore_errors=True)
    log(f"cogview-bin: {totals['written']} of {totals['read']} rows written ({totals['empty_caption']} without text, "
        f"{totals['truncated']} captions truncated); {len(shards)} shard(s) in {config.out}")
    return manifest
