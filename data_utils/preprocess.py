"""`cogview preprocess`: raw (image, caption) pairs -> fixed-length token sequences in tar shards + manifest."""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from tokenization import templates
from tokenization.image import ImageTokenizer
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer
from tokenization.unified import UnifiedTokenizer

from .errors import DataError
from .imageio import decode_task
from .parts import finish_parts, other_splits, part_file, part_prefix, share, write_part
from .preprocess_config import PreprocessConfig
from .progress import progress
from .shards import MANIFEST_NAME, Manifest, ShardInfo, storage_dtype
from .sources import RawItem, input_files, iter_inputs
from .styles import check_style_inputs, with_style_captions
from .wds import safe_key
from .writer import TokenRecord, shard_name, write_shard

logger = logging.getLogger("data_utils")
PROGRESS_DIR = ".progress"
_LOGGED_PER_KIND = 10


@dataclass
class Stats:
    """Counts of what happened to the input items."""

    read: int = 0
    written: int = 0
    unreadable: int = 0
    empty_caption: int = 0
    truncated: int = 0  # samples whose text was cut to fit seq_len
    truncated_pieces: int = 0

    def add(self, other: dict[str, int]) -> None:
        """Add the counts of a finished shard."""
        for k, v in other.items():
            setattr(self, k, getattr(self, k) + int(v))

    def summary(self) -> str:
        """One line for the end of the run."""
        return (f"{self.written} of {self.read} samples written; skipped {self.unreadable} unreadable image(s) "
                f"and {self.empty_caption} empty caption(s); truncated {self.truncated} caption(s) "
                f"({self.truncated_pieces} text tokens cut)")


