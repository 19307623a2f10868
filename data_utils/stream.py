"""Deterministic, resumable sample streams: shard plans per (epoch, rank, worker), shuffle buffer, mixing."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from .errors import DataError
from .remote import exists, iter_shard, shard_file_name
from .shards import Manifest, TokenSample, decode_sample
from .wds import ShardReadError

logger = logging.getLogger("data_utils")

_MIX_BLOCK = 4096
_SALT_SHARDS, _SALT_BUFFER, _SALT_MIX, _SALT_RESAMPLE = 11, 12, 13, 14


@dataclass(frozen=True)
class DatasetSource:
    """One dataset's usable shards (absolute paths and sample counts) and its mixing weight."""

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    seq_len: int
    weight: float = 1.0

    @classmethod
    def from_manifest(cls, manifest: Manifest, shard_indices: Sequence[int], weight: float = 1.0) -> "DatasetSource":
        """The shards `shard_indices` of a manifest (empty shards are dropped)."""
        paths = manifest.shard_paths()
        keep = [i for i in shard_indices if manifest.shards[i].samples > 0]
        return cls(tuple(paths[i] for i in keep), tuple(manifest.shards[i].samples for i in keep), manifest.seq_len, weight)


@dataclass(frozen=True)
class StreamSpec:
    """Everything that fixes the order of samples a (rank, worker) stream yields."""

    sources: tuple[DatasetSource, ...]
    seed: int
    dp_rank: int
    dp_size: int
    num_workers: int  # logical workers per rank (>= 1)
    shuffle_shards: bool = True
    shuffle_buffer: int = 1000
    resampled: bool = False
    num_epochs: int | None = None  # None: repeat forever
    max_faults: int = 100


@dataclass
class Position:
    """How far one source's stream has got: round (epoch) and raw samples taken from it in that round."""

    epoch: int = 0
    consumed: int = 0


