"""Reading checkpoints to convert: ours (DeepSpeed layout + cogview_meta.json) or the original CogView's."""
from __future__ import annotations

import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from megatron_cogview.checkpoint.layout import (
    META_FILE,
    CheckpointError,
    CheckpointMeta,
    describe_dir,
    iteration_dir,
    read_latest,
    read_meta,
)
from megatron_cogview.checkpoint.reshard import Shapes, expected_shapes
from megatron_cogview.checkpoint.zero import ZERO3_MODEL, is_zero3
from megatron_cogview.config import ModelConfig

Log = Callable[[str], None]
REMAP_BYTES = 512 << 20
"""Re-map the input shards after reading about this many bytes, so the file pages read so far leave the RSS."""
FORMATS = ("cogview", "cogview-original")
_RANK_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def stderr_log(message: str) -> None:
    """Print a progress or warning line to stderr."""
    print(message, file=sys.stderr, flush=True)


def _torch_load(path: Path, weights_only: bool, mmap: bool) -> Any:
    """torch.load on CPU; memory-mapped when the file is in the zip format (legacy files are read whole)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except RuntimeError as e:
        if mmap and ("mmap" in str(e) or "zip" in str(e)):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
        raise


def _unsafe_globals(path: Path) -> str:
    """The non-allowlisted globals a pickle names, for the error message (best effort)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy format or unreadable: the refusal message says enough
        return ""
    return f" (it references {', '.join(sorted(names)[:4])}{', ...' if len(names) > 4 else ''})" if names else ""


def load_checkpoint_file(path: Path, *, trust_pickle: bool = False, mmap: bool = True, log: Log = stderr_log) -> Any:
    """Load a torch checkpoint with weights_only=True; the full unpickler only when trust_pickle says so."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete or the path is wrong")
    try:
        return _torch_load(path, True, mmap)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not trust_pickle:
            raise CheckpointError(
                f"{path} cannot be loaded safely with weights_only=True{_unsafe_globals(path)}: {reason}; "
                "if you trust its origin, pass --trust-pickle (the full unpickler can run arbitrary code)"
            ) from None
        log(f"warning: loading {path} with the full unpickler because --trust-pickle was given "
            f"(weights_only=True refused it: {reason})")
        try:
            return _torch_load(path, False, mmap)
        except Exception as e2:
            raise CheckpointError(f"cannot read {path}: {str(e2).splitlines()[0] if str(e2) else e2!r}") from None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read {path} (damaged, or not a torch checkpoint): {msg}") from None


def rank_files(directory: Path, pattern: re.Pattern[str] = _RANK_FILE) -> list[Path]:
    """Model-state files of one checkpoint directory, one per tp rank in rank order (ranks 0..N-1 all present).

    A ZeRO-3 checkpoint has no mp_rank_XX files; its files are then the dp-rank-0 ZeRO-3 model states of
    each tp rank (placeholders: the weights are read with checkpoint.zero.gather_fp32).
    """
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {str(directory)!r} does not exist")
    found = {int(m.group(1)): directory / p for p in directory.iterdir() if (m := pattern.match(p.name))}
    if not found and pattern is _RANK_FILE:
        found = {int(m.group(2)): directory / p for p in directory.iterdir()
                 if (m := ZERO3_MODEL.match(p.name)) and m.group(1) == "0"}
        if not found and is_zero3(directory):
            raise CheckpointError(f"{directory} lacks the ZeRO-3 model states of data-parallel rank 0: the "
                                  f"checkpoint is incomplete (found: {describe_dir(directory)})")
    if not found:
        raise CheckpointError(f"no mp_rank_XX_model_states.pt (or ZeRO-3 zero_pp_rank_D_mp_rank_XX_model_states.pt) "
                              f"files in {str(directory)!r} (found: {describe_dir(directory)})")
    missing = [r for r in range(max(found) + 1) if r not in found]
    if missing:
        template = found[min(found)].name
        names = ", ".join(re.sub(r"mp_rank_\d+", f"mp_rank_{r:02d}", template) for r in missing)
        raise CheckpointError(f"{directory} lacks {names}: the checkpoint is incomplete (found: {describe_dir(directory)})")
    return [found[r] for r in sorted(found)]


def _module(states: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict under 'module' (or the file itself), with a 'module.' prefix removed."""
    module = states.get("module", states) if isinstance(states, dict) else None
    if not isinstance(module, dict) or not all(isinstance(v, torch.Tensor) for v in module.values()):
        raise CheckpointError(f"{path} holds no model state dict under 'module'")
    if module and all(k.startswith("module.") for k in module):
        module = {k[len("module."):]: v for k, v in module.items()}
    return dict(module)


