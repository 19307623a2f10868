"""Where checkpoint files live, and the tracker files that point at the latest complete one.

<save>/
  latest_checkpointed_iteration.txt    "<iteration>"  (Megatron's tracker)
  latest                               "<iteration>"  (DeepSpeed's tag tracker)
  <iteration>/
    mp_rank_XX_model_states.pt         {"module": state dict of tp rank XX (original CogView names),
                                        "iteration": int, "cogview": CheckpointMeta dict, ...DeepSpeed keys}
    zero_pp_rank_D_mp_rank_XX_optim_states.pt   (DeepSpeed ZeRO optimizer shards, when present; "bf16_" prefix in bf16)
    zero_pp_rank_D_mp_rank_XX_model_states.pt   (ZeRO-3 only, instead of mp_rank_XX: parameters partitioned over
                                                 dp ranks; read through checkpoint/zero.py)
    cogview_meta.json                  the CheckpointMeta, readable without torch
Tracker files are written last and atomically (temp file + rename), so they only ever name a
complete checkpoint directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from megatron_cogview.config import ConfigError, ModelConfig

TRACKER = "latest_checkpointed_iteration.txt"
DS_TRACKER = "latest"
META_FILE = "cogview_meta.json"


class CheckpointError(ConfigError):
    """A checkpoint is missing, incomplete or does not fit the requested layout."""


@dataclass
class CheckpointMeta:
    """What a checkpoint needs to be used without the run that wrote it."""

    model: dict[str, Any]
    """ModelConfig.to_dict() of the saved model (vocab_size is the padded size at this tp)."""
    tensor_parallel_size: int
    iteration: int = 0
    tokenizers: dict[str, Any] = field(default_factory=dict)
    """Paths/fingerprints of the tokenizers and the token layout dict (keys: text, image, layout, ...)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointMeta":
        return cls(**data)


def iteration_dir(save: str | Path, iteration: int | str) -> Path:
    """Directory of one checkpoint (named by its iteration, DeepSpeed's tag)."""
    return Path(save) / str(iteration)


def model_states_file(save: str | Path, iteration: int | str, tp_rank: int) -> Path:
    """The model-state file of one tensor-parallel rank."""
    return iteration_dir(save, iteration) / f"mp_rank_{tp_rank:02d}_model_states.pt"


def describe_dir(directory: str | Path, limit: int = 8) -> str:
    """The file names in `directory`, sorted and shortened, for error messages about missing files."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{str(directory)!r} does not exist"
    names = sorted(p.name for p in directory.iterdir())
    if not names:
        return "nothing, the directory is empty"
    return ", ".join(names[:limit]) + (f", ... ({len(names)} files)" if len(names) > limit else "")


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path via a temporary file and an atomic rename (fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_trackers(save: str | Path, iteration: int | str) -> None:
    """Point both tracker files at `iteration` (call only once that checkpoint is complete)."""
    save = Path(save)
    atomic_write_text(save / TRACKER, str(iteration))
    atomic_write_text(save / DS_TRACKER, str(iteration))


def read_latest(load: str | Path) -> int:
    """Iteration named by the tracker file of `load` (a CheckpointError when there is none)."""
    load = Path(load)
    if not load.is_dir():
        raise CheckpointError(f"checkpoint directory {str(load)!r} does not exist")
    for name in (TRACKER, DS_TRACKER):
        tracker = load / name
        if tracker.is_file():
            text = tracker.read_text(encoding="utf-8").strip()
            try:
                return int(text)
            except ValueError:
                raise CheckpointError(f"{tracker} holds {text!r}, not an iteration number") from None
    raise CheckpointError(f"no {TRACKER} or {DS_TRACKER} in {str(load)!r}: not a checkpoint directory (or none saved yet)")


def write_meta(save: str | Path, iteration: int | str, meta: CheckpointMeta) -> None:
    """Write cogview_meta.json inside the checkpoint directory."""
    d = iteration_dir(save, iteration)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / META_FILE, json.dumps(meta.to_dict(), indent=1, sort_keys=True))


def read_meta(load: str | Path, iteration: int | None = None) -> tuple[int, CheckpointMeta]:
    """(iteration, meta) of the latest (or given) checkpoint under `load`."""
    it = read_latest(load) if iteration is None else iteration
    path = iteration_dir(load, it) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete or was not written by megatron-cogview "
                              f"(found: {describe_dir(path.parent)})")
    return it, CheckpointMeta.from_dict(json.loads(path.read_text(encoding="utf-8")))
