"""Test helper: write a real DeepSpeed ZeRO checkpoint of a tiny CogViewModel on the CPU accelerator."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_cogview.checkpoint.layout import CheckpointMeta, write_meta, write_trackers
from megatron_cogview.config import ModelConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState


def _deepspeed():  # type: ignore[no-untyped-def]
    """Import deepspeed on the CPU accelerator with the shared-memory comm op kept out (it compiles for ~60 s)."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def write_zero_checkpoint(
    rank: int, world: int, config: dict, tp: int, stage: int, save: str, steps: int, precision: str = "fp32"
) -> None:
    """Train `steps` AdamW steps under ZeRO-`stage` (tp x dp = world) and save; dump each rank's parameters.

    <save>/expected_tpR.pt: the engine's module (working precision); expected_fp32_tpR.pt: DeepSpeed's fp32
    master copy of every parameter (gathered over the ZeRO partitions).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world), MASTER_PORT="29599")
    deepspeed = _deepspeed()
    cfg = ModelConfig.from_dict(config)
    state = ParallelState.build(tp)
    model = CogViewModel(cfg, state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 2 * state.dp_size,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**6,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, mpu=state, dist_init_required=False
    )
    g = torch.Generator().manual_seed(100 + state.dp_rank)
    for _ in range(steps):
        tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
        logits = engine(tokens[:, :-1], gather=True)  # [b, s, V]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
    meta = CheckpointMeta(model=cfg.to_dict(), tensor_parallel_size=tp, iteration=steps)
    engine.save_checkpoint(save, tag=str(steps), client_state={"cogview": meta.to_dict(), "iteration": steps})
    fp32 = {k: safe_get_full_fp32_param(p).detach().clone() for k, p in engine.module.named_parameters()}  # collective
    if state.dp_rank == 0:
        params = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        torch.save(params, Path(save) / f"expected_tp{state.tp_rank}.pt")
        torch.save(fp32, Path(save) / f"expected_fp32_tp{state.tp_rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        write_meta(save, steps, meta)
        write_trackers(save, steps)


def train_zero3(rank: int, world: int, config: dict, precision: str, save: str, steps: int) -> None:
    """Train under ZeRO-3 (dp = world) with the project's engine and checkpoint code; dump what the live engine holds.

    <save>/engine.pt (rank 0): "fp32" (DeepSpeed's gathered fp32 master of every parameter), "module" (the
    gathered working-precision parameters), "tokens" and "logits" (the live engine's forward in eval mode).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    from megatron_cogview.config import TrainConfig
    from megatron_cogview.training.checkpointing import save_checkpoint
    from megatron_cogview.training.engine import build_ds_config, create_engine

    deepspeed = _deepspeed()
    cfg = ModelConfig.from_dict(config)
    state = ParallelState.build(1)
    train = TrainConfig(train_iters=steps, micro_batch_size=2, lr=1e-2, warmup=0, zero_stage=3, precision=precision)
    engine, _ = create_engine(CogViewModel(cfg, state), state, train, build_ds_config(train))
    g = torch.Generator().manual_seed(100 + state.dp_rank)
    for _ in range(steps):
        tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
        logits = engine(tokens[:, :-1], gather=True)  # [b, s, V]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
    meta = CheckpointMeta(model=cfg.to_dict(), tensor_parallel_size=1, iteration=steps)
    save_checkpoint(engine, save, steps, state, meta, {"iteration": steps}, {}, keep_last=2)
    params = dict(engine.module.named_parameters())
    fp32 = {name: safe_get_full_fp32_param(p).detach().clone() for name, p in params.items()}  # collective
    with deepspeed.zero.GatheredParameters(list(params.values())):
        module = {name: p.detach().clone() for name, p in params.items()}
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(7))
    engine.eval()
    with torch.no_grad():
        logits = engine(tokens, gather=True)
    if rank == 0:
        torch.save({"fp32": fp32, "module": module, "tokens": tokens, "logits": logits}, Path(save) / "engine.pt")