class _Run:
    """One preprocessing run: tokenizers, settings, executor and counters."""

    def __init__(self, config: PreprocessConfig, log: Callable[[str], None]) -> None:
        self.config, self.log = config, log
        self.text = TextTokenizer(config.text_tokenizer)
        self.image = ImageTokenizer.from_pretrained(config.image_tokenizer, device=config.device)
        layout = TokenLayout(config.num_image_tokens or self.image.num_codes, config.num_text_tokens or self.text.vocab_size)
        self.layout = UnifiedTokenizer(self.text, self.image, layout).layout  # validates the sizes
        self.size = config.image_size or self.image.image_size  # images are decoded at this side ...
        self.side = config.crop or self.size  # ... and the model sees this side (a crop's window of codes with --crop)
        ds = self.image.downsample
        if config.crop is not None:
            if config.crop <= 0 or config.crop % (2 * ds):
                raise DataError(f"--crop {config.crop} must be a positive multiple of {2 * ds} (the VQ-VAE's downsample "
                                f"{ds}, x2 for the half-size low-res crop)")
            if config.crop > self.size:
                raise DataError(f"--crop {config.crop} is larger than the {self.size} px images; use --crop <= "
                                f"--image-size (e.g. --image-size {2 * config.crop} --crop {config.crop})")
            if self.size % (2 * ds):
                raise DataError(f"--image-size {self.size} must be a multiple of {2 * ds} to cut --crop windows from "
                                f"its code grids (the VQ-VAE's downsample {ds}, x2 for the low-res grid)")
        elif self.size % ds or (config.task == "superres" and self.size % (2 * ds)):
            raise DataError(f"--image-size {self.size} must be a multiple of {ds} (x2 for superres)")
        grid = self.side // ds
        codes = grid * grid + ((grid // 2) ** 2 if config.task == "superres" else 0)
        fixed = templates.template(config.task).length(0, codes)  # commands + codes
        if config.seq_len <= fixed:
            raise DataError(f"--seq-len {config.seq_len} leaves no room for text beside {codes} image codes; "
                            f"use at least {fixed + 1} (e.g. {fixed + 16})")
        self.dtype = storage_dtype(self.layout.vocab_size)
        self.progress_dir = os.path.join(config.out, PROGRESS_DIR)
        if config.num_parts > 1:
            self.progress_dir = os.path.join(self.progress_dir, f"part-{config.part:05d}-of-{config.num_parts:05d}")
        self.prefix = part_prefix(config.prefix, config.share)
        self.logged: dict[str, int] = {}

    def settings(self) -> dict[str, Any]:
        """The settings that determine the output bytes (a resumed run must match them)."""
        c = self.config
        return {
            "inputs": [os.path.abspath(p) for p in c.inputs], "prefix": c.prefix, "seq_len": c.seq_len, "task": c.task,
            "samples_per_shard": c.samples_per_shard, "image_size": self.side, "caption_column": c.caption_column,
            "image_column": c.image_column, "layout": self.layout.to_dict(),
            "text_tokenizer": self.text.fingerprint(), "image_tokenizer": self.image.fingerprint(),
            **({"num_parts": c.num_parts} if c.num_parts > 1 else {}),
            **({"styles": c.styles.settings()} if c.styles is not None else {}),
            **({"crop": {"image_size": self.size, "seed": c.crop_seed, "per_image": c.crops_per_image,
                         "windows": "code-aligned"}}
               if c.crop is not None else {}),
        }

    def bad(self, kind: str, key: str, why: str) -> None:
        """Log a skipped item (the first few of each kind; all are counted)."""
        self.logged[kind] = self.logged.get(kind, 0) + 1
        if self.logged[kind] <= _LOGGED_PER_KIND:
            logger.warning("skipped %s sample %r: %s", kind, key, why)

    def corners(self, item: RawItem) -> list[tuple[int, int]]:
        """(top, left) pixel corners of the --crops-per-image crops of one image: random points of the low-res code
        grid (multiples of 2 x the VQ-VAE's downsample), depending only on --crop-seed and the key."""
        c, step = self.config, 2 * self.image.downsample
        assert c.crop is not None
        digest = hashlib.sha256(item.key.encode("utf-8")).digest()
        rng = np.random.default_rng([c.crop_seed, int.from_bytes(digest[:8], "little")])
        cells = rng.integers(0, (self.size - c.crop) // step + 1, size=(c.crops_per_image, 2))  # [n, (top, left)]
        return [(int(top) * step, int(left) * step) for top, left in cells]

    def encode(self, ok: list[tuple[RawItem, np.ndarray]], stats: dict[str, int]) -> list[TokenRecord]:
        """VQ-encode decoded images in batches and build template sequences. With --crop a sequence holds a window
        of the whole image's code grids (high: the image's, low: its 2x downsample's), the window a sliding-window
        magnification reads and writes, rather than the codes of a crop encoded on its own (which differ at its
        borders)."""
        records: list[TokenRecord] = []
        seen: set[str] = set()
        ds, superres = self.image.downsample, self.config.task == "superres"
        for start in range(0, len(ok), self.config.batch_size):
            batch = ok[start : start + self.config.batch_size]
            images = [Image.fromarray(image) for _, image in batch]
            codes = self.image.encode(images, image_size=self.size).numpy()  # [b, G, G]
            low = self.image.encode(images, image_size=self.size // 2).numpy() if superres else None
            for i, (item, _) in enumerate(batch):
                caption = item.caption.strip()
                text_ids = self.text.encode(caption)
                if self.config.crop is None:
                    views = [(item.key, codes[i], None if low is None else low[i], None)]
                else:  # --crop implies superres: both grids exist
                    assert low is not None
                    w, many = self.config.crop // ds, self.config.crops_per_image > 1
                    views = [(f"{item.key}_crop{j}" if many else item.key, _window(codes[i], top, left, ds, w),
                              _window(low[i], top, left, 2 * ds, w // 2), [left, top, self.config.crop])
                             for j, (top, left) in enumerate(self.corners(item))]
                for name, high_codes, low_codes, box in views:
                    seq = self.build(text_ids, high_codes, low_codes)
                    stats["truncated"] += int(seq.text_truncated > 0)
                    stats["truncated_pieces"] += seq.text_truncated
                    key = safe_key(name)
                    while key in seen:
                        key += "_dup"
                    seen.add(key)
                    meta = {"source": item.key, "task": self.config.task, "text_len": len(text_ids),
                            "text_truncated": seq.text_truncated, **({"crop": box} if box is not None else {})}
                    records.append(TokenRecord(key, seq.tokens, seq.position_ids, caption, meta))
        return records

    def build(self, text_ids: list[int], codes: np.ndarray, low: np.ndarray | None) -> templates.TemplateSequence:
        """The sequence of one sample for the configured task."""
        task, lay, n = self.config.task, self.layout, self.config.seq_len
        if task == "text2image":
            return templates.text_to_image(lay, text_ids, codes, n)
        if task == "image2text":
            return templates.image_to_text(lay, codes, text_ids, n)
        return templates.super_resolution(lay, text_ids, low, codes, n)


def _window(grid: np.ndarray, top: int, left: int, cell: int, size: int) -> np.ndarray:
    """The size x size codes of a code grid (cell px per code) whose top-left corner is at pixel (top, left)."""
    return np.ascontiguousarray(grid[top // cell : top // cell + size, left // cell : left // cell + size])


def _chunks(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    """Consecutive lists of `size` items; shard k always holds the items of chunk k (resumable)."""
    chunk: list[RawItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _submit(run: _Run, executor: Executor | None, chunk: list[RawItem], stats: dict[str, int]) -> list:
    """Start decoding a chunk's usable items; returns [(item, future or result)]."""
    jobs = []
    for item in chunk:
        if item.error is not None:
            stats["unreadable"] += 1
            run.bad("unreadable", item.key, item.error)
        elif not item.caption.strip():
            stats["empty_caption"] += 1
            run.bad("empty-caption", item.key, "caption is empty")
        else:
            task = (item.image_path, item.image_bytes, run.size)
            jobs.append((item, executor.submit(decode_task, task) if executor else decode_task(task)))
    return jobs


def _finish(run: _Run, index: int, jobs: list, stats: dict[str, int]) -> ShardInfo:
    """Wait for a chunk's decoding, encode it and write its shard and progress record."""
    ok: list[tuple[RawItem, np.ndarray]] = []
    for item, job in jobs:
        image, error = job.result() if isinstance(job, Future) else job
        if error is not None or image is None:
            stats["unreadable"] += 1
            run.bad("unreadable", item.key, error or "no image")
        else:
            ok.append((item, image))
    records = run.encode(ok, stats)
    info = write_shard(run.config.out, run.prefix, index, records, run.config.seq_len, run.dtype)
    stats["written"] = info.samples
    record = {"shard": asdict(info), "stats": stats}
    _write_json(os.path.join(run.progress_dir, shard_name(run.prefix, index) + ".json"), record)
    return info


def _write_json(path: str, data: dict) -> None:
    """Write JSON atomically."""
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)


def _check_settings(run: _Run) -> Manifest | None:
    """Refuse an --out made with other settings; return the finished manifest if the job is already done."""
    settings, out = run.settings(), run.config.out
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        manifest = Manifest.load(out)
        if manifest.settings != settings:
            raise DataError(f"{out} already holds a dataset made with other settings; use a new --out or delete it")
        return manifest
    others = other_splits(out, run.config.num_parts, PROGRESS_DIR)
    if others:
        raise DataError(f"{out} holds a run split into another number of parts ({others[0]}); finish it with the same "
                        "--num-parts / number of ranks, or use a new --out")
    if run.config.num_parts > 1 and os.path.exists(part_file(out, run.config.share)):
        manifest = Manifest.load(part_file(out, run.config.share))
        if manifest.settings != settings:
            raise DataError(f"{out} already holds a part made with other settings; use a new --out or delete it")
        return manifest
    path = os.path.join(run.progress_dir, "settings.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f) != settings:
                raise DataError(f"{out} holds an unfinished run with other settings; use a new --out or delete it")
    else:
        os.makedirs(run.progress_dir, exist_ok=True)
        _write_json(path, settings)
    return None


def _done_shard(run: _Run, index: int) -> dict | None:
    """The progress record of shard `index` if it was completed by an earlier run."""
    name = shard_name(run.prefix, index)
    record = os.path.join(run.progress_dir, name + ".json")
    if os.path.exists(record) and os.path.exists(os.path.join(run.config.out, name)):
        with open(record, encoding="utf-8") as f:
            return json.load(f)
    return None


def preprocess(config: PreprocessConfig, log: Callable[[str], None] = print) -> Manifest:
    """Tokenize every input pair into shards under config.out; continues an interrupted run; returns the manifest."""
    if config.styles is not None:
        counts = check_style_inputs(config.inputs, config.styles)
        log("preprocess: style captions " + ", ".join(f"{config.styles.caption(k)!r} x {n}" for k, n in counts.items()))
    os.makedirs(config.out, exist_ok=True)
    run = _Run(config, log)
    finished = _check_settings(run)
    if finished is not None:
        what = f"part {config.part} of {config.num_parts} of " if config.num_parts > 1 else ""
        log(f"{what}{config.out} is already complete ({finished.num_samples} samples); nothing to do")
        return _finish_parts(run, finished, log)
    inputs = share(input_files(config.inputs), config.share)
    started, total, shards = time.time(), Stats(), []
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(config.workers, mp_context=context) if config.workers > 0 else None
    pending: tuple[int, list, dict[str, int]] | None = None
    try:
        with progress(None, "preprocess", "sample") as bar:
            items = iter_inputs(inputs, config.caption_column, config.image_column)
            if config.styles is not None:
                items = with_style_captions(items, config.styles)
            for index, chunk in enumerate(_chunks(items, config.samples_per_shard)):
                done = _done_shard(run, index)
                if done is not None:
                    shards.append(ShardInfo(**done["shard"]))
                    total.add(done["stats"])
                    bar.update(len(chunk))
                    continue
                stats = {k: 0 for k in asdict(Stats())}
                stats["read"] = len(chunk)
                jobs = _submit(run, executor, chunk, stats)  # decode this chunk while the previous one encodes
                if pending is not None:
                    shards.append(_finish(run, *pending))
                    total.add(pending[2])
                    bar.update(pending[2]["read"])
                pending = (index, jobs, stats)
            if pending is not None:
                shards.append(_finish(run, *pending))
                total.add(pending[2])
                bar.update(pending[2]["read"])
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    if not shards and config.num_parts == 1:
        raise DataError(f"the inputs {', '.join(config.inputs)} hold no samples; check the paths")
    shards.sort(key=lambda s: s.name)
    manifest = Manifest(
        task=config.task, seq_len=config.seq_len, dtype=run.dtype, layout=run.layout.to_dict(),
        layout_fingerprint=run.layout.fingerprint(), text_tokenizer_fingerprint=run.text.fingerprint(),
        image_tokenizer_fingerprint=run.image.fingerprint(), shards=shards,
        stats={**asdict(total), "seconds": round(time.time() - started, 2)}, settings=run.settings(),
        root=os.path.abspath(config.out),
    )
    if config.num_parts == 1:
        manifest.save(config.out)
    else:
        write_part(config.out, config.share, manifest)
    shutil.rmtree(run.progress_dir, ignore_errors=True)
    crops = f" ({config.crops_per_image} crop(s) of {config.crop} px per image)" if config.crop is not None else ""
    log(f"preprocess: {total.summary()}{crops}; {len(shards)} shard(s) in {config.out}"
        + (f" (part {config.part} of {config.num_parts})" if config.num_parts > 1 else ""))
    return _finish_parts(run, manifest, log)


def _finish_parts(run: _Run, manifest: Manifest, log: Callable[[str], None]) -> Manifest:
    """With parts: write dataset.json when every part is done (waiting for them if asked); else `manifest`."""
    c = run.config
    if c.num_parts == 1 or os.path.exists(os.path.join(c.out, MANIFEST_NAME)):
        return manifest
    try:  # the shared progress folder, once no part has work in it
        os.rmdir(os.path.join(c.out, PROGRESS_DIR))
    except OSError:
        pass
    joined = finish_parts(c.out, c.num_parts, c.wait_for_parts, log)
    if joined is not None:
        log(f"preprocess: all {c.num_parts} parts done; {joined.num_samples} samples in {len(joined.shards)} "
            f"shard(s) listed in {os.path.join(c.out, MANIFEST_NAME)}")
    return joined or manifest