@dataclass
class CheckpointSource:
    """One checkpoint to convert: per-tp-rank files, its metadata and how to read them."""

    load: Path
    iteration: int
    files: list[Path]
    meta: CheckpointMeta
    trust_pickle: bool = False
    log: Log = stderr_log
    _shapes: Shapes = field(default_factory=dict, repr=False)

    @property
    def tp_size(self) -> int:
        """Tensor-parallel size the checkpoint was saved at."""
        return len(self.files)

    @property
    def partitioned(self) -> bool:
        """True for a ZeRO-3 checkpoint: its weights exist only in the optimizer shards (consolidate to read)."""
        return ZERO3_MODEL.match(self.files[0].name) is not None

    @property
    def config(self) -> ModelConfig:
        """The model's configuration (vocab_size is the padded size at this tp)."""
        return self.meta.model_config()

    @property
    def num_tokens(self) -> int | None:
        """Real (unpadded) vocabulary size when the metadata records it."""
        value = self.meta.tokenizers.get("num_tokens")
        return int(value) if value is not None else None

    def shapes(self) -> Shapes:
        """Expected key -> (local shape, rule) at this checkpoint's tp size."""
        if not self._shapes:
            self._shapes = expected_shapes(self.config, self.tp_size)
        return self._shapes

    def open(self, rank: int) -> dict[str, torch.Tensor]:
        """Tp rank `rank`'s state dict, memory-mapped, checked against the model's keys and shapes."""
        path = self.files[rank]
        module = _module(load_checkpoint_file(path, trust_pickle=self.trust_pickle, log=self.log), path)
        check_module(module, self.shapes(), path)
        return module


def check_module(module: dict[str, torch.Tensor], shapes: Shapes, path: Path) -> None:
    """CheckpointError unless `module` has exactly the expected keys and shapes."""
    missing = sorted(set(shapes) - set(module))
    unexpected = sorted(set(module) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model configuration: missing {missing[:4]}, unexpected {unexpected[:4]}; "
            "check --preset/--config (layers, layernorm_order) against the checkpoint"
        )
    for name, (shape, _) in shapes.items():
        got = tuple(module[name].shape)
        if got != shape:
            hint = (" (an empty ZeRO-3 placeholder: pass --consolidate)" if module[name].numel() == 0 else
                    "; check --preset/--config (hidden size, vocab_size = padded rows x tp) against the checkpoint")
            raise CheckpointError(f"{path}: {name} has shape {list(got)} but the model expects {list(shape)}{hint}")


def open_source(
    load: str | Path,
    *,
    fmt: str = "cogview",
    iteration: int | None = None,
    config: ModelConfig | None = None,
    num_tokens: int | None = None,
    trust_pickle: bool = False,
    log: Log = stderr_log,
) -> CheckpointSource:
    """Locate a checkpoint (latest or `iteration`) and its metadata; `config` is needed when it has none."""
    if fmt not in FORMATS:
        raise CheckpointError(f"--from {fmt!r} is not one of {', '.join(FORMATS)}")
    load = Path(load)
    it = read_latest(load) if iteration is None else iteration
    files = rank_files(iteration_dir(load, it))
    meta: CheckpointMeta | None = None
    if fmt == "cogview" and (iteration_dir(load, it) / META_FILE).is_file():
        meta = read_meta(load, it)[1]
    elif fmt == "cogview":
        states = load_checkpoint_file(files[0], trust_pickle=trust_pickle, log=log)
        if isinstance(states, dict) and isinstance(states.get("cogview"), dict):
            meta = CheckpointMeta.from_dict(states["cogview"])
    if meta is None:
        if config is None:
            what = "an original CogView checkpoint" if fmt == "cogview-original" else f"{load} has no {META_FILE} and"
            raise CheckpointError(f"{what} records no model shape: pass --preset NAME or --config FILE")
        meta = CheckpointMeta(model=config.to_dict(), tensor_parallel_size=len(files), iteration=it,
                              extra={"source_format": fmt, "source": str(load)})
    if num_tokens is not None:
        meta.tokenizers = {**meta.tokenizers, "num_tokens": int(num_tokens)}
    if meta.tensor_parallel_size != len(files):
        raise CheckpointError(
            f"{iteration_dir(load, it)} holds {len(files)} tp rank files but its metadata says tensor-parallel "
            f"size {meta.tensor_parallel_size}: incomplete or mixed checkpoint"
        )
    return CheckpointSource(load=load, iteration=it, files=files, meta=meta, trust_pickle=trust_pickle, log=log)


class MappedShards:
    """The input tp shards of a CheckpointSource, memory-mapped and re-mapped every `budget` bytes read."""

    def __init__(self, source: CheckpointSource, budget: int = REMAP_BYTES) -> None:
        self.source, self.budget = source, budget
        self.maps: list[dict[str, torch.Tensor]] = []
        self.read = 0

    def __getitem__(self, name: str) -> list[torch.Tensor]:
        """Tensor `name` of every input rank, in rank order (views of the mapped files)."""
        if not self.maps or self.read >= self.budget:
            self.maps = []  # drop the old mappings before opening new ones
            self.maps, self.read = [self.source.open(r) for r in range(self.source.tp_size)], 0
        tensors = [m[name] for m in self.maps]
        self.read += sum(t.nbytes for t in tensors)  # an upper bound: a slice may touch fewer pages
        return tensors

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype of tensor `name`."""
        return self[name][0].dtype
