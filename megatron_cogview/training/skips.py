"""Skipped optimizer steps: the gate that makes one engine.step() a no-op, and the count of skips by cause.

A non-finite loss on any micro-batch of any rank skips the whole step. The loop still runs every
micro-batch's backward (so DeepSpeed's gradient reduction for ZeRO 0/1/2 stays in step on every rank)
and then calls engine.step() with the gate closed: the optimizer and the LR schedule leave parameters,
optimizer state and schedule untouched, and DeepSpeed discards the accumulated gradients as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal

import torch

SkipKind = Literal["nonfinite_loss", "overflow"]

MIN_SCALE_MESSAGE = "loss scale already at minimum"  # DeepSpeed's fp16 loss scaler raises a bare Exception with it


@dataclass
class SkipGate:
    """Closed (skip=True) by the loop around the engine.step() of a step that must not be applied."""

    skip: bool = False


class GatedAdamW(torch.optim.AdamW):
    """torch AdamW whose step() does nothing while its gate is closed."""

    def __init__(self, params: Iterable[Any], gate: SkipGate, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.gate = gate

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if self.gate.skip:
            return None
        return super().step(closure)


def is_min_loss_scale_error(error: BaseException) -> bool:
    """True for DeepSpeed's exception when the fp16 loss scale cannot be lowered any more."""
    return MIN_SCALE_MESSAGE in str(error)


@dataclass
class SkipCounter:
    """Skipped steps by cause, and the current run of consecutive skips (any cause)."""

    nonfinite_loss: int = 0
    overflow: int = 0
    consecutive: int = 0

    @property
    def total(self) -> int:
        return self.nonfinite_loss + self.overflow

    def record(self, kind: SkipKind | None, counts_toward_limit: bool = True) -> None:
        """One step: applied (kind None) resets the run; a skip adds to its cause and, if it counts, to the run.
        An fp16 loss-scale calibration skip (counts_toward_limit False) neither resets nor extends the run."""
        if kind is None:
            self.consecutive = 0
            return
        if kind == "nonfinite_loss":
            self.nonfinite_loss += 1
        else:
            self.overflow += 1
        if counts_toward_limit:
            self.consecutive += 1

    def state_dict(self) -> dict[str, int]:
        return {"nonfinite_loss": self.nonfinite_loss, "overflow": self.overflow, "consecutive": self.consecutive}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, legacy_total: int = 0, legacy_consecutive: int = 0) -> "SkipCounter":
        """Restore from a checkpoint (older checkpoints kept only the total and the non-finite run)."""
        if state:
            return cls(int(state["nonfinite_loss"]), int(state["overflow"]), int(state["consecutive"]))
        return cls(nonfinite_loss=0, overflow=legacy_total, consecutive=legacy_consecutive)
