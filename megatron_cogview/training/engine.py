"""DeepSpeed wiring: the only module of the project that imports deepspeed.

Builds the DeepSpeed config from TrainConfig (merging a user JSON by one rule, see merge_ds_config),
initialises torch.distributed (gloo on CPU, nccl on CUDA), selects DeepSpeed's CPU accelerator when
there is no GPU, and creates the engine with our AdamW, LR schedule and ParallelState as `mpu`.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from megatron_cogview.config import ConfigError, TrainConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel.state import ParallelState, uses_cuda
from megatron_cogview.training.schedule import LRSchedule
from megatron_cogview.training.skips import GatedAdamW, SkipGate

Log = Callable[[str], None]


def use_cpu_accelerator() -> bool:
    """Select DeepSpeed's CPU accelerator when no GPU is visible (before deepspeed is imported)."""
    if not uses_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return os.environ.get("DS_ACCELERATOR") == "cpu"


def _deepspeed():
    """Import deepspeed after choosing the accelerator, keeping its C++ comm op out of the way on CPU."""
    cpu = use_cpu_accelerator()
    import deepspeed

    if cpu:
        # DeepSpeed's shared-memory allreduce op compiles C++ for ~60 s on first use; gloo is enough here.
        ops = deepspeed.ops.__compatible_ops__
        ops["deepspeed_shm_comm"] = False
    return deepspeed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str = "auto", timeout_s: int = 600) -> None:
    """Join the process group described by the launcher's env (torchrun/deepspeed), or a world of 1."""
    if dist.is_initialized():
        return
    cuda = uses_cuda()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if "WORLD_SIZE" not in os.environ:  # plain `python pretrain_gpt2.py`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    if cuda:
        local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= count:
            raise ConfigError(
                f"LOCAL_RANK is {local} but this node shows {count} GPU(s) (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); launch at most {count} processes per node "
                "(--num_gpus / --nproc_per_node)")
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


# ---- DeepSpeed config --------------------------------------------------------------------------
# flag name -> (JSON path, how a JSON value becomes the TrainConfig value)
_JSON_KEYS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "micro_batch_size": (("train_micro_batch_size_per_gpu",), int),
    "gradient_accumulation_steps": (("gradient_accumulation_steps",), int),
    "clip_grad": (("gradient_clipping",), float),
    "zero_stage": (("zero_optimization", "stage"), int),
    "lr": (("optimizer", "params", "lr"), float),
    "weight_decay": (("optimizer", "params", "weight_decay"), float),
    "adam_eps": (("optimizer", "params", "eps"), float),
}


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _json_precision(ds: dict[str, Any]) -> str | None:
    if _get(ds, ("fp16", "enabled")):
        return "fp16"
    if _get(ds, ("bf16", "enabled")) or _get(ds, ("bfloat16", "enabled")):
        return "bf16"
    return None


@dataclass
class MergeResult:
    """TrainConfig after merging a DeepSpeed JSON, and what was decided (for the log)."""

    train: TrainConfig
    decisions: list[str] = field(default_factory=list)


def merge_ds_config(train: TrainConfig, ds_json: dict[str, Any], explicit: set[str]) -> MergeResult:
    """One rule: a value set in the JSON wins over a flag left at its default (logged); a flag given
    explicitly on the command line that disagrees with the JSON is an error."""
    values = {**train.__dict__}
    decisions: list[str] = []
    candidates: dict[str, Any] = {}
    for name, (path, conv) in _JSON_KEYS.items():
        raw = _get(ds_json, path)
        if raw is not None and raw != "auto":
            candidates[name] = conv(raw)
    betas = _get(ds_json, ("optimizer", "params", "betas"))
    if betas is not None:
        candidates["adam_beta1"], candidates["adam_beta2"] = float(betas[0]), float(betas[1])
    if (prec := _json_precision(ds_json)) is not None:
        candidates["precision"] = prec
    tbs = ds_json.get("train_batch_size")
    for name, value in candidates.items():
        if values[name] == value:
            continue
        if name in explicit:
            raise ConfigError(
                f"--{name.replace('_', '-')} {values[name]} disagrees with the DeepSpeed config ({value}); "
                "set it in one place only"
            )
        decisions.append(f"{name}={value} (from the DeepSpeed config; flag default was {values[name]})")
        values[name] = value
    merged = TrainConfig(**values)
    if tbs is not None and tbs != "auto":
        decisions.append(f"train_batch_size={tbs} from the DeepSpeed config is checked against micro x accumulation x dp")
    return MergeResult(merged, decisions)


