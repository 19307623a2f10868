"""KV-cached batched decoding vs uncached per-prompt references; modality masks; seeds; early stops."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.config import ConfigError
from megatron_cogview.generation import (
    GenerationConfig,
    GenerationError,
    decode,
    generate_image_codes,
    generate_text,
    range_logits,
)
from megatron_cogview.model import CogViewModel
from tests.generation.conftest import IMAGE, TEXT
from tests.generation.reference import allowed_mask, uncached_generate

PROMPTS = [[957, 300, 301, 302, 960, 958], [957, 420, 960, 958], [957, 500, 501, 960, 958], [957, 640, 641, 642, 643, 960, 958]]
SAMPLING = GenerationConfig(temperature=0.9, top_k=40, top_p=0.95, seed=10, max_inference_batch_size=3)


@pytest.mark.parametrize("config", [GenerationConfig(temperature=0, max_inference_batch_size=3), SAMPLING],
                         ids=["greedy", "sampled"])
def test_cached_batched_equals_uncached_reference(model: CogViewModel, config: GenerationConfig) -> None:
    steps = 24
    got = decode(model, PROMPTS, steps, config, allowed=[IMAGE], seeds=[5, 6, 7, 8])
    mask = allowed_mask(model.config.vocab_size, [IMAGE])
    for i, prompt in enumerate(PROMPTS):
        assert got.row(i) == uncached_generate(model, prompt, steps, config, mask, seed=5 + i), f"prompt {i}"


def test_full_vocabulary_decoding_equals_reference(model: CogViewModel) -> None:
    config = GenerationConfig(temperature=0)
    got = decode(model, PROMPTS[:2], 10, config)
    for i in range(2):
        assert got.row(i) == uncached_generate(model, PROMPTS[i], 10, config, None, seed=0)


def test_masks_never_let_a_wrong_modality_token_through(model: CogViewModel) -> None:
    prompts = [PROMPTS[i % 4] for i in range(24)]
    hot = GenerationConfig(temperature=3.0, seed=1, max_inference_batch_size=8)  # flat: every id is likely
    codes = generate_image_codes(model, prompts, 48, IMAGE, hot)
    assert codes.shape == (24, 48) and int(codes.min()) >= 0 and int(codes.max()) < IMAGE[1]
    assert codes.unique().numel() > 200  # the draw covers the image range, so the mask is what holds it in
    gaps = decode(model, prompts, 32, hot, allowed=[(300, 310), (700, 705), (1000, 1001)])
    ids = gaps.tokens.unique().tolist()
    assert set(ids) <= set(range(300, 310)) | set(range(700, 705)) | {1000} and len(ids) == 16


def test_same_seed_same_tokens_alone_or_in_any_batch(model: CogViewModel) -> None:
    seeds = [11, 12, 13, 14]
    batch = generate_image_codes(model, PROMPTS, 32, IMAGE, SAMPLING, seeds)
    again = generate_image_codes(model, PROMPTS, 32, IMAGE, SAMPLING.replace(max_inference_batch_size=1), seeds)
    assert torch.equal(batch, again)
    for i in range(4):
        alone = generate_image_codes(model, [PROMPTS[i]], 32, IMAGE, SAMPLING, [seeds[i]])
        assert torch.equal(alone[0], batch[i]), f"sample {i} changed with its batch"
    other = generate_image_codes(model, PROMPTS, 32, IMAGE, SAMPLING, [s + 100 for s in seeds])
    assert not torch.equal(other, batch)


def test_rows_that_stop_early_match_the_reference(model: CogViewModel) -> None:
    config = GenerationConfig(temperature=1.0, seed=3, max_inference_batch_size=4)
    text, stop = (TEXT[0], TEXT[0] + 6), 1000  # 7 choices: most rows stop within a few steps
    prompts = [PROMPTS[i % 4] for i in range(8)]
    got = generate_text(model, prompts, 20, text, config, stop_ids=[stop], seeds=list(range(8)))
    mask = allowed_mask(model.config.vocab_size, [text, (stop, stop + 1)])
    lengths = []
    for i, prompt in enumerate(prompts):
        ref = uncached_generate(model, prompt, 20, config, mask, seed=i, stop_ids=[stop])
        lengths.append(len(ref))
        assert got[i] == [t for t in ref if t != stop], f"prompt {i}"
    assert min(lengths) < 20 and len(set(lengths)) > 2, "the test needs rows that stop at different steps"


def test_range_logits_equal_a_slice_of_full_logits(model: CogViewModel) -> None:
    hidden = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    full = model.logits(hidden, gather=True)
    for lo, hi in [(0, 256), (256, 960), (100, 101), (0, 1024)]:
        torch.testing.assert_close(range_logits(model, hidden, lo, hi), full[..., lo:hi])


def test_user_errors_are_config_errors_with_one_line(model: CogViewModel) -> None:
    cases = [
        (lambda: decode(model, [[1] * 120], 10, SAMPLING), "positions"),
        (lambda: decode(model, [[1, 5000]], 4, SAMPLING), "outside the vocabulary"),
        (lambda: decode(model, [[]], 4, SAMPLING), "empty"),
        (lambda: decode(model, [[1]], 4, SAMPLING, allowed=[(10, 5)]), "range"),
        (lambda: decode(model, [[1], [2]], 4, SAMPLING, seeds=[1]), "seeds"),
        (lambda: generate_image_codes(model, [[1]], 4, (0, 4096), SAMPLING), "image id range"),
    ]
    for fn, needle in cases:
        with pytest.raises(GenerationError, match=needle) as e:
            fn()
        assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)


def test_chunks_respect_the_batch_cap_and_stopped_rows_leave_the_cache(model: CogViewModel, monkeypatch) -> None:
    caches = []
    new_cache = model.new_cache

    def recording(batch_size: int, max_len: int | None = None, dtype=None):
        caches.append(new_cache(batch_size, max_len, dtype))
        return caches[-1]

    def full_logits_forbidden(*args, **kwargs):
        raise AssertionError("a range-restricted step must not project onto the whole vocabulary")

    monkeypatch.setattr(model, "new_cache", recording)
    monkeypatch.setattr(model, "logits", full_logits_forbidden)
    generate_image_codes(model, PROMPTS * 2, 6, IMAGE, SAMPLING)  # 8 rows, cap 3
    assert [c.batch_size for c in caches] == [3, 3, 2]
    caches.clear()
    config = GenerationConfig(temperature=1.0, seed=3, max_inference_batch_size=8)
    got = generate_text(model, PROMPTS * 2, 20, (TEXT[0], TEXT[0] + 3), config, stop_ids=[1000])
    assert caches[0].batch_size < 8 and min(len(t) for t in got) < 19
