"""Single-process model tests: kernels, PB-relax numerics, cache, checkpointing, fused loss, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_cogview.config import ConfigError, ModelConfig, model_preset
from megatron_cogview.model import CogViewModel, LayerNorm, ModelInputError, attend, count_parameters
from megatron_cogview.model.attention import AttentionArgs
from megatron_cogview.model.masks import causal_mask
from megatron_cogview.parallel import ParallelState

KERNELS = ("sdpa", "pb-relax", "plain")


def tiny(**kw) -> ModelConfig:
    return model_preset("tiny", **kw)


def prefix_mask(prefix_len: torch.Tensor | int, seq_len: int) -> torch.Tensor:
    """Bool [b, 1, s, s] (or [s, s]): bidirectional inside the first prefix_len tokens, causal after."""
    base = causal_mask(seq_len)
    k = torch.arange(seq_len)
    if isinstance(prefix_len, int):
        return base | (k < prefix_len).unsqueeze(0)
    in_prefix = k.unsqueeze(0) < prefix_len.view(-1, 1)  # [b, s] key inside its row's prefix
    return (base.unsqueeze(0) | in_prefix.unsqueeze(1)).unsqueeze(1)


def reference_attention(q, k, v, mask):
    """fp64 textbook attention."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernels_agree_in_fp32(kernel: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g) for _ in range(3))
    ref = reference_attention(q, k, v, causal_mask(9))
    out = attend(kernel, q, k, v, AttentionArgs(causal=True))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    # explicit prefix mask (bidirectional over the first 4 tokens), causal off
    pm = prefix_mask(4, 9)
    out = attend(kernel, q, k, v, AttentionArgs(causal=False, mask=pm))
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, pm), rtol=1e-5, atol=1e-6)
    # one new query against a longer cache: sees every key
    out = attend(kernel, q[:, :, -1:], k, v, AttentionArgs(causal=True))
    torch.testing.assert_close(out.double(), ref[:, :, -1:], rtol=1e-5, atol=1e-6)


def test_pb_relax_attention_survives_fp16_scores_beyond_65504() -> None:
    g = torch.Generator().manual_seed(1)
    d, alpha = 64, 32.0
    q = torch.randn(1, 2, 16, d, generator=g) * 250
    k = torch.randn(1, 2, 16, d, generator=g) * 250
    v = torch.randn(1, 2, 16, d, generator=g)
    scaled = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
    assert (scaled.abs() > 65504).float().mean() > 0.2, "the test needs Q K^T / sqrt(d) beyond the fp16 range"
    ref = reference_attention(q, k, v, causal_mask(16))
    q16, k16, v16 = q.half(), k.half(), v.half()
    args = AttentionArgs(causal=True)
    plain = attend("plain", q16, k16, v16, args)
    assert not torch.isfinite(plain).all(), "plain fp16 attention was expected to overflow"
    # PB-relax without the row-max subtraction: the 1/alpha scale alone does not help, since the
    # scores are multiplied back by alpha before the softmax
    s = (q16 * (1.0 / (alpha * math.sqrt(d)))) @ k16.transpose(-1, -2)
    no_row_max = torch.softmax(s.masked_fill(~causal_mask(16), float("-inf")) * alpha, -1) @ v16
    assert not torch.isfinite(no_row_max).all(), "PB-relax without the row max was expected to overflow"
    relaxed = attend("pb-relax", q16, k16, v16, args, alpha=alpha)
    assert torch.isfinite(relaxed).all()
    # fp16 has 11 bits of mantissa; the softmax here is nearly one-hot, so outputs (|v| ~ 1) carry
    # about 1e-3 error from the fp16 inputs and products (measured 1e-3): 2e-2 absolute is a safe bound.
    torch.testing.assert_close(relaxed.double(), ref, rtol=0, atol=2e-2)


def test_layernorm_in_fp16_on_large_activations() -> None:
    # Values up to 6e4 square far beyond 65504. torch's LayerNorm kernels accumulate half inputs in
    # fp32, so the plain LayerNorm stays finite too; PB-relax (rescale first) must do no worse.
    g = torch.Generator().manual_seed(2)
    x16 = (torch.randn(4, 7, 256, generator=g) * 2e4).clamp(-6e4, 6e4).half()
    assert x16.abs().max() > 5e4
    ref = F.layer_norm(x16.double(), (256,), eps=1e-5)
    for relax in (False, True):
        out = LayerNorm(256, pb_relax=relax, dtype=torch.float16)(x16)
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
        # LN output is O(1); fp16 rounding of the (rescaled) input and the output costs ~1e-3 per element.
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-2)


