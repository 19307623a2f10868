"""Load a saved CogView model for inference or fine-tuning, without DeepSpeed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megatron_cogview.checkpoint.layout import CheckpointError, CheckpointMeta, model_states_file, read_meta
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.state import ParallelState


def load_states(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain values only), with a clear error."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that needs arbitrary code, or a damaged file
        raise CheckpointError(f"cannot load {path} safely (weights_only=True): {str(e).splitlines()[0]}") from None


def load_model(
    load: str | Path,
    state: ParallelState,
    *,
    iteration: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[CogViewModel, CheckpointMeta]:
    """Build the model a checkpoint describes and load this tp rank's weights into it."""
    it, meta = read_meta(load, iteration)
    if meta.tensor_parallel_size != state.tp_size:
        raise CheckpointError(
            f"checkpoint {str(load)!r} was saved at tensor-parallel size {meta.tensor_parallel_size} but this run "
            f"uses {state.tp_size}; convert it first: cogview convert --load {load} --save NEW_DIR "
            f"--target-tp {state.tp_size}"
        )
    model = CogViewModel(meta.model_config(), state, device=device, dtype=dtype)
    states = load_states(model_states_file(load, it, state.tp_rank))
    module = states.get("module", states)
    missing, unexpected = model.load_state_dict(module, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model, meta
