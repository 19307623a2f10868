"""Rank-0 training logs: one line per N steps, metrics.jsonl, optional TensorBoard, a tqdm bar on a TTY."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _loss(value: float | None) -> str:
    """A logged loss; n/a when no label of its kind was weighted in the window."""
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class TrainLogger:
    """Writes metrics on rank 0 only; every other rank gets a silent logger."""

    def __init__(self, enabled: bool, total_iters: int, start_iter: int, log_dir: str = "",
                 tensorboard_dir: str = "", wandb_project: str = "", wandb_run_name: str = "",
                 run_config: dict[str, Any] | None = None) -> None:
        self.enabled, self.total = enabled, total_iters
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._wandb: Any = None
        if not enabled:
            return
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self._jsonl = open(Path(log_dir) / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(tensorboard_dir)
            except ImportError:
                self.info("tensorboard is not installed (pip install 'megatron-cogview[tensorboard]'); skipping it")
        if wandb_project:
            self._wandb = _wandb_run(wandb_project, wandb_run_name, log_dir, run_config or {})
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_iters, initial=start_iter, unit="step", dynamic_ncols=True, leave=False)

    def info(self, message: str) -> None:
        """A free-form line (rank 0)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def advance(self, n: int = 1) -> None:
        """Move the progress bar."""
        if self._bar is not None:
            self._bar.update(n)

    def metrics(self, iteration: int, values: dict[str, Any], kind: str = "train") -> None:
        """One log line and one JSON record."""
        if not self.enabled:
            return
        record = {"kind": kind, "iteration": iteration, "time": time.time(), **values}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        scalars = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, iteration)
        if self._wandb is not None:
            self._wandb.log(scalars, step=iteration)
        self.info(self.format_line(iteration, values, kind))

    def format_line(self, iteration: int, v: dict[str, Any], kind: str) -> str:
        """The human-readable line."""
        if kind != "train":
            return f"[{kind}] iteration {iteration}/{self.total} | " + " | ".join(
                f"{k} {val:.4f}" if isinstance(val, float) else f"{k} {val}" for k, val in v.items())
        parts = [
            f"iteration {iteration}/{self.total}",
            f"consumed samples {v['consumed_samples']}",
            f"lr {v['lr']:.3e}",
            f"loss {_loss(v['loss'])}",
            f"text loss {_loss(v['text_loss'])}",
            f"image loss {_loss(v['image_loss'])}",
            f"loss scale {v['loss_scale']:.1f}",
            f"grad norm {v['grad_norm']:.3f}",
            f"skipped {v['skipped_steps']} (non-finite loss {v.get('skipped_nonfinite_loss', 0)}, "
            f"overflow {v.get('skipped_overflow', 0)})",
            f"tokens/s {v['tokens_per_s']:.0f}",
            f"ms/step {v['ms_per_step']:.1f}",
            f"ETA {_fmt_eta(v['eta_s'])}",
        ]
        if "tflops" in v:
            parts.append(f"TFLOPs {v['tflops']:.1f}")
        if "mfu" in v:
            parts.append(f"MFU {100 * v['mfu']:.1f}%")
        return " | ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_run(project: str, name: str, save_dir: str, config: dict[str, Any]) -> Any:
    """A W&B run; its id is kept in SAVE/wandb_run_id.txt so a resumed training continues the same run."""
    try:
        import wandb
    except ImportError:
        raise ImportError("--wandb-project needs wandb: pip install 'megatron-cogview[wandb]'") from None
    id_file = Path(save_dir) / "wandb_run_id.txt" if save_dir else None
    run_id = id_file.read_text().strip() if id_file is not None and id_file.is_file() else None
    run = wandb.init(project=project, name=name or None, id=run_id, resume="allow" if run_id else None, config=config)
    if id_file is not None and run_id is None:
        id_file.write_text(run.id)
    return run
