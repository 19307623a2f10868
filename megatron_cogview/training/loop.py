"""The pre-training loop: forward/backward/step on the DeepSpeed engine, skips, validation, checkpoints."""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.distributed as dist

from megatron_cogview.checkpoint.layout import CheckpointMeta
from megatron_cogview.config import ConfigError, ModelConfig, TrainConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.broadcast import broadcast_batch
from megatron_cogview.parallel.grad_norm import grad_norm
from megatron_cogview.parallel.state import ParallelState
from megatron_cogview.training.checkpointing import Resumed, has_checkpoint, load_checkpoint, save_checkpoint
from megatron_cogview.training.engine import loss_scale
from megatron_cogview.training.logger import TrainLogger


class BatchSource(Protocol):
    """An iterable of batch dicts (tokens, labels, position_ids, loss_weights, text_label_mask, keys)
    that can save and restore its exact position."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingAborted(ConfigError):
    """Training stopped on a condition the user must look at (e.g. repeated non-finite losses)."""


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can save and exit cleanly (preemption)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Progress:
    """Counters saved with each checkpoint."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0  # non-finite losses + fp16 overflows
    consecutive_nonfinite: int = 0


@dataclass
class Window:
    """Sums between two log lines (reduced over data-parallel ranks when logged)."""

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(6, dtype=torch.float64))
    steps: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    # sums: [weighted loss, weight, text CE, text count, image CE, image count]
    def add(self, values: torch.Tensor) -> None:
        """Accumulate on the values' device: no host sync until the next log line."""
        self.sums = self.sums.to(values.device) + values.double()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Trainer:
    """Everything one rank needs to run the loop."""

    engine: Any
    model: CogViewModel
    state: ParallelState
    train: TrainConfig
    meta: CheckpointMeta
    source: BatchSource | None  # on tp rank 0 only (peers receive broadcasts)
    valid_source: BatchSource | None = None
    has_validation: bool = False
    logger: TrainLogger | None = None
    progress: Progress = field(default_factory=Progress)
    on_step: Callable[[int, dict[str, Any]], None] | None = None  # test hook: (iteration, batch)

    def __post_init__(self) -> None:
        self.device = _device()
        self._resumed_from = 0  # keep-last-N never deletes a checkpoint at or after it that this run did not write
        self._written: set[int] = set()
        self._iter: Iterator[dict[str, Any]] | None = None
        self._valid_iter: Iterator[dict[str, Any]] | None = None

    # ---- data -------------------------------------------------------------------------------
    def _next_batch(self, valid: bool = False) -> dict[str, Any]:
        batch = None
        if self.state.tp_rank == 0:
            src = self.valid_source if valid else self.source
            if valid:
                self._valid_iter = self._valid_iter or iter(src)
                try:
                    batch = next(self._valid_iter)
                except StopIteration:
                    self._valid_iter = iter(src)
                    batch = next(self._valid_iter)
            else:
                self._iter = self._iter or iter(src)
                batch = next(self._iter)
        return broadcast_batch(batch, self.state, self.device)

    # ---- one step ---------------------------------------------------------------------------
    def _agree(self, nonfinite: bool, stop: bool) -> tuple[bool, bool]:
        flags = torch.tensor([float(nonfinite), float(stop)], device=self.device)
        if self.state.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def train_step(self, window: Window, stop: StopSignal) -> bool:
        """One optimizer step (all micro-batches); returns True when a stop was requested."""
        gas = self.train.gradient_accumulation_steps
        skipped_before = self.engine.skipped_steps
        all_finite, stop_now, norm = True, False, float("nan")
        for micro in range(gas):
            batch = self._next_batch()
            if self.on_step is not None:
                self.on_step(self.progress.iteration, batch)
            out = self.engine(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"],
                              loss_weights=batch["loss_weights"])
            weight = batch["loss_weights"].float().sum()
            loss = out.total / weight.clamp_min(1e-8)
            nonfinite, stop_now = self._agree(not bool(torch.isfinite(loss)), stop.received is not None)
            if nonfinite:
                all_finite = False
                self._report_nonfinite(batch)
                if gas == 1:
                    break  # no backward, no step: parameters, optimizer and LR schedule untouched
                self.engine.step()  # a bad micro-batch is dropped from this step's accumulation
                continue
            self.engine.backward(loss)
            if micro == gas - 1 and self.train.zero_stage == 0 and self.train.precision == "fp32":
                norm = grad_norm(self.model.parameters(), self.state)  # grads are dp-averaged by now
            self.engine.step()
            text = batch["text_label_mask"] & (batch["loss_weights"] > 0)
            image = ~batch["text_label_mask"] & (batch["loss_weights"] > 0)
            ce = out.per_token
            window.add(torch.stack([out.total.detach().float(), weight, (ce * text).sum(), text.sum().float(),
                                    (ce * image).sum(), image.sum().float()]))
            window.tokens += batch["tokens"].numel() * self.state.dp_size
        self.progress.iteration += 1
        self.progress.consumed_samples += self.train.micro_batch_size * gas * self.state.dp_size
        overflow = self.engine.skipped_steps - skipped_before
        if not all_finite and gas == 1:
            self.progress.skipped_steps += 1
            self.progress.consecutive_nonfinite += 1
            if self.progress.consecutive_nonfinite > self.train.max_consecutive_skips > 0:
                raise TrainingAborted(
                    f"{self.progress.consecutive_nonfinite} consecutive steps had a non-finite loss (last at iteration "
                    f"{self.progress.iteration}); lower the learning rate, use bf16, or check the data"
                )
        else:
            self.progress.consecutive_nonfinite = 0
            self.progress.skipped_steps += overflow
        window.steps += 1
        self._norm = norm if not math.isnan(norm) else self._engine_norm()
        return stop_now

    def _engine_norm(self) -> float:
        value = self.engine.get_global_grad_norm()
        return float(value) if value is not None else float("nan")

    def _report_nonfinite(self, batch: dict[str, Any]) -> None:
        if self.logger is not None:
            keys = batch.get("keys", [])
            shown = ", ".join(map(str, keys[:8])) + (" ..." if len(keys) > 8 else "")
            self.logger.info(f"non-finite loss at iteration {self.progress.iteration + 1}: step skipped "
                             f"(samples on rank 0: {shown})")

    # ---- logging, validation, checkpoints ------------------------------------------------------
    def _log(self, window: Window) -> None:
        sums = window.sums.to(self.device)
        if self.state.dp_size > 1:
            dist.all_reduce(sums, group=self.state.dp_group)
        sums = sums.cpu()
        elapsed = time.perf_counter() - window.start
        ms = 1000 * elapsed / max(1, window.steps)
        values: dict[str, Any] = {
            "consumed_samples": self.progress.consumed_samples,
            "lr": float(self.engine.get_lr()[0]),
            "loss": float(sums[0] / sums[1]) if sums[1] > 0 else float("nan"),
            "text_loss": float(sums[2] / sums[3]) if sums[3] > 0 else float("nan"),
            "image_loss": float(sums[4] / sums[5]) if sums[5] > 0 else float("nan"),
            "loss_scale": loss_scale(self.engine),
            "grad_norm": getattr(self, "_norm", float("nan")),
            "skipped_steps": self.progress.skipped_steps,
            "tokens_per_s": window.tokens / max(elapsed, 1e-9),
            "ms_per_step": ms,
            "eta_s": ms / 1000 * (self.train.train_iters - self.progress.iteration),
        }
        values.update(self._flops(values["tokens_per_s"]))
        if self.logger is not None:
            self.logger.metrics(self.progress.iteration, values)

    def _flops(self, tokens_per_s: float) -> dict[str, float]:
        """Model TFLOPs per GPU and MFU (GPU only): 6 N + 12 L h s FLOPs per token (forward + backward)."""
        if not torch.cuda.is_available():
            return {}
        c: ModelConfig = self.model.config
        n = 12 * c.num_layers * c.hidden_size**2 + c.vocab_size * c.hidden_size
        s = c.max_position_embeddings - 1
        per_token = 6 * n + 12 * c.num_layers * c.hidden_size * s
        tflops = per_token * tokens_per_s / self.state.world_size / 1e12
        peak = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "V100": 125.0}
        name = torch.cuda.get_device_name()
        out = {"tflops": tflops}
        for key, value in peak.items():
            if key in name:
                out["mfu"] = tflops / value
        return out

    def evaluate(self) -> float:
        """Mean weighted validation loss over eval_iters batches, reduced over all dp ranks."""
        self.engine.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for _ in range(self.train.eval_iters):
                batch = self._next_batch(valid=True)
                out = self.engine(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"],
                                  loss_weights=batch["loss_weights"])
                sums += torch.stack([out.total.double(), batch["loss_weights"].double().sum()])
        if self.state.dp_size > 1:
            dist.all_reduce(sums, group=self.state.dp_group)
        self.engine.train()
        value = float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
        if self.logger is not None:
            self.logger.metrics(self.progress.iteration, {"validation loss": value}, kind="valid")
        return value

    def save(self) -> None:
        if not self.train.save:
            return
        p = self.progress
        # Under one key: DeepSpeed keeps its own top-level keys (e.g. skipped_steps) out of the client state.
        client = {"iteration": p.iteration, "cogview_progress": {
            "iteration": p.iteration, "consumed_samples": p.consumed_samples, "skipped_steps": p.skipped_steps,
            "train_config": dict(self.train.__dict__), "tensor_parallel_size": self.state.tp_size}}
        rank_state = {
            "rng": self.model.rng.get_states(),
            "loader": self.source.state_dict() if self.source is not None else None,
            "consecutive_nonfinite": p.consecutive_nonfinite,
        }
        meta = CheckpointMeta(model=self.meta.model, tensor_parallel_size=self.state.tp_size, iteration=p.iteration,
                              tokenizers=self.meta.tokenizers, extra=self.meta.extra)
        self._written.add(p.iteration)
        save_checkpoint(self.engine, self.train.save, p.iteration, self.state, meta, client, rank_state,
                        self.train.keep_last, deletable=lambda it: it in self._written or it < self._resumed_from)
        if self.logger is not None:
            self.logger.info(f"saved checkpoint {p.iteration} to {self.train.save}")

    def resume(self) -> bool:
        """Load --load's latest checkpoint (if any); returns True when resumed."""
        if not self.train.load or not has_checkpoint(self.train.load):
            if self.train.load and self.logger is not None:
                self.logger.info(f"no checkpoint in {self.train.load!r} yet: starting from scratch")
            return False
        r: Resumed = load_checkpoint(self.engine, self.train.load, self.state)
        c = r.client["cogview_progress"]
        self.progress = Progress(iteration=int(c["iteration"]), consumed_samples=int(c["consumed_samples"]),
                                 skipped_steps=int(c["skipped_steps"]),
                                 consecutive_nonfinite=int(r.rank_state.get("consecutive_nonfinite", 0)))
        self.model.rng.set_states(r.rank_state["rng"])
        if self.source is not None and r.rank_state.get("loader") is not None:
            self.source.load_state_dict(r.rank_state["loader"])
        self._iter = None
        self._resumed_from = self.progress.iteration
        if self.logger is not None:
            self.logger.info(f"resumed from {self.train.load} at iteration {self.progress.iteration}")
        return True

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until train_iters (or a stop signal); save at intervals, at the end and on signals."""
        stop = StopSignal().install()
        try:
            window = Window()
            while self.progress.iteration < self.train.train_iters:
                stop_now = self.train_step(window, stop)
                it = self.progress.iteration
                if self.logger is not None:
                    self.logger.advance()
                if it % self.train.log_interval == 0 or it == self.train.train_iters:
                    self._log(window)
                    window = Window()
                if self.has_validation and self.train.eval_interval and it % self.train.eval_interval == 0:
                    self.evaluate()
                exit_now = bool(self.train.exit_interval) and it % self.train.exit_interval == 0
                if stop_now or (exit_now and it < self.train.train_iters):
                    if self.logger is not None:
                        why = "stop signal received" if stop_now else f"exit interval {self.train.exit_interval}"
                        self.logger.info(f"{why}: saving at iteration {it} and exiting")
                    self.save()
                    return self.progress
                if self.train.save_interval and it % self.train.save_interval == 0:
                    self.save()
            if self.train.save_interval == 0 or self.progress.iteration % self.train.save_interval != 0:
                self.save()
            return self.progress
        finally:
            stop.restore()
