"""The streaming loader: token shards -> batches, split by data-parallel rank and worker, resumable exactly."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tokenization.layout import TokenLayout

from .batch import collate
from .errors import DataError
from .remote import shard_file_name
from .shards import Manifest, TokenSample
from .stream import DatasetSource, StreamSpec, WorkerState, WorkerStream, check_spec

STATE_VERSION = 1
SPLITS = ("all", "train", "val")

# A per-sample rewrite applied before collate (e.g. megatron_cogview/finetune/caption_model.py reorders every
# sequence): a pure function of the sample, so the resume position is that of the stream; picklable for worker
# processes.
SampleTransform = Callable[[TokenSample, TokenLayout], TokenSample]


@dataclass(frozen=True)
class LoaderConfig:
    """How to read token shards into batches (per data-parallel rank)."""

    batch_size: int
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes; 0 reads in the calling process
    shuffle_shards: bool = True  # reshuffle the shard order every epoch (seeded)
    shuffle_buffer: int = 1000  # samples in the shuffle buffer; 0 or 1 keeps shard order
    resampled: bool = False  # draw shards with replacement forever instead of epochs
    num_epochs: int | None = None  # epoch mode: stop after this many epochs; None repeats forever
    drop_last: bool = False  # drop a worker's final partial batch when a finite stream ends
    max_faults: int = 100  # skipped shards/samples tolerated per rank before raising DataError
    split: str = "all"  # "train": all but the last val_shards shards; "val": the last val_shards
    val_shards: int = 0
    prefetch_factor: int = 2
    multiprocessing_context: str | None = None  # e.g. "spawn"; None is torch's default
    timeout: float = 0.0  # seconds to wait for a worker batch before failing (0: forever)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"batch_size {self.batch_size} must be >= 1")
        if self.num_workers < 0:
            raise DataError(f"num_workers {self.num_workers} must be >= 0")
        if self.split not in SPLITS:
            raise DataError(f"split {self.split!r} is unknown; use one of {', '.join(SPLITS)}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise DataError(f"num_epochs {self.num_epochs} must be >= 1 or None (endless)")
        if self.val_shards < 0 or (self.split == "val" and self.val_shards == 0):
            raise DataError("the validation split needs val_shards >= 1; set val_shards")


def split_shards(num_shards: int, split: str, val_shards: int) -> list[int]:
    """Shard indices of a split: validation is the last `val_shards` shards, training the rest (disjoint)."""
    if val_shards >= num_shards and split != "all":
        raise DataError(f"val_shards {val_shards} leaves no training shards out of {num_shards}; lower val_shards")
    cut = num_shards - val_shards
    return {"all": list(range(num_shards)), "train": list(range(cut)), "val": list(range(cut, num_shards))}[split]


class _TokenStreamDataset(IterableDataset):
    """Per-worker batches of one rank's stream; each batch carries its worker's resumable state."""

    def __init__(self, spec: StreamSpec, layout: dict, config: LoaderConfig, states: list[dict | None], rotation: int,
                 transform: SampleTransform | None = None):
        super().__init__()
        self.spec, self.layout, self.config, self.states, self.rotation = spec, layout, config, states, rotation
        self.transform = transform

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % self.spec.num_workers  # DataLoader starts its round-robin at 0
        saved = self.states[logical]
        stream = WorkerStream(self.spec, logical, WorkerState.from_dict(saved) if saved else None)
        layout = TokenLayout.from_dict(self.layout)
        batch: list = []
        for sample in stream:
            batch.append(sample if self.transform is None else self.transform(sample, layout))
            if len(batch) == self.config.batch_size:
                yield self._emit(batch, layout, logical, stream)
                batch = []
        if batch and not self.config.drop_last:
            yield self._emit(batch, layout, logical, stream)

    def _emit(self, samples: list, layout: TokenLayout, logical: int, stream: WorkerStream) -> dict[str, Any]:
        """Collate and tag a batch with the worker state reached after it."""
        out = collate(samples)
        if get_worker_info() is not None:  # numpy arrays cross the pipe in one message; tensors would each
            out = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}  # need a shared fd
        out["_worker"], out["_state"] = logical, stream.state.to_dict()
        return out


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """DataLoader collate_fn: batches arrive collated (numpy from workers; turned into tensors by the loader)."""
    return batch


class StreamingLoader:
    """Iterates batch dicts for one data-parallel rank; `state_dict()` restores the exact order mid-epoch."""

    def __init__(
        self,
        datasets: str | Sequence[str],
        config: LoaderConfig,
        *,
        dp_rank: int,
        dp_size: int,
        weights: Sequence[float] | None = None,
        text_tokenizer_fingerprint: str | None = None,
        image_tokenizer_fingerprint: str | None = None,
        layout_fingerprint: str | None = None,
        seq_len: int | None = None,
        transform: SampleTransform | None = None,
    ) -> None:
        paths = [datasets] if isinstance(datasets, str) else list(datasets)
        if not paths:
            raise DataError("no datasets given; pass at least one folder made by `cogview preprocess`")
        weights = list(weights) if weights is not None else [1.0] * len(paths)
        if len(weights) != len(paths):
            raise DataError(f"{len(weights)} weights for {len(paths)} datasets; give one weight per dataset")
        manifests = [Manifest.load(p) for p in paths]
        for m in manifests:
            m.check(text_tokenizer_fingerprint=text_tokenizer_fingerprint,
                    image_tokenizer_fingerprint=image_tokenizer_fingerprint,
                    layout_fingerprint=layout_fingerprint, seq_len=seq_len)
            manifests[0].check_same_tokens(m)
        sources = tuple(
            DatasetSource.from_manifest(m, split_shards(len(m.shards), config.split, config.val_shards), float(w))
            for m, w in zip(manifests, weights)
        )
        self.config, self.manifests, self.transform = config, manifests, transform
        self.spec = StreamSpec(
            sources, config.seed, dp_rank, dp_size, max(1, config.num_workers), config.shuffle_shards,
            config.shuffle_buffer, config.resampled, config.num_epochs, config.max_faults,
        )
        check_spec(self.spec)
        self.layout = TokenLayout.from_dict(manifests[0].layout)
        self.reset()

    def reset(self) -> None:
        """Start again from the first batch of epoch 0."""
        self._states: list[dict | None] = [None] * self.spec.num_workers
        self._next = 0  # logical worker whose batch comes next
        self._batches = 0

    @property
    def faults(self) -> int:
        """Shards and samples skipped so far on this rank."""
        return sum(s["faults"] for s in self._states if s)

    @property
    def epoch(self) -> int:
        """The furthest epoch (round) any worker of this rank has reached in the first dataset."""
        return max((s["positions"][0][0] for s in self._states if s), default=0)

    @property
    def num_samples(self) -> int:
        """Samples per epoch over all dp ranks in this split (each rank reads about num_samples / dp_size)."""
        return sum(sum(s.counts) for s in self.spec.sources)

    @property
    def batches(self) -> int:
        """Batches delivered since the start (or since the state that was loaded)."""
        return self._batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from where the last delivered batch left off; breaking out early loses nothing."""
        dataset = _TokenStreamDataset(self.spec, self.layout.to_dict(), self.config, list(self._states), self._next,
                                      self.transform)
        workers = self.config.num_workers
        loader = DataLoader(
            dataset, batch_size=None, collate_fn=_as_is, num_workers=workers, timeout=self.config.timeout,
            prefetch_factor=self.config.prefetch_factor if workers else None,
            multiprocessing_context=self.config.multiprocessing_context if workers else None,
        )
        batches = iter(loader)
        try:
            for batch in batches:
                batch = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in batch.items()}
                worker = int(batch.pop("_worker"))
                self._states[worker] = batch.pop("_state")
                self._next = (worker + 1) % self.spec.num_workers
                self._batches += 1
                if self.faults > self.config.max_faults:
                    raise DataError(f"more than {self.config.max_faults} data faults on rank {self.spec.dp_rank}; "
                                    "repair the data or raise max_faults")
                yield batch
        except DataError as e:  # from a worker: torch wraps the message in a traceback
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise DataError(lines[-1].split("DataError: ", 1)[-1] if lines else str(e)) from None
        finally:  # stop worker processes now, not when the garbage collector finds the iterator
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _identity(self) -> dict[str, Any]:
        """What a saved state must match to be replayed exactly."""
        sources = [[[shard_file_name(p) for p in s.paths], list(s.counts), s.weight] for s in self.spec.sources]
        digest = hashlib.sha256(json.dumps(sources).encode()).hexdigest()
        spec = asdict(self.spec)
        spec.pop("sources")
        spec.pop("max_faults")
        return {**spec, "batch_size": self.config.batch_size, "drop_last": self.config.drop_last, "sources": digest}

    def state_dict(self) -> dict[str, Any]:
        """Plain-data position of this rank's stream (save it with the checkpoint, one per dp rank)."""
        return {"version": STATE_VERSION, "identity": self._identity(), "workers": copy.deepcopy(self._states),
                "next_worker": self._next, "batches": self._batches}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue exactly where `state` was saved; with strict=False a changed setup restarts at the next epoch."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')} is not {STATE_VERSION}; start the data afresh")
        if state["identity"] == self._identity():
            self._states = copy.deepcopy(list(state["workers"]))
            self._next, self._batches = int(state["next_worker"]), int(state["batches"])
            return
        changed = sorted(k for k, v in self._identity().items() if state["identity"].get(k) != v)
        if strict:
            raise DataError(f"loader state was saved with different {', '.join(changed)}; resume with the same data "
                            "settings, or load with strict=False to restart at the next epoch")
        epochs = [max((p[0] for p in s["positions"]), default=0) for s in state["workers"] if s]
        self.reset()
        start = max(epochs, default=-1) + 1
        fresh = WorkerState(positions=[])
        for w in range(self.spec.num_workers):
            fresh_dict = fresh.to_dict()
            fresh_dict["positions"] = [[start, 0] for _ in self.spec.sources]
            self._states[w] = fresh_dict


def build_loader(
    datasets: str | Sequence[str], dp_rank: int, dp_size: int, **kwargs: Any
) -> StreamingLoader:
    """A StreamingLoader from LoaderConfig fields, manifest checks and a sample transform as keyword arguments."""
    check_keys = ("weights", "text_tokenizer_fingerprint", "image_tokenizer_fingerprint", "layout_fingerprint", "seq_len", "transform")
    checks = {k: kwargs.pop(k) for k in check_keys if k in kwargs}
    return StreamingLoader(datasets, LoaderConfig(**kwargs), dp_rank=dp_rank, dp_size=dp_size, **checks)
