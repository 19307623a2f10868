"""Load a saved CogView model for inference or fine-tuning, without DeepSpeed (except to read ZeRO-3 shards)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch

from megatron_cogview.checkpoint.layout import (
    CheckpointError,
    CheckpointMeta,
    describe_dir,
    iteration_dir,
    model_states_file,
    read_meta,
)
from megatron_cogview.checkpoint.zero import gather_fp32, is_zero3
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.state import ParallelState


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_states(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain values only), with a clear error."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete (found: {describe_dir(path.parent)})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that needs arbitrary code, or a damaged file
        raise CheckpointError(f"cannot load {path} safely (weights_only=True): {str(e).splitlines()[0]}") from None


def read_module(
    load: str | Path, iteration: int, tp_rank: int, *, log: Callable[[str], None] = _stderr
) -> dict[str, torch.Tensor]:
    """Tp rank `tp_rank`'s weights; a ZeRO-3 checkpoint is consolidated on the fly (fp32, logged)."""
    directory = iteration_dir(load, iteration)
    path = model_states_file(load, iteration, tp_rank)
    if not path.is_file() and is_zero3(directory):
        log(f"{load} is a ZeRO-3 checkpoint (parameters partitioned over data-parallel ranks): consolidating it "
            f"in memory; for repeated use convert it once: cogview convert --load {load} --save NEW_DIR --consolidate")
        return gather_fp32(directory, tp_rank)
    states = load_states(path)
    module = states.get("module", states)
    if module and all(k.startswith("module.") for k in module):
        module = {k[len("module."):]: v for k, v in module.items()}
    return module


def load_model(
    load: str | Path,
    state: ParallelState,
    *,
    iteration: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = _stderr,
) -> tuple[CogViewModel, CheckpointMeta]:
    """Build the model a checkpoint describes and load this tp rank's weights into it."""
    it, meta = read_meta(load, iteration)
    if meta.tensor_parallel_size != state.tp_size:
        raise CheckpointError(
            f"checkpoint {str(load)!r} was saved at tensor-parallel size {meta.tensor_parallel_size} but this run "
            f"uses {state.tp_size}; convert it first: cogview convert --load {load} --save NEW_DIR "
            f"--target-tp {state.tp_size}"
        )
    module = read_module(load, it, state.tp_rank, log=log)
    # Built on the meta device and then given the checkpoint's tensors: no random init of every weight first.
    model = CogViewModel(meta.model_config(), state, device="meta", dtype=dtype)
    target = torch.device(device) if device is not None else torch.device("cpu")
    shapes = model.state_dict()
    for key, value in module.items():
        if key in shapes and shapes[key].shape != value.shape:
            raise CheckpointError(f"checkpoint weight {key!r} has shape {tuple(value.shape)} but the model described "
                                  f"by its metadata needs {tuple(shapes[key].shape)}: the checkpoint is inconsistent")
    module = {k: v.to(target, shapes[k].dtype if k in shapes and v.is_floating_point() else v.dtype)
              for k, v in module.items()}
    missing, unexpected = model.load_state_dict(module, strict=False, assign=True)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(target), meta  # .to() moves the RNG tracker along
