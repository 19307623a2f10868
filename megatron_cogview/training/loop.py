"""The pre-training loop: forward/backward/step on the DeepSpeed engine, skips, validation, checkpoints."""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.distributed as dist

from megatron_cogview.checkpoint.layout import CheckpointMeta
from megatron_cogview.config import TrainConfig
from megatron_cogview.errors import UserError
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.broadcast import broadcast_batch
from megatron_cogview.parallel.grad_norm import grad_norm
from megatron_cogview.parallel.state import ParallelState, default_device
from megatron_cogview.training.checkpointing import Resumed, has_checkpoint, load_checkpoint, save_checkpoint
from megatron_cogview.training.engine import loss_scale, min_loss_scale
from megatron_cogview.training.flops import flops_per_token, peak_tflops
from megatron_cogview.training.logger import TrainLogger
from megatron_cogview.training.objective import LogSlot, Objective, logged_losses
from megatron_cogview.training.skips import SkipCounter, SkipGate, SkipKind, is_min_loss_scale_error


class BatchSource(Protocol):
    """An iterable of batch dicts (tokens, labels, position_ids, keys) that can save and restore its exact
    position; loss weights come from the Trainer's Objective."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingAborted(UserError):
    """Training stopped on a condition the user must look at (e.g. repeated non-finite losses): a user error,
    so the command prints one line and exits 2."""


class LossScaleAtMinimum(TrainingAborted):
    """DeepSpeed's fp16 loss scale reached its minimum and gradients still overflow."""


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
    skips: SkipCounter = field(default_factory=SkipCounter)  # non-finite losses and DeepSpeed overflow skips

    @property
    def skipped_steps(self) -> int:
        """Skipped steps of any cause."""
        return self.skips.total


@dataclass
class Window:
    """Sums between two log lines (reduced over data-parallel ranks when logged)."""

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(len(LogSlot), dtype=torch.float64))  # by LogSlot
    steps: int = 0
    tokens: int = 0
    flops: int = 0  # model FLOPs of the applied steps, all ranks together
    start: float = field(default_factory=time.perf_counter)

    def add(self, values: torch.Tensor) -> None:
        """Add one Objective.log_sums vector, on its device: no host sync until the next log line."""
        self.sums = self.sums.to(values.device) + values.double()


