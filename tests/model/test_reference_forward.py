"""CogViewModel (tp=1) against an fp64 forward written here from the paper's equations, no library code.

Every parameter is redrawn (LayerNorm gains and biases away from 1 and 0, larger weights so attention is
far from uniform), so a LayerNorm applied at the wrong place, swapped with another, or a residual taken
from the wrong tensor changes the logits by O(1e-2..1). Both sides run in fp64 and compute the same sums
in a different order, so they agree to ~1e-13; the tolerance is 1e-9.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_cogview.config import ModelConfig, model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState

TOL = dict(rtol=1e-9, atol=1e-9)


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: ModelConfig, relax: bool) -> torch.Tensor:
    """LayerNorm; PB-relax first rescales each row to a max |x| of target (the scale is a constant)."""
    if relax:
        x = x * (c.pb_relax_ln_target / x.detach().abs().amax(-1, keepdim=True))
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + c.layernorm_epsilon) * w + b


def reference_logits(p: dict[str, torch.Tensor], tokens: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """CogView: h = x + LN3(Attn(LN1(x))), y = h + LN4(MLP(LN2(h))); pre-LN and post-LN for comparison."""
    bsz, s = tokens.shape
    n, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    x = p["word_embeddings.weight"][tokens] + p["transformer.position_embeddings.weight"][:s]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for i in range(c.num_layers):
        param = lambda name: p[f"transformer.layers.{i}.{name}"]  # noqa: E731
        relax = c.pb_relax_layernorm == "all"
        ln = lambda name, t: _ln(t, param(f"{name}.weight"), param(f"{name}.bias"), c, relax)  # noqa: E731

        def attn(t: torch.Tensor) -> torch.Tensor:
            qkv = t @ param("attention.query_key_value.weight").T + param("attention.query_key_value.bias")
            qh, kh, vh = (u.reshape(bsz, s, n, d).transpose(1, 2) for u in qkv.chunk(3, dim=-1))
            scores = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
            ctx = (torch.softmax(scores, -1) @ vh).transpose(1, 2).reshape(bsz, s, n * d)
            return ctx @ param("attention.dense.weight").T + param("attention.dense.bias")

        def mlp(t: torch.Tensor) -> torch.Tensor:
            u = t @ param("mlp.dense_h_to_4h.weight").T + param("mlp.dense_h_to_4h.bias")
            u = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
            return u @ param("mlp.dense_4h_to_h.weight").T + param("mlp.dense_4h_to_h.bias")

        if c.layernorm_order == "sandwich":
            h = x + ln("third_layernorm", attn(ln("input_layernorm", x)))
            x = h + ln("fourth_layernorm", mlp(ln("post_attention_layernorm", h)))
        elif c.layernorm_order == "pre":
            h = x + attn(ln("input_layernorm", x))
            x = h + mlp(ln("post_attention_layernorm", h))
        else:
            h = ln("input_layernorm", x + attn(x))
            x = ln("post_attention_layernorm", h + mlp(h))
    if c.layernorm_order != "post":
        x = _ln(x, p["transformer.final_layernorm.weight"], p["transformer.final_layernorm.bias"], c,
                c.pb_relax_layernorm in ("final", "all"))
    return x @ p["word_embeddings.weight"].T


def _redraw(model: CogViewModel, seed: int) -> None:
    """Every parameter to a fresh draw: gains ~1 +- 0.3, biases ~ +-0.3, weights std 0.15."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * z)
            elif name.endswith("bias"):
                p.copy_(0.3 * z)
            else:
                p.copy_(0.15 * z)


CASES = [
    ("sandwich", "pb-relax", "none"), ("sandwich", "sdpa", "none"), ("sandwich", "plain", "none"),
    ("sandwich", "pb-relax", "all"), ("sandwich", "sdpa", "final"),
    ("pre", "sdpa", "none"), ("pre", "pb-relax", "none"), ("post", "sdpa", "none"), ("post", "plain", "none"),
]


@pytest.mark.parametrize("order,kernel,pb_ln", CASES, ids=["-".join(c) for c in CASES])
def test_model_equals_fp64_reference_logits_and_every_gradient(order: str, kernel: str, pb_ln: str) -> None:
    cfg = model_preset("tiny", layernorm_order=order, attention_kernel=kernel, pb_relax_layernorm=pb_ln,
                       num_layers=3, vocab_size=256)
    model = CogViewModel(cfg, ParallelState.single(), dtype=torch.float64).eval()
    _redraw(model, seed=17)
    ref_params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(18)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    weights = torch.rand(2, 20, generator=g, dtype=torch.float64) + 0.5

    def loss(logits: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), labels.reshape(-1), reduction="none")
        return (ce * weights.reshape(-1)).sum()

    got, ref = model(tokens), reference_logits(ref_params, tokens, cfg)
    assert got.dtype == torch.float64 and ref.std() > 1.0  # far from a degenerate (all-equal) output
    torch.testing.assert_close(got, ref, **TOL)
    loss(got).backward()
    loss(ref).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=lambda m: f"grad {name}: {m}")
