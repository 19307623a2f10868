"""Run pretrain_gpt2.py with one fault injected, as described by the COGVIEW_FAULT environment variable.

COGVIEW_FAULT is JSON: {"kind": ..., "iteration": N, "rank": R}. Kinds:
  kill_step      SIGKILL rank R when it starts step N (its peers are then inside a collective)
  hang_step      SIGSTOP rank R when it starts step N (a hung peer: only the process-group timeout ends the wait)
  enospc_save    every file write of checkpoint N writes a few bytes, then raises ENOSPC (disk full)
  kill_in_save   SIGKILL rank R after the first file of checkpoint N is written
  sigterm_in_save  SIGTERM to rank R after the first file of checkpoint N is written
  delete_shards  delete every .tar shard in the folder "path" when step N starts (open ones stay readable)
With "stamp": a file path, the time (time.time()) just before a kill or stop is written there.
The faults are injected by wrapping functions from outside; the library has no fault hooks of its own.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from megatron_cogview.commands.pretrain import main  # noqa: E402
from megatron_cogview.training.loop import Trainer  # noqa: E402


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def install(spec: dict[str, Any]) -> None:
    """Wrap Trainer.train_step / Trainer.save / torch.save to fire the fault once."""
    kind, target, rank = spec["kind"], int(spec["iteration"]), int(spec.get("rank", 0))
    saving = {"now": False}
    step, save, torch_save = Trainer.train_step, Trainer.save, torch.save

    def train_step(self: Trainer, *args: Any) -> bool:
        if self.progress.iteration + 1 == target:
            if kind in ("kill_step", "hang_step") and _rank() == rank:
                if spec.get("stamp"):
                    Path(spec["stamp"]).write_text(repr(time.time()))
                os.kill(os.getpid(), signal.SIGKILL if kind == "kill_step" else signal.SIGSTOP)
            if kind == "delete_shards" and _rank() == 0:
                for shard in Path(spec["path"]).glob("*.tar"):
                    shard.unlink()
        return step(self, *args)

    def trainer_save(self: Trainer) -> None:
        saving["now"] = self.progress.iteration == target
        try:
            save(self)
        finally:
            saving["now"] = False

    def faulty_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not saving["now"] or _rank() != rank:
            return torch_save(obj, f, *args, **kwargs)
        if kind == "enospc_save":
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        torch_save(obj, f, *args, **kwargs)
        if kind == "kill_in_save":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sigterm_in_save":
            saving["now"] = False  # once
            os.kill(os.getpid(), signal.SIGTERM)

    Trainer.train_step = train_step  # type: ignore[method-assign]
    Trainer.save = trainer_save  # type: ignore[method-assign]
    torch.save = faulty_save  # type: ignore[assignment]


if __name__ == "__main__":
    if os.environ.get("COGVIEW_FAULT"):
        install(json.loads(os.environ["COGVIEW_FAULT"]))
    sys.exit(main(sys.argv[1:]))