@dataclass
class WorkerState:
    """Resumable state of one logical worker's mixed stream."""

    mixed: int = 0  # samples drawn by the mixer so far
    positions: list[Position] = field(default_factory=list)
    faults: int = 0
    done: bool = False

    def to_dict(self) -> dict:
        """Plain-data form for checkpoints."""
        return {
            "mixed": self.mixed, "faults": self.faults, "done": self.done,
            "positions": [[p.epoch, p.consumed] for p in self.positions],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "WorkerState":
        """Inverse of to_dict."""
        return cls(int(data["mixed"]), [Position(int(e), int(c)) for e, c in data["positions"]],
                   int(data["faults"]), bool(data["done"]))


def round_shards(spec: StreamSpec, source: int, epoch: int, worker: int) -> list[int]:
    """Indices of the shards a (rank, worker) reads from `source` in round `epoch`, in order."""
    n = len(spec.sources[source].paths)
    if spec.resampled:
        draws = max(1, math.ceil(n / (spec.dp_size * spec.num_workers)))
        rng = np.random.default_rng([spec.seed, _SALT_RESAMPLE, source, epoch, spec.dp_rank, worker])
        return [int(i) for i in rng.integers(0, n, size=draws)]
    order = np.arange(n)
    if spec.shuffle_shards:
        order = np.random.default_rng([spec.seed, _SALT_SHARDS, source, epoch]).permutation(n)
    rank_shards = order[spec.dp_rank :: spec.dp_size]  # split by data-parallel rank first ...
    return [int(i) for i in rank_shards[worker :: spec.num_workers]]  # ... then by worker


def check_spec(spec: StreamSpec) -> None:
    """Fail fast on settings that would hang or read nothing."""
    if not 0 <= spec.dp_rank < spec.dp_size:
        raise DataError(f"data-parallel rank {spec.dp_rank} is outside 0..{spec.dp_size - 1}; pass a valid dp rank")
    if len(spec.sources) > 1 and spec.num_epochs is not None and not spec.resampled:
        raise DataError("mixing several datasets needs an endless stream; leave num_epochs unset or use resampled mode")
    for source in spec.sources:
        if not source.paths:
            raise DataError("a dataset has no non-empty shards for this split; check val_shards or re-run preprocess")
        missing = [p for p in source.paths if not exists(p)]
        if missing:
            raise DataError(f"{len(missing)} shard(s) missing, e.g. {missing[0]}; restore them or re-run `cogview preprocess`")
        need = spec.dp_size * spec.num_workers
        if not spec.resampled and len(source.paths) < need:
            raise DataError(
                f"{len(source.paths)} shard(s) in {os.path.dirname(source.paths[0])} but {spec.dp_size} dp rank(s) x "
                f"{spec.num_workers} worker(s) = {need} readers; use fewer workers, resampled mode, or more shards "
                "(smaller --samples-per-shard)"
            )


class WorkerStream:
    """The samples of one logical worker on one rank, resumable from a WorkerState."""

    def __init__(self, spec: StreamSpec, worker: int, state: WorkerState | None = None) -> None:
        self.spec, self.worker = spec, worker
        self.state = state or WorkerState(positions=[Position() for _ in spec.sources])
        if len(self.state.positions) != len(spec.sources):
            raise DataError("loader state has a different number of datasets; resume with the same datasets")
        self._skip = [p.consumed for p in self.state.positions]  # raw samples to replay silently
        for p in self.state.positions:
            p.consumed = 0
        weights = np.array([s.weight for s in spec.sources], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise DataError(f"dataset weights {weights.tolist()} must be >= 0 with a positive sum")
        self._p = weights / weights.sum()
        self._mix_cache: tuple[int, np.ndarray] | None = None

    def _choose(self, n: int) -> int:
        """The source the mixer picks for its n-th draw (a pure function of n)."""
        if len(self._p) == 1:
            return 0
        block = n // _MIX_BLOCK
        if self._mix_cache is None or self._mix_cache[0] != block:
            rng = np.random.default_rng([self.spec.seed, _SALT_MIX, self.spec.dp_rank, self.worker, block])
            self._mix_cache = (block, rng.choice(len(self._p), size=_MIX_BLOCK, p=self._p))
        return int(self._mix_cache[1][n % _MIX_BLOCK])

    def __iter__(self) -> Iterator[TokenSample]:
        """Yield decoded samples forever (or until the last epoch), updating self.state as it goes."""
        iters = [self._source_iter(i) for i in range(len(self.spec.sources))]
        while not self.state.done:
            source = self._choose(self.state.mixed)
            sample = next(iters[source], None)
            if sample is None:  # only a finite single-source stream ends
                self.state.done = True
                return
            self.state.mixed += 1
            yield sample

    def _source_iter(self, source: int) -> Iterator[TokenSample]:
        """Samples of one source across rounds, skipping what the restored state already consumed."""
        pos = self.state.positions[source]
        seq_len = self.spec.sources[source].seq_len
        while self.spec.num_epochs is None or self.spec.resampled or pos.epoch < self.spec.num_epochs:
            for path, raw in self._shuffled(source, pos):
                pos.consumed += 1
                if pos.consumed <= self._skip[source]:
                    continue
                try:
                    sample = decode_sample(raw, seq_len)
                except (ValueError, KeyError, TypeError, OSError) as e:
                    self._fault(f"bad sample {raw.get('__key__')!r} in {path} skipped ({e})", source)
                    continue
                yield TokenSample(f"{_stem(path)}/{sample.key}", sample.tokens, sample.position_ids,
                                  sample.caption, sample.meta)
            # a round that yields nothing has logged faults, so max_faults ends an endless broken stream
            pos.epoch, pos.consumed, self._skip[source] = pos.epoch + 1, 0, 0

    def _shuffled(self, source: int, pos: Position) -> Iterator[tuple[str, dict]]:
        """Raw samples of this round's shards through a seeded shuffle buffer (flushed each round)."""
        size = self.spec.shuffle_buffer
        rng = np.random.default_rng([self.spec.seed, _SALT_BUFFER, source, pos.epoch, self.spec.dp_rank, self.worker])
        buffer: list[tuple[str, dict]] = []
        for item in self._raw(source, pos):
            if size <= 1:
                yield item
                continue
            if len(buffer) < size:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            out, buffer[j] = buffer[j], item
            yield out
        for j in rng.permutation(len(buffer)):
            yield buffer[int(j)]

    def _raw(self, source: int, pos: Position) -> Iterator[tuple[str, dict]]:
        """Raw tar samples of this round's shards in plan order; read faults are logged and skipped."""
        src = self.spec.sources[source]
        for shard in round_shards(self.spec, source, pos.epoch, self.worker):
            path, expected, seen = src.paths[shard], src.counts[shard], 0
            try:
                for raw in iter_shard(path):
                    seen += 1
                    yield path, raw
            except ShardReadError as e:
                self._fault(f"shard {path} is truncated or corrupt after key {e.key!r} ({e.cause}); "
                            f"kept {seen} of {expected} samples", source)
                continue
            except FileNotFoundError:  # unlike a corrupt shard, a missing one means the data moved: stop
                raise DataError(f"shard {path} listed in dataset.json is missing (deleted or moved during training?): "
                                "restore it and relaunch with --load to resume from the last checkpoint") from None
            except OSError as e:
                self._fault(f"shard {path} cannot be read ({e}); skipped", source)
                continue
            if seen < expected:
                self._fault(f"shard {path} ended after {seen} of {expected} samples", source)

    def _fault(self, message: str, source: int) -> None:
        """Count and log a skipped sample or shard, unless it is being replayed; too many is an error."""
        pos = self.state.positions[source]
        if pos.consumed < self._skip[source]:
            return  # already counted before the state was saved
        self.state.faults += 1
        logger.warning("data fault %d (rank %d, worker %d): %s", self.state.faults, self.spec.dp_rank,
                       self.worker, message)
        if self.state.faults > self.spec.max_faults:
            raise DataError(f"more than {self.spec.max_faults} data faults on rank {self.spec.dp_rank}; last: "
                            f"{message}; repair the data or raise max_faults")


def _stem(path: str) -> str:
    """Shard file name without folder and .tar (the same for a local shard and its URL)."""
    name = shard_file_name(path)
    return name[:-4] if name.endswith(".tar") else name