@dataclass
class Trainer:
    """Everything one rank needs to run the loop."""

    engine: Any
    model: CogViewModel
    state: ParallelState
    train: TrainConfig
    meta: CheckpointMeta
    source: BatchSource | None  # on tp rank 0 only (peers receive broadcasts)
    objective: Objective  # loss weights, normalisation and the logged text/image split
    valid_source: BatchSource | None = None
    has_validation: bool = False
    logger: TrainLogger | None = None
    progress: Progress = field(default_factory=Progress)
    on_step: Callable[[int, dict[str, Any]], None] | None = None  # test hook: (iteration, batch + loss_weights)

    def __post_init__(self) -> None:
        self.device = default_device()
        self._resumed_from = 0  # keep-last-N never deletes a checkpoint at or after it that this run did not write
        self._written: set[int] = set()
        self.gate: SkipGate = self.engine.lr_scheduler.gate  # create_engine shares it with the optimizer
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
    def _agree_on_skip_and_stop(self, nonfinite: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """All ranks agree on (skip this step, stop now): one all-reduce and one host read per step."""
        flags = torch.stack([nonfinite.to(self.device, torch.float32),
                             torch.tensor(float(stop), device=self.device)])
        if self.state.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        skip, stop_now = flags.tolist()
        return skip > 0, stop_now > 0

    def train_step(self, window: Window, stop: StopSignal) -> bool:
        """One optimizer step (all micro-batches); returns True when a stop was requested.

        A non-finite loss on any micro-batch of any rank skips the whole step on every rank: every
        micro-batch still runs backward (DeepSpeed's ZeRO reduction stays in step), then engine.step()
        runs with the gate closed, so parameters, optimizer state and LR schedule stay unchanged."""
        gas = self.train.gradient_accumulation_steps
        skipped_before, scale_before = self.engine.skipped_steps, loss_scale(self.engine)
        upcoming = self.progress.iteration + 1
        logs = upcoming % self.train.log_interval == 0 or upcoming == self.train.train_iters
        finite: list[torch.Tensor] = []
        keys: list[Any] = []
        stats: list[torch.Tensor] = []
        skip, stop_now, tokens, flops = False, False, 0, 0
        for micro in range(gas):
            batch = self._next_batch()
            batch["loss_weights"] = self.objective.weights(batch["tokens"], batch["labels"])
            if self.on_step is not None:
                self.on_step(self.progress.iteration, batch)
            out = self.engine(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"],
                              loss_weights=batch["loss_weights"])
            loss = self.objective.normalise(out.total, batch["loss_weights"])
            finite.append(torch.isfinite(loss.detach()))
            keys.append(batch.get("keys", []))
            if micro == gas - 1:
                skip, stop_now = self._agree_on_skip_and_stop(~torch.stack(finite).all(), stop.received is not None)
                if skip and gas == 1:
                    break  # nothing accumulated yet: no backward and no step at all
            self.engine.backward(loss)
            stats.append(self.objective.log_sums(out.total, out.per_token, batch["labels"], batch["loss_weights"]))
            tokens += batch["tokens"].numel() * self.state.dp_size
            flops += flops_per_token(self.model.config, batch["tokens"].size(1)) * batch["tokens"].numel() * self.state.dp_size
            if micro == gas - 1 and logs and not skip and self.train.zero_stage == 0 and self.train.precision == "fp32":
                self._norm = grad_norm(self.model.parameters(), self.state)  # grads are dp-averaged by now
            self._engine_step(skip)
        self.progress.iteration += 1
        self.progress.consumed_samples += self.train.micro_batch_size * gas * self.state.dp_size
        kind: SkipKind | None = "nonfinite_loss" if skip else (
            "overflow" if self.engine.skipped_steps > skipped_before else None)
        # fp16: overflow skips while the loss scale calibrates are normal; they count toward the limit only
        # once the scale sits at its minimum (DeepSpeed itself then stops the run, see _engine_step).
        counts = kind != "overflow" or self.train.precision != "fp16" or scale_before <= min_loss_scale(self.engine)
        self.progress.skips.record(kind, counts)
        if kind is None:
            for values in stats:
                window.add(values)
            window.tokens += tokens
            window.flops += flops
            if logs and not (self.train.zero_stage == 0 and self.train.precision == "fp32"):
                self._norm = self._engine_norm()
        else:
            self._norm = float("nan")  # no gradient was applied
            self._report_skip(kind, finite, keys)
        window.steps += 1
        limit = self.train.max_consecutive_skips
        if limit > 0 and self.progress.skips.consecutive > limit:
            s = self.progress.skips
            raise TrainingAborted(
                f"{s.consecutive} consecutive steps were skipped (last at iteration {self.progress.iteration}; "
                f"in all {s.nonfinite_loss} for a non-finite loss, {s.overflow} for non-finite gradients): lower the "
                f"learning rate, use bf16 or PB-relax, or check the data (limit: --max-consecutive-skips {limit})")
        return stop_now

    def _engine_step(self, skip: bool) -> None:
        """engine.step() with the gate closed when the step must be skipped; DeepSpeed's fp16 minimum-scale
        exception becomes LossScaleAtMinimum (run() saves a checkpoint before it propagates)."""
        self.gate.skip = skip
        try:
            self.engine.step()
        except Exception as e:  # DeepSpeed raises a bare Exception here
            if not is_min_loss_scale_error(e):
                raise
            self.progress.iteration += 1
            self.progress.consumed_samples += (self.train.micro_batch_size * self.train.gradient_accumulation_steps
                                               * self.state.dp_size)
            self.progress.skips.record("overflow")
            raise LossScaleAtMinimum(
                f"fp16 gradients still overflow at the minimum loss scale ({min_loss_scale(self.engine):g}) at "
                f"iteration {self.progress.iteration}; fixes: resume (--load) with a lower --lr, or start from these "
                "weights (--finetune-from) with --precision bf16 or PB-relax (--attention-kernel pb-relax "
                "--pb-relax-layernorm all)") from None
        finally:
            self.gate.skip = False

    def _engine_norm(self) -> float | torch.Tensor:
        value = self.engine.get_global_grad_norm()
        return value if value is not None else float("nan")  # read on the host only when logged

    def _report_skip(self, kind: SkipKind, finite: list[torch.Tensor], keys: list[Any]) -> None:
        if self.logger is None or not self.logger.enabled:
            return
        it = self.progress.iteration
        if kind == "overflow":
            if self.train.precision != "fp16":  # fp16 calibration skips are DeepSpeed's to report
                self.logger.info(f"iteration {it} skipped by DeepSpeed: non-finite gradients (the loss was finite)")
            return
        bad = [k for ok, micro_keys in zip(torch.stack(finite).tolist(), keys) if not ok for k in micro_keys]
        shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        where = f"samples on rank 0: {shown}" if bad else "on another rank"
        self.logger.info(f"non-finite loss at iteration {it}: step skipped on every rank ({where})")

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
            **logged_losses(sums),
            "loss_scale": loss_scale(self.engine),
            "grad_norm": float(getattr(self, "_norm", float("nan"))),
            "skipped_steps": self.progress.skipped_steps,
            "skipped_nonfinite_loss": self.progress.skips.nonfinite_loss,
            "skipped_overflow": self.progress.skips.overflow,
            "tokens_per_s": window.tokens / max(elapsed, 1e-9),
            "ms_per_step": ms,
            "eta_s": ms / 1000 * (self.train.train_iters - self.progress.iteration),
        }
        values.update(self._flops(window.flops / max(elapsed, 1e-9)))
        if self.logger is not None:
            self.logger.metrics(self.progress.iteration, values)

    def _flops(self, flops_per_s: float) -> dict[str, float]:
        """Model TFLOP/s per GPU (real sequence lengths, configured MLP width) and MFU against the GPU's peak."""
        tflops = flops_per_s / self.state.world_size / 1e12
        out = {"tflops": tflops}
        if self.device.type == "cuda":
            peak = peak_tflops(torch.cuda.get_device_name(self.device), self.train.precision, self.train.peak_tflops)
            if peak is not None:
                out["mfu"] = tflops / peak
        elif self.train.peak_tflops > 0:
            out["mfu"] = tflops / self.train.peak_tflops
        return out

    def evaluate(self) -> float:
        """Mean weighted validation loss over eval_iters batches, reduced over all dp ranks."""
        self.engine.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for _ in range(self.train.eval_iters):
                batch = self._next_batch(valid=True)
                weights = self.objective.weights(batch["tokens"], batch["labels"])
                out = self.engine(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"],
                                  loss_weights=weights)
                sums += torch.stack([out.total.double(), weights.double().sum()])
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
            "skips": p.skips.state_dict(),
            "train_config": dict(self.train.__dict__), "tensor_parallel_size": self.state.tp_size}}
        rank_state = {
            "rng": self.model.rng.get_states(),
            "loader": self.source.state_dict() if self.source is not None else None,
            "consecutive_skips": p.skips.consecutive,
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
        skips = SkipCounter.from_state(c.get("skips"), int(c["skipped_steps"]),
                                       int(r.rank_state.get("consecutive_nonfinite", 0)))
        skips.consecutive = int(r.rank_state.get("consecutive_skips", skips.consecutive))
        self.progress = Progress(iteration=int(c["iteration"]), consumed_samples=int(c["consumed_samples"]),
                                 skips=skips)
        self.model.rng.set_states(r.rank_state["rng"])
        if self.source is not None and r.rank_state.get("loader") is not None:
            self.source.load_state_dict(r.rank_state["loader"])
        self._iter = None
        self._resumed_from = self.progress.iteration
        if self.logger is not None:
            self.logger.info(f"resumed from {self.train.load} at iteration {self.progress.iteration}")
        return True

    @staticmethod
    def _outside_window(window: Window, work: Callable[[], Any]) -> None:
        """Run validation or a save without counting its time in the throughput and MFU of the window."""
        start = time.perf_counter()
        work()
        window.start += time.perf_counter() - start

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until train_iters (or a stop signal); save at intervals, at the end and on signals."""
        stop = StopSignal().install()
        try:
            window = Window()
            while self.progress.iteration < self.train.train_iters:
                try:
                    stop_now = self.train_step(window, stop)
                except LossScaleAtMinimum as e:
                    self.save()
                    where = f"saved checkpoint {self.progress.iteration} to {self.train.save}" if self.train.save else (
                        "nothing saved (no --save)")
                    raise LossScaleAtMinimum(f"{e} ({where})") from None
                it = self.progress.iteration
                if self.logger is not None:
                    self.logger.advance()
                if it % self.train.log_interval == 0 or it == self.train.train_iters:
                    self._log(window)
                    window = Window()
                if self.has_validation and self.train.eval_interval and it % self.train.eval_interval == 0:
                    self._outside_window(window, self.evaluate)
                exit_now = bool(self.train.exit_interval) and it % self.train.exit_interval == 0
                if stop_now or (exit_now and it < self.train.train_iters):
                    if self.logger is not None:
                        why = "stop signal received" if stop_now else f"exit interval {self.train.exit_interval}"
                        self.logger.info(f"{why}: saving at iteration {it} and exiting")
                    self.save()
                    return self.progress
                if self.train.save_interval and it % self.train.save_interval == 0:
                    self._outside_window(window, self.save)
            if self.train.save_interval == 0 or self.progress.iteration % self.train.save_interval != 0:
                self.save()
            return self.progress
        finally:
            stop.restore()
