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


def write_zero_checkpoint(rank: int, world: int, config: dict, tp: int, stage: int, save: str, steps: int) -> None:
    """Train `steps` AdamW steps under ZeRO-`stage` (tp x dp = world) and save; dump each rank's parameters."""
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
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
    meta = CheckpointMeta(model=cfg.to_dict(), tensor_parallel_size=tp, iteration=steps)
    engine.save_checkpoint(save, tag=str(steps), client_state={"cogview": meta.to_dict(), "iteration": steps})
    if state.dp_rank == 0:
        params = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
        torch.save(params, Path(save) / f"expected_tp{state.tp_rank}.pt")
    torch.distributed.barrier()
    if rank == 0:
        write_meta(save, steps, meta)
        write_trackers(save, steps)