def test_pb_relax_layernorm_normalises_the_rescaled_row() -> None:
    # PB-relax LayerNorm is LN(x * target / max|x|) with a constant (detached) scale, so it is exactly
    # scale invariant: epsilon acts at the rescaled size, where a plain LayerNorm's epsilon swamps
    # rows of small variance. fp64 closed form, tolerance 1e-12.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 5, 64, generator=g, dtype=torch.float64)
    relaxed = LayerNorm(64, pb_relax=True, target_max=8.0, dtype=torch.float64)
    plain = LayerNorm(64, dtype=torch.float64)
    with torch.no_grad():
        for ln in (relaxed, plain):
            ln.weight.copy_(1 + 0.3 * torch.randn(64, generator=g, dtype=torch.float64))
            ln.bias.copy_(0.3 * torch.randn(64, generator=g, dtype=torch.float64))
    for scale in (1e-4, 1.0, 1e4):
        x = (base * scale).requires_grad_(True)
        expect = F.layer_norm(x * (8.0 / x.detach().abs().amax(-1, keepdim=True)), (64,), relaxed.weight,
                              relaxed.bias, 1e-5)
        got = relaxed(x)
        torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, relaxed(base), rtol=1e-12, atol=1e-12)  # same at every scale
        (gx,) = torch.autograd.grad((got * base).sum(), x)
        (ex,) = torch.autograd.grad((expect * base).sum(), x)
        torch.testing.assert_close(gx, ex, rtol=1e-12, atol=1e-12 / scale)
    small = base * 1e-4  # variance 1e-8 << eps: a plain LayerNorm shrinks the row towards its bias
    assert (plain(small) - plain(base)).abs().max() > 0.5


def test_cogview_4b_parameter_count() -> None:
    assert count_parameters(model_preset("cogview-4b")) == 3_928_849_920


def test_layernorm_orders_and_state_dict_names() -> None:
    counts = {}
    for order in ("sandwich", "pre", "post"):
        model = CogViewModel(tiny(layernorm_order=order), ParallelState.single())
        counts[order] = sum(1 for n in model.state_dict() if n.endswith("layernorm.weight"))
        logits = model(torch.randint(0, 1024, (2, 10)))
        assert logits.shape == (2, 10, 1024) and torch.isfinite(logits).all()
    L = tiny().num_layers
    assert counts == {"sandwich": 4 * L + 1, "pre": 2 * L + 1, "post": 2 * L}
    keys = set(CogViewModel(tiny(), ParallelState.single()).state_dict())
    for name in (
        "word_embeddings.weight", "transformer.position_embeddings.weight",
        "transformer.layers.1.input_layernorm.weight", "transformer.layers.1.attention.query_key_value.weight",
        "transformer.layers.1.attention.dense.bias", "transformer.layers.1.post_attention_layernorm.bias",
        "transformer.layers.1.third_layernorm.weight", "transformer.layers.1.fourth_layernorm.weight",
        "transformer.layers.1.mlp.dense_h_to_4h.weight", "transformer.layers.1.mlp.dense_4h_to_h.weight",
        "transformer.final_layernorm.weight",
    ):
        assert name in keys, name


def test_init_statistics_follow_the_paper() -> None:
    cfg = model_preset("base", num_layers=12, vocab_size=4096)
    model = CogViewModel(cfg, ParallelState.single())
    layer = model.transformer.layers[0]
    std_in = layer.attention.query_key_value.weight.std().item()
    std_out = layer.mlp.dense_4h_to_h.weight.std().item()
    assert abs(std_in - 0.02) < 1e-3
    assert abs(std_out - 0.02 / math.sqrt(24)) < 2e-4


