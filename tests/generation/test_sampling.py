"""Logits filters and seeded draws vs straightforward per-row reference implementations."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import ConfigError
from megatron_cogview.generation import GenerationConfig, GenerationError, draw_uniforms, process_logits, sample
from megatron_cogview.generation.sampling import sample_inverse_cdf, top_k_filter, top_p_filter


def _logits(b: int = 6, v: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, v, generator=g) * 3
    x[1, :50] = float("-inf")  # a row with masked ids
    x[2] = x[2].round()  # a row with many ties
    return x


def ref_top_k(row: torch.Tensor, k: int) -> torch.Tensor:
    kth = sorted(row.tolist(), reverse=True)[k - 1]
    return torch.tensor([x if x >= kth else float("-inf") for x in row.tolist()])


def ref_top_p(row: torch.Tensor, p: float) -> torch.Tensor:
    probs = torch.softmax(row.double(), 0).tolist()
    order = sorted(range(len(probs)), key=lambda i: -row[i].item())
    keep, mass = set(), 0.0
    for i in order:
        keep.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return torch.tensor([row[i].item() if i in keep else float("-inf") for i in range(len(probs))])


@pytest.mark.parametrize("k", [1, 5, 40, 299])
def test_top_k_matches_per_row_reference(k: int) -> None:
    x = _logits()
    out = top_k_filter(x, k)
    for i in range(x.size(0)):
        torch.testing.assert_close(out[i], ref_top_k(x[i], k), msg=f"row {i}")


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
def test_top_p_matches_per_row_reference(p: float) -> None:
    x = _logits(seed=1)
    x[2] += torch.arange(300) * 1e-3  # break ties: the reference's sort order would be arbitrary
    out = top_p_filter(x, p)
    for i in range(x.size(0)):
        torch.testing.assert_close(out[i], ref_top_p(x[i], p), msg=f"row {i}")
        assert (out[i] > float("-inf")).sum() >= 1


def test_batch_processing_equals_row_by_row() -> None:
    x = _logits(seed=2)
    cfg = GenerationConfig(temperature=0.7, top_k=60, top_p=0.8)
    allowed = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.7
    batch = process_logits(x, cfg, allowed)
    for i in range(x.size(0)):
        torch.testing.assert_close(batch[i : i + 1], process_logits(x[i : i + 1], cfg, allowed[i : i + 1]))


def test_inverse_cdf_follows_the_distribution_and_skips_zero_probability_ids() -> None:
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    u = torch.rand(40000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ids = sample_inverse_cdf(probs.expand(40000, 6), u)
    freq = torch.bincount(ids, minlength=6).double() / 40000
    torch.testing.assert_close(freq, probs.double(), atol=0.01, rtol=0)
    edge = sample_inverse_cdf(probs.expand(3, 6), torch.tensor([0.0, 1 - 1e-16, 0.05], dtype=torch.float64))
    assert edge.tolist() == [1, 4, 1]


def test_greedy_and_masked_sampling() -> None:
    x = _logits(seed=5)
    allowed = torch.zeros(300, dtype=torch.bool)
    allowed[100:120] = True
    greedy = sample(x, GenerationConfig(temperature=0), None, allowed)
    assert greedy.tolist() == [100 + int(x[i, 100:120].argmax()) for i in range(x.size(0))]
    u = draw_uniforms(range(x.size(0)), 1)[:, 0]
    drawn = sample(x, GenerationConfig(top_k=3), u, allowed)
    for i, t in enumerate(drawn.tolist()):
        assert t in x[i, 100:120].topk(3).indices.add(100).tolist()


def test_uniforms_are_per_sample() -> None:
    a = draw_uniforms([7, 8, 9], 50)
    b = draw_uniforms([9, 1], 50)
    torch.testing.assert_close(a[2], b[0])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("field,value,needle", [
    ("temperature", -1.0, "temperature"), ("top_k", -3, "top_k"), ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"), ("max_inference_batch_size", 0, "max_inference_batch_size"), ("seed", -1, "seed"),
])
def test_config_errors_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(GenerationError, match=needle) as e:
        GenerationConfig(**{field: value})
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
