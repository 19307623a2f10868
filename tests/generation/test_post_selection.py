"""CapLoss vs a reference from full logits; reranking keeps the lowest-loss candidates."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.generation import (
    CaptionTemplate,
    GenerationConfig,
    GenerationError,
    caption_loss,
    post_select,
    rerank,
)
from megatron_cogview.model import CogViewModel
from tests.generation.conftest import IMAGE, TEXT

TEMPLATE = CaptionTemplate(head=(1000, 1001), middle=(1002, 1003))


def ref_caption_loss(model: CogViewModel, image: list[int], text: list[int]) -> float:
    """-(1/|t|) sum log p(t_i | image, t_<i) from the full-vocabulary logits of the whole sequence."""
    seq = torch.tensor([[1000, 1001, *image, 1002, 1003, *text]])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq, gather=True)[0].double(), -1)  # [s, V]
    start = 4 + len(image)
    return -sum(logp[start + j - 1, t].item() for j, t in enumerate(text)) / len(text)


def _data(n: int = 5, side: int = 16):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(IMAGE[0], IMAGE[1], (n, side), generator=g)
    texts = [torch.randint(TEXT[0], TEXT[1], (3 + i % 3,), generator=g).tolist() for i in range(n)]
    return images, texts


def test_caption_loss_matches_reference_with_ragged_captions_and_chunks(model: CogViewModel) -> None:
    images, texts = _data()
    got = caption_loss(model, images, texts, TEMPLATE, GenerationConfig(max_inference_batch_size=2))
    ref = torch.tensor([ref_caption_loss(model, images[i].tolist(), texts[i]) for i in range(5)], dtype=torch.float32)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_post_select_keeps_the_best_candidates(model: CogViewModel) -> None:
    images, _ = _data(6)
    captions = [[300, 301, 302], [400, 401]]
    sel = post_select(model, images.view(2, 3, 16), captions, TEMPLATE, keep=2)
    for p in range(2):
        ref = [ref_caption_loss(model, images[p * 3 + j].tolist(), captions[p]) for j in range(3)]
        assert sel.indices[p].tolist() == sorted(range(3), key=lambda j: ref[j])[:2]


def test_rerank_is_stable_and_checks_keep() -> None:
    sel = rerank(torch.tensor([[2.0, 1.0, 1.0, 3.0]]), 3)
    assert sel.indices.tolist() == [[1, 2, 0]]
    with pytest.raises(GenerationError, match="keep"):
        rerank(torch.zeros(1, 4), 5)


def test_caption_loss_errors(model: CogViewModel) -> None:
    images, texts = _data(2)
    with pytest.raises(GenerationError, match="empty"):
        caption_loss(model, images, [texts[0], []], TEMPLATE)
    with pytest.raises(GenerationError, match="captions for"):
        caption_loss(model, images, texts[:1], TEMPLATE)
    with pytest.raises(GenerationError, match="positions"):
        caption_loss(model, torch.zeros(1, 126, dtype=torch.long), [[300]], TEMPLATE)
