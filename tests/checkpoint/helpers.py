"""Shared helpers for checkpoint tests: tiny configs, writing checkpoints, logits in spawned tp ranks."""
from __future__ import annotations

from pathlib import Path

import torch

from megatron_cogview.checkpoint.layout import CheckpointMeta, model_states_file, write_meta, write_trackers
from megatron_cogview.checkpoint.load import load_model
from megatron_cogview.config import ModelConfig, model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState

TOL = dict(rtol=1e-4, atol=1e-5)  # tp reorders fp32 sums (see tests/model/test_model_parallel.py)
ITERATION = 7


def tiny(**kw: object) -> ModelConfig:
    """The tiny preset (4 heads, ffn 256, vocab 1024), fixed seed."""
    return model_preset("tiny", **kw)


def tokens(vocab: int, b: int = 2, s: int = 20) -> torch.Tensor:
    """A fixed batch of token ids below `vocab`."""
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(5))


def save_rank(save: Path, model: CogViewModel, meta: CheckpointMeta, rank: int, iteration: int = ITERATION) -> None:
    """Write one tp rank's model states like training does (no optimizer)."""
    path = model_states_file(save, iteration, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": model.state_dict(), "iteration": iteration, "cogview": meta.to_dict()}, path)


def save_tp1(save: Path, model: CogViewModel, tokenizers: dict | None = None, iteration: int = ITERATION) -> CheckpointMeta:
    """A complete tp=1 checkpoint of `model`."""
    meta = CheckpointMeta(model=model.config.to_dict(), tensor_parallel_size=1, iteration=iteration,
                          tokenizers=dict(tokenizers or {}))
    save_rank(save, model, meta, 0, iteration)
    write_meta(save, iteration, meta)
    write_trackers(save, iteration)
    return meta


def logits_match(rank: int, world: int, ckpt: str, reference: str, n_real: int) -> None:
    """Load `ckpt` at tp=world and compare gathered logits (first n_real columns) with the saved reference."""
    torch.set_num_threads(1)
    state = ParallelState.build(world)
    model, meta = load_model(ckpt, state)
    assert meta.tensor_parallel_size == world
    ref = torch.load(reference, weights_only=True)
    with torch.no_grad():
        got = model.eval()(ref["tokens"], gather=True)
    torch.testing.assert_close(got[..., :n_real], ref["logits"][..., :n_real], **TOL)


def save_tp_model(rank: int, world: int, config: dict, save: str, reference: str) -> None:
    """Build the model at tp=world (same master weights), save a checkpoint, and its gathered logits (rank 0)."""
    torch.set_num_threads(1)
    cfg = ModelConfig.from_dict(config)
    state = ParallelState.build(world)
    model = CogViewModel(cfg, state).eval()
    meta = CheckpointMeta(model=cfg.to_dict(), tensor_parallel_size=world, iteration=ITERATION)
    save_rank(Path(save), model, meta, state.tp_rank)
    x = tokens(cfg.vocab_size)
    with torch.no_grad():
        logits = model(x, gather=True)
    torch.distributed.barrier()
    if rank == 0:
        write_meta(save, ITERATION, meta)
        write_trackers(save, ITERATION)
        torch.save({"tokens": x, "logits": logits}, reference)
