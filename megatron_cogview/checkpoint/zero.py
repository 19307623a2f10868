"""DeepSpeed ZeRO checkpoints: which files one tp rank needs, and its full fp32 weights from the optimizer shards.

A ZeRO-1/2 checkpoint keeps whole parameters in `mp_rank_XX_model_states.pt` (in the working precision:
bf16/fp16 runs store 16-bit copies) and the fp32 master partitions in one optimizer file per dp rank.
A ZeRO-3 checkpoint partitions the parameters themselves: `zero_pp_rank_D_mp_rank_XX_model_states.pt`
(one per dp rank) hold empty placeholders, and the weights live only in the optimizer files
(`[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt`). Either way the fp32 weights come from DeepSpeed's
own reader (deepspeed.utils.zero_to_fp32) in lazy mode: the optimizer files are memory-mapped and each
parameter is assembled from its partitions only when asked for, so the result costs one copy of the weights.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from megatron_cogview.checkpoint.layout import CheckpointError, describe_dir

ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
ZERO_OPTIM = re.compile(r"^(?:[a-z0-9]+_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_DS_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
)
"""DeepSpeed classes its ZeRO files pickle besides tensors and plain values (plain state, no code on load)."""


def _ranked(directory: Path, pattern: re.Pattern[str], tp_rank: int) -> dict[int, Path]:
    """dp rank -> file for the files of `directory` matching `pattern` at tensor-parallel rank `tp_rank`."""
    found = {}
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m and int(m.group(2)) == tp_rank:
            found[int(m.group(1))] = p
    return found


def _complete(found: dict[int, Path], what: str, directory: Path, size: int) -> list[Path]:
    """The files of dp ranks 0..size-1 in order; a CheckpointError naming the missing ones otherwise."""
    missing = [r for r in range(size) if r not in found]
    if missing:
        raise CheckpointError(f"{directory} lacks the {what} of data-parallel rank(s) {missing}: the checkpoint "
                              f"is incomplete (found: {describe_dir(directory)})")
    return [found[r] for r in range(size)]


def is_zero3(directory: Path) -> bool:
    """True when `directory` holds ZeRO-3 (partitioned) model states instead of mp_rank_XX files."""
    return directory.is_dir() and any(ZERO3_MODEL.match(p.name) for p in directory.iterdir())


def zero_files(directory: Path, tp_rank: int) -> tuple[list[Path], list[Path]]:
    """(model-state files, optimizer shards in dp order) that hold tp rank `tp_rank` of a ZeRO checkpoint.

    ZeRO-3 has one model-state file per dp rank, ZeRO-1/2 one mp_rank_XX file; the dp size is the
    highest dp rank seen in either kind of file (DeepSpeed's reader checks it against the partition count).
    """
    model_found = _ranked(directory, ZERO3_MODEL, tp_rank)
    optim_found = _ranked(directory, ZERO_OPTIM, tp_rank)
    if not optim_found:
        raise CheckpointError(f"{directory} holds no ZeRO optimizer shards (zero_pp_rank_*_mp_rank_{tp_rank:02d}_"
                              "optim_states.pt) to consolidate: it is not a ZeRO checkpoint, convert it without "
                              f"--consolidate (found: {describe_dir(directory)})")
    dp = max([*model_found, *optim_found]) + 1
    if model_found:
        model = _complete(model_found, "ZeRO-3 model states", directory, dp)
    else:
        model = [directory / f"mp_rank_{tp_rank:02d}_model_states.pt"]
        if not model[0].is_file():
            raise CheckpointError(f"{model[0]} is missing: the checkpoint is incomplete "
                                  f"(found: {describe_dir(directory)})")
    return model, _complete(optim_found, "ZeRO optimizer shards", directory, dp)


def all_optimizer_files(directory: Path) -> list[Path]:
    """Every ZeRO optimizer shard in `directory` (all tp and dp ranks), sorted by name."""
    return sorted(p for p in directory.iterdir() if ZERO_OPTIM.match(p.name))


def check_pickles(files: list[Path], trust_pickle: bool) -> None:
    """Refuse files that hold more than tensors, plain values and DeepSpeed's plain-state classes.

    DeepSpeed's reader unpickles with weights_only=False; this check with weights_only=True (memory-mapped,
    so tensor data is not read) makes that safe unless `trust_pickle` waives it.
    """
    if trust_pickle:
        return
    allowed = [_import_global(name) for name in _DS_GLOBALS]
    for path in files:
        try:
            with torch.serialization.safe_globals([g for g in allowed if g is not None]):
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            try:
                names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - set(_DS_GLOBALS))
                reason = f"it references {', '.join(names[:4])}" if names else str(e).splitlines()[0]
            except Exception:  # not a zip checkpoint at all
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"{path} cannot be loaded safely with weights_only=True ({reason[:200]}); if you trust its origin, "
                "convert it with `cogview convert --consolidate --trust-pickle` (the full unpickler can run code)"
            ) from None


def _import_global(name: str) -> Any:
    """The class `module.Name`, or None when this DeepSpeed version has no such class."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _zero_to_fp32() -> Any:
    """deepspeed.utils.zero_to_fp32, imported lazily (only ZeRO checkpoints need DeepSpeed to be read)."""
    try:
        return importlib.import_module("deepspeed.utils.zero_to_fp32")
    except ImportError as e:
        raise CheckpointError(f"reading a ZeRO checkpoint needs DeepSpeed installed ({e})") from None


def gather_fp32(directory: Path, tp_rank: int, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Full fp32 weights of tp rank `tp_rank` of the ZeRO checkpoint in `directory` (an iteration directory).

    DeepSpeed's reader takes a whole directory, so it is pointed at a temporary view holding symlinks to
    this tp rank's model-state and optimizer files only.
    """
    model, optim = zero_files(directory, tp_rank)
    check_pickles(model + optim, trust_pickle)
    z2f = _zero_to_fp32()
    with tempfile.TemporaryDirectory(prefix="cogview-zero-view-") as view:
        tag = directory.name
        (Path(view) / tag).mkdir()
        for p in model + optim:
            os.symlink(p.absolute(), Path(view) / tag / p.name)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the reader prints progress to stdout
                lazy = z2f.get_fp32_state_dict_from_zero_checkpoint(view, tag=tag, lazy_mode=True)
            # one parameter at a time: ZeRO-3 values are assembled into new tensors by contiguous(); ZeRO-1/2
            # values are views of the mapped optimizer files, which clone() detaches
            return {name: t.contiguous().clone() if isinstance(t, torch.Tensor) else t.contiguous()
                    for name, t in lazy.items()}
        except (ValueError, FileNotFoundError, KeyError) as e:
            raise CheckpointError(f"cannot consolidate tp rank {tp_rank} of {directory}: {e}") from None