def build_ds_config(train: TrainConfig, user: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict: the user's JSON (minus optimizer/scheduler, which we build) + our values."""
    ds = json.loads(json.dumps(user or {}))
    ds.pop("optimizer", None)  # we build AdamW ourselves (no decay on LayerNorms and biases)
    ds.pop("scheduler", None)  # and the LR schedule (which must not advance on skipped steps)
    ds["train_micro_batch_size_per_gpu"] = train.micro_batch_size
    ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
    ds["gradient_clipping"] = train.clip_grad
    ds.setdefault("zero_optimization", {})["stage"] = train.zero_stage
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    ds["zero_allow_untested_optimizer"] = True
    fp16 = ds.setdefault("fp16", {})
    fp16["enabled"] = train.precision == "fp16"
    if fp16["enabled"]:  # the paper's dynamic loss scaling, unless the JSON says otherwise
        for key, value in (("loss_scale", 0), ("loss_scale_window", 400), ("hysteresis", 2),
                           ("min_loss_scale", 1), ("initial_scale_power", 16)):
            fp16.setdefault(key, value)
    ds.pop("bfloat16", None)
    bf16 = ds.setdefault("bf16", {})
    bf16["enabled"] = train.precision == "bf16"
    if bf16["enabled"]:
        bf16.setdefault("check_grad_overflow", True)  # never apply a non-finite gradient (skipped and counted)
    return ds


def read_ds_json(path: str) -> dict[str, Any]:
    """Load a DeepSpeed JSON config with a clear error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"DeepSpeed config {path!r} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path!r} is not valid JSON: {e}") from None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices/embeddings, none on LayerNorms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or "layernorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_precision(train: TrainConfig) -> None:
    """fp16 needs a GPU (DeepSpeed's CPU accelerator has no fp16 path for users)."""
    if train.precision == "fp16" and not uses_cuda():
        raise ConfigError("fp16 needs a CUDA GPU; on CPU use --precision bf16 (or fp32)")


def create_engine(model: CogViewModel, state: ParallelState, train: TrainConfig, ds_config: dict[str, Any]):
    """deepspeed.initialize with our AdamW + LRSchedule and the ParallelState as mpu."""
    check_precision(train)
    if train.zero_stage == 3 and state.tp_size > 1:
        raise ConfigError("ZeRO stage 3 is supported with tensor-parallel size 1 only; use --zero-stage 1 or 2 with tp > 1")
    deepspeed = _deepspeed()
    fused = uses_cuda()
    gate = SkipGate()  # closed by the loop around the step of a skipped iteration
    optimizer = GatedAdamW(
        param_groups(model, train.weight_decay), gate, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_eps, fused=fused or None,
    )
    schedule = LRSchedule(optimizer, train, gate)
    if train.zero_stage == 3:
        deepspeed.zero.register_external_parameter(model, model.word_embeddings.weight)  # tied output embedding
    if model.config.checkpoint_activations and "activation_checkpointing" in ds_config:
        # DeepSpeed's checkpointing (partitioned/offloaded activations) when the JSON configures it;
        # torch's otherwise. Either way the model replays its RNG tracker on recompute.
        deepspeed.checkpointing.configure(state, deepspeed_config=ds_config)
        model.set_checkpoint_fn(deepspeed.checkpointing.checkpoint)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, mpu=state, config=ds_config,
        dist_init_required=False,
    )
    return engine, schedule


def loss_scale(engine) -> float:
    """Current fp16 loss scale (1.0 when there is none)."""
    opt = getattr(engine, "optimizer", None)
    config = getattr(opt, "loss_scale_config", None)  # DeepSpeed's fp16 optimizers keep the live scale here
    value = getattr(config, "cur_scale", None) if config is not None else getattr(opt, "cur_scale", None)
    return float(value) if value else 1.0


def min_loss_scale(engine) -> float:
    """The fp16 loss scaler's floor (1.0 when there is none)."""
    opt = getattr(engine, "optimizer", None)
    scaler = getattr(opt, "loss_scaler", None)
    value = getattr(scaler, "min_scale", None)
    return float(value) if value else 1.0
