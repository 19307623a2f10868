"""Tensor-parallel CogViewModel == the tp=1 model from the same master weights (spawned gloo ranks).

fp32 tolerance rtol 1e-4 / atol 1e-5: sharding reorders fp32 sums in every row-parallel reduction and
in the softmax denominators, and those differences are amplified through 2 layers of LayerNorms;
observed errors are ~1e-6, while a wrong shard or a missing reduction gives O(1e-2..1) errors.
"""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState, shard
from tests.distributed import run_distributed

TOL = dict(rtol=1e-4, atol=1e-5)


def _config(kernel: str, **kw):
    return model_preset("tiny", attention_kernel=kernel, **kw)


def _batch(vocab: int, b: int = 2, s: int = 24):
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, vocab, (b, s), generator=g)
    labels = torch.randint(0, vocab, (b, s), generator=g)
    weights = torch.rand(b, s, generator=g) + 0.5
    return tokens, labels, weights


def _compare_grads(par: CogViewModel, ref: CogViewModel, state: ParallelState, kernel: str) -> None:
    ref_params = dict(ref.named_parameters())
    for name, p in par.named_parameters():
        full = ref_params[name].grad
        if getattr(p, "tensor_model_parallel", False):
            expect = shard(full, p.partition_dim, state.tp_size, state.tp_rank, p.partition_stride)
        else:
            expect = full
        torch.testing.assert_close(p.grad, expect, **TOL, msg=lambda m: f"{kernel} grad {name}: {m}")


def _model_equals_serial(rank: int, world: int, tp: int) -> None:
    state = ParallelState.build(tp)
    for kernel in ("sdpa", "pb-relax", "plain"):
        cfg = _config(kernel)
        par, ref = CogViewModel(cfg, state), CogViewModel(cfg, ParallelState.single())
        par.loss_chunk_elements = 7 * cfg.vocab_size // tp  # several chunks of 7 tokens, a ragged last one
        tokens, labels, weights = _batch(cfg.vocab_size)
        # logits, gathered over the vocab
        torch.testing.assert_close(par(tokens, gather=True), ref(tokens), **TOL)
        # fused loss and every parameter gradient
        lp, lr = par.lm_loss(tokens, labels, weights), ref.lm_loss(tokens, labels, weights)
        torch.testing.assert_close(lp.per_token, lr.per_token, **TOL)
        lp.total.backward()
        lr.total.backward()
        _compare_grads(par, ref, state, kernel)


def _cache_equals_full(rank: int, world: int, tp: int) -> None:
    state = ParallelState.build(tp)
    for kernel in ("sdpa", "pb-relax", "plain"):
        cfg = _config(kernel, max_position_embeddings=72)
        model = CogViewModel(cfg, state).eval()
        tokens, _, _ = _batch(cfg.vocab_size, b=3, s=72)
        with torch.no_grad():
            full = model(tokens, gather=True)
            cache = model.new_cache(3, 72)
            steps = [model(tokens[:, :8], cache=cache, gather=True)]
            steps += [model(tokens[:, t : t + 1], cache=cache, gather=True) for t in range(8, 72)]
        torch.testing.assert_close(torch.cat(steps, 1), full, **TOL)


def _checkpointing_with_dropout(rank: int, world: int, tp: int) -> None:
    state = ParallelState.build(tp)
    grads = []
    for ckpt in (False, True):
        cfg = _config("sdpa", hidden_dropout=0.2, attention_dropout=0.2, checkpoint_activations=ckpt)
        model = CogViewModel(cfg, state).train()
        tokens, labels, weights = _batch(cfg.vocab_size)
        model.lm_loss(tokens, labels, weights).total.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("world,tp", [(2, 2), (4, 4)], ids=["tp2", "tp4"])
def test_tensor_parallel_model_equals_serial(world: int, tp: int) -> None:
    run_distributed(_model_equals_serial, world, tp)


def test_kv_cache_with_tensor_parallelism() -> None:
    run_distributed(_cache_equals_full, 2, 2)


def test_activation_checkpointing_with_dropout_under_tp() -> None:
    run_distributed(_checkpointing_with_dropout, 2, 2)