@pytest.mark.parametrize("kernel", KERNELS)
def test_kv_cache_decoding_equals_full_forward(kernel: str) -> None:
    cfg = tiny(attention_kernel=kernel, num_layers=3, max_position_embeddings=80)
    model = CogViewModel(cfg, ParallelState.single()).eval()
    tokens = torch.randint(0, cfg.vocab_size, (3, 72), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)  # [b, 72, V]
        cache = model.new_cache(3, 72)
        prefix = 8
        steps = [model(tokens[:, :prefix], cache=cache)]
        for t in range(prefix, 72):  # 64 single-token steps
            steps.append(model(tokens[:, t : t + 1], cache=cache))
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental, full, rtol=1e-5, atol=1e-5)
    assert cache.length == 72


@pytest.mark.parametrize("kernel", KERNELS)
def test_activation_checkpointing_reproduces_dropout(kernel: str) -> None:
    grads = []
    for ckpt in (False, True):
        cfg = tiny(attention_kernel=kernel, hidden_dropout=0.1, attention_dropout=0.1, checkpoint_activations=ckpt)
        model = CogViewModel(cfg, ParallelState.single()).train()
        g = torch.Generator().manual_seed(4)
        tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
        labels = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
        model.lm_loss(tokens, labels, torch.ones(2, 24)).total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_dropout_is_active_and_seeded() -> None:
    cfg = tiny(hidden_dropout=0.3, attention_dropout=0.3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    a = CogViewModel(cfg, ParallelState.single()).train()
    b = CogViewModel(cfg, ParallelState.single()).train()
    first = a(tokens)
    assert torch.equal(first, b(tokens)), "same seed must give the same dropout masks"
    assert not torch.equal(first, a(tokens)), "the stream must advance between steps"
    a.eval()
    assert torch.equal(a(tokens), a(tokens))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_matches_full_logits_cross_entropy(dtype: torch.dtype) -> None:
    cfg = tiny()
    model = CogViewModel(cfg, ParallelState.single(), dtype=dtype)
    model.loss_chunk_elements = 6 * cfg.vocab_size  # 40 tokens in chunks of 6 (ragged last chunk)
    g = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, 20), generator=g)
    weights = torch.rand(2, 20, generator=g) * 5
    out = model.lm_loss(tokens, labels, weights)
    out.total.backward()
    fused = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(tokens).float()
    ce = F.cross_entropy(logits.view(-1, cfg.vocab_size), labels.view(-1), reduction="none").view(2, 20)
    (ce * weights).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.per_token, ce.detach(), **tol)
    torch.testing.assert_close(out.total, (ce * weights).sum().detach(), **tol)
    for n, p in model.named_parameters():
        scale = p.grad.float().abs().max().clamp_min(1e-6)
        torch.testing.assert_close(fused[n] / scale, p.grad.float() / scale, **tol, msg=n)


def test_masks() -> None:
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    pm = prefix_mask(torch.tensor([2, 0]), 3)
    assert pm.shape == (2, 1, 3, 3)
    assert pm[0, 0].tolist() == [[True, True, False], [True, True, False], [True, True, True]]
    assert pm[1, 0].tolist() == causal_mask(3).tolist()


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by num_attention_heads=3"):
        ModelConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ConfigError, match="attention_kernel='flash' is not one of"):
        ModelConfig(attention_kernel="flash")  # type: ignore[arg-type]
    model = CogViewModel(tiny(), ParallelState.single())
    with pytest.raises(ModelInputError, match=r"token ids span \[0, 1024\] but the vocabulary is \[0, 1023\]"):
        model(torch.tensor([[0, 1024]]))
    with pytest.raises(ModelInputError, match="position 128 is outside the position table of 128 rows"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ConfigError, match="vocab_size=1000 is not divisible by tensor-parallel size 3"):
        tiny(vocab_size=1000, num_attention_heads=3, hidden_size=48).check_tensor_parallel(3)


def test_fused_loss_under_bf16_autocast_matches_reference() -> None:
    cfg = tiny()
    model = CogViewModel(cfg, ParallelState.single())
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    weights = torch.ones(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.lm_loss(tokens, labels, weights)
    out.total.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 master weights keep fp32 grads
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
    ce = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), labels.view(-1), reduction="sum")
    ce.backward()
    torch.testing.assert_close(out.total, ce.detach(), rtol=2e-2, atol=2e-2)
    for n, p in model.named_parameters():
        scale = p.grad.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(fused[n] / scale, p.grad / scale, rtol=5e-2, atol=5e-2, msg=n)
