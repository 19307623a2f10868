"""Three-region sparse attention: the kernel equals a hand-written fp64 reference of the pattern, pivots are
sampled as specified and reproducibly, a window covering the sequence is causal attention, tp 2 == tp 1."""
from __future__ import annotations

import math

import pytest
import torch

from megatron_cogview.config import ConfigError, model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.model.sparse import SparsePattern, sample_pattern, sparse_attention
from megatron_cogview.parallel import ParallelState
from tests.distributed import run_distributed

IMAGE_IDS = 256  # the tiny preset's vocabulary: ids < 256 are image codes here


def _config(**overrides):  # type: ignore[no-untyped-def]
    base = dict(attention_kernel="sparse", sparse_backend="sdpa", sparse_num_pivot=8, sparse_window=4,
                sparse_image_tokens=IMAGE_IDS, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return model_preset("tiny", **base)


def _tokens(b: int = 2, s: int = 24, text: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, IMAGE_IDS, (b, s), generator=g)
    tokens[:, :text] = torch.randint(IMAGE_IDS, 900, (b, text), generator=g)  # a text prefix
    return tokens


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
    """fp64, loop over keys: the three regions as written in the paper's appendix."""
    q, k, v = q.double(), k.double(), v.double()
    b, n, s, d = q.shape
    scores = torch.full((b, n, s, s), float("-inf"), dtype=torch.float64)
    for i in range(s):
        for j in range(i + 1):
            in_window = i - j < pattern.window
            for r in range(b):
                if in_window or bool(pattern.pivots[r, j]):
                    bonus = pattern.correction if (bool(pattern.sampled[r, j]) and not in_window) else 0.0
                    scores[r, :, i, j] = (q[r, :, i] * k[r, :, j]).sum(-1) / math.sqrt(d) + bonus
    return torch.softmax(scores, dim=-1) @ v


def test_pattern_samples_image_pivots_up_to_the_budget_and_keeps_all_text() -> None:
    cfg = _config(sparse_num_pivot=9)
    tokens = _tokens(b=3, s=40, text=4)
    p = sample_pattern(tokens, cfg, torch.Generator().manual_seed(1))
    is_text = tokens >= IMAGE_IDS
    assert torch.equal(p.pivots & is_text, is_text)  # every text token is a pivot
    assert not (p.sampled & is_text).any()  # only image tokens are sampled
    assert p.pivots.sum(1).tolist() == [9, 9, 9]
    assert math.isclose(p.correction, math.log(40 / 9))
    again = sample_pattern(tokens, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(again.sampled, p.sampled)  # reproducible from the stream
    other = sample_pattern(tokens, cfg, torch.Generator().manual_seed(2))
    assert not torch.equal(other.sampled, p.sampled)
    assert not torch.equal(p.sampled[0], p.sampled[1])  # drawn per sequence


@pytest.mark.parametrize("backend", ["sdpa", pytest.param("flex", marks=pytest.mark.slow)])
def test_kernel_equals_fp64_reference_forward_and_backward(backend: str) -> None:
    g = torch.Generator().manual_seed(3)
    b, n, s, d = 2, 2, 20, 8
    q, k, v = (torch.randn(b, n, s, d, generator=g, requires_grad=True) for _ in range(3))
    pattern = sample_pattern(_tokens(b, s, text=2), _config(sparse_num_pivot=6, sparse_window=5, sparse_backend=backend),
                             torch.Generator().manual_seed(4))
    assert pattern.sampled.any() and (~pattern.pivots).any()  # the probe exercises all three regions
    ref = _reference(q, k, v, pattern)
    if backend == "flex":  # torch has no FlexAttention backward on CPU: forward only here (gpu_validate: CUDA)
        out = sparse_attention(q.detach(), k.detach(), v.detach(), pattern)
        torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
        return
    out = sparse_attention(q, k, v, pattern)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, (q, k, v), grad_out.double())
    for a, w in zip(got, want):
        torch.testing.assert_close(a.double(), w.double(), rtol=1e-5, atol=1e-6)


def test_window_covering_the_sequence_is_causal_attention() -> None:
    tokens = _tokens(s=24)
    sparse = CogViewModel(_config(sparse_window=32), ParallelState.single()).train()
    dense = CogViewModel(model_preset("tiny", hidden_dropout=0.0, attention_dropout=0.0), ParallelState.single()).train()
    labels, weights = tokens.roll(-1, 1), torch.ones(tokens.shape)
    a, b = sparse.lm_loss(tokens, labels, weights).total, dense.lm_loss(tokens, labels, weights).total
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for (name, pa), pb in zip(sparse.named_parameters(), dense.parameters()):
        # different fp32 kernels (dense CPU training takes block_causal_attention): rounding-level differences,
        # measured <= 6e-7 of each tensor's largest gradient
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=2e-6 * float(pb.grad.abs().max()), msg=name)


def test_sparse_training_differs_from_dense_and_eval_is_dense() -> None:
    tokens = _tokens(s=24)
    sparse = CogViewModel(_config(), ParallelState.single())
    dense = CogViewModel(model_preset("tiny", hidden_dropout=0.0, attention_dropout=0.0), ParallelState.single())
    train_sparse = sparse.train().hidden_states(tokens)
    assert not torch.allclose(train_sparse, dense.train().hidden_states(tokens), atol=1e-4)
    with torch.no_grad():  # evaluation and generation use dense causal attention
        torch.testing.assert_close(sparse.eval().hidden_states(tokens), dense.eval().hidden_states(tokens))


def _tp_equals_serial(rank: int, world: int) -> None:
    cfg = _config()
    tokens = _tokens(s=24)
    losses, grads = [], []
    for state in (ParallelState.build(2), ParallelState.single()):
        model = CogViewModel(cfg, state).train()
        loss = model.lm_loss(tokens, tokens.roll(-1, 1), torch.ones(tokens.shape)).total
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.transformer.final_layernorm.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_tp2_sparse_equals_tp1() -> None:
    run_distributed(_tp_equals_serial, 2, timeout=120)


@pytest.mark.parametrize("overrides,needle", [
    (dict(sparse_window=2000), "covers the whole sequence"),
    (dict(sparse_backend="flex", attention_dropout=0.1), "FlexAttention has no attention dropout"),
    (dict(sparse_num_pivot=0), "sparse_num_pivot=0 must be a positive integer"),
])
def test_bad_settings_are_one_line_config_errors(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _config(**overrides)
