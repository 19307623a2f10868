"""Learning-rate schedule: linear warm-up, then cosine/linear decay to a floor; steps only on applied updates."""
from __future__ import annotations

import math
from typing import Any

import torch

from megatron_cogview.config import TrainConfig
from megatron_cogview.training.skips import SkipGate


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer update number `step` (0-based)."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warm = cfg.warmup_steps
    if warm > 0 and step < warm:
        return peak * (step + 1) / warm
    if cfg.lr_decay_style == "constant":
        return peak
    span = max(1, cfg.train_iters - warm)
    progress = min(1.0, (step - warm) / span)
    if cfg.lr_decay_style == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets the optimizer's lr; advances only after updates that were applied (DeepSpeed does not call
    step() after an overflow, and the closed gate of a skipped non-finite loss makes step() a no-op)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, gate: SkipGate | None = None) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.gate = gate or SkipGate()
        self.applied_steps = 0
        self._set(lr_at(0, cfg))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

    def step(self, *args: Any, **kwargs: Any) -> None:
        if self.gate.skip:
            return
        self.applied_steps += 1
        self._set(lr_at(self.applied_steps, self.cfg))

    def state_dict(self) -> dict[str, Any]:
        return {"applied_steps": self.applied_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied_steps = int(state["applied_steps"])
        self._set(lr_at(self.applied_steps, self.cfg))
