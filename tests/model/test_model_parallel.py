"""Tensor-parallel CogViewModel == the tp=1 model from the same master weights (spawned gloo ranks).

fp32 tolerance rtol 1e-4 / atol 1e-5: sharding reorders fp32 sums in every row-parallel reduction and
in the softmax denominators, and those differences are amplified through 2 layers of LayerNorms;
observed errors are ~1e-6, while a wrong shard or a missing reduction gives O(1e-2..1) errors.
"""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import model_preset
from megatron_cogview.model import CogViewModel, attend
from megatron_cogview.model.attention import AttentionArgs
from megatron_cogview.parallel import ParallelState, is_parallel_param, shard
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


def _peers(t: torch.Tensor, state: ParallelState) -> list[torch.Tensor]:
    """`t` as held by every tp rank, in rank order."""
    parts = [torch.empty_like(t) for _ in range(state.tp_size)]
    torch.distributed.all_gather(parts, t.contiguous(), group=state.tp_group)
    return parts


def _assert_same_on_peers(t: torch.Tensor, state: ParallelState, what: str) -> None:
    parts = _peers(t, state)
    assert all(torch.equal(parts[0], x) for x in parts[1:]), f"{what} differs across tp peers"


def _dropout_streams(rank: int, world: int, tp: int) -> None:
    # Hidden and embedding dropout act on tensors every tp rank holds in full: they must draw the same mask
    # on all peers (replicated stream), or the replicated activations, the LayerNorm gradients and then
    # the LayerNorm weights drift apart. Attention dropout acts on each rank's own heads: other masks.
    state = ParallelState.build(tp)
    for kernel in ("pb-relax", "sdpa"):
        cfg = _config(kernel, hidden_dropout=0.3, attention_dropout=0.3)
        model = CogViewModel(cfg, state).train()
        tokens, labels, weights = _batch(cfg.vocab_size)
        acts: list[tuple[str, torch.Tensor]] = []
        for i, layer in enumerate(model.transformer.layers):
            layer.register_forward_hook(lambda m, a, out, i=i: acts.append((f"layer {i} output", out.detach())))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        replicated = [(n, p) for n, p in model.named_parameters() if not is_parallel_param(p)]
        assert sum("layernorm" in n for n, _ in replicated) == 2 * (4 * cfg.num_layers + 1)  # weights, biases
        for step in range(3):
            acts.clear()
            hidden = model.hidden_states(tokens)
            with torch.no_grad():
                assert not torch.equal(hidden, model.eval().hidden_states(tokens)), "dropout was not active"
            model.train()
            for what, value in [*acts, ("final hidden states", hidden.detach())]:
                _assert_same_on_peers(value, state, f"{kernel} step {step}: {what}")
            model.lm_loss(tokens, labels, weights).total.backward()
            for name, p in replicated:
                _assert_same_on_peers(p.grad, state, f"{kernel} step {step}: gradient of {name}")
            optimizer.step()
            optimizer.zero_grad()
        for name, p in replicated:
            _assert_same_on_peers(p.detach(), state, f"{kernel} after 3 steps: {name}")
        # the same q, k, v on every rank: the model-parallel stream draws another attention mask per rank
        g = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(2, 2, 12, 16, generator=g) for _ in range(3))
        args = AttentionArgs(causal=True, dropout_p=0.3, training=True, tracker=model.rng)
        out = attend(kernel, q, k, v, args)
        assert not torch.equal(out, attend(kernel, q, k, v, AttentionArgs(causal=True))), "no attention dropout"
        parts = _peers(out, state)
        assert not torch.equal(parts[0], parts[1]), f"{kernel}: attention dropout masks are equal across tp ranks"


@pytest.mark.parametrize("world,tp", [(2, 2), (4, 4)], ids=["tp2", "tp4"])
def test_tensor_parallel_model_equals_serial(world: int, tp: int) -> None:
    run_distributed(_model_equals_serial, world, tp)


def test_kv_cache_with_tensor_parallelism() -> None:
    run_distributed(_cache_equals_full, 2, 2)


def test_activation_checkpointing_with_dropout_under_tp() -> None:
    run_distributed(_checkpointing_with_dropout, 2, 2)


def test_dropout_streams_under_tp_keep_replicated_state_identical() -> None:
    run_distributed(_dropout_streams, 2, 2)
