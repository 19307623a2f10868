"""UnifiedTokenizer and split(): decoding mixed sequences back into parts inverts every template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tokenization.shapes import shape_images
from tokenization.errors import TokenizationError
from tokenization.image import ImageTokenizer
from tokenization.layout import TokenLayout
from tokenization.templates import image_to_text, pure_text, super_resolution, text_to_image
from tokenization.text import TextTokenizer
from tokenization.unified import UnifiedTokenizer, split_sequence

L = TokenLayout()


def _kinds(parts, layout=L):
    return [p.name(layout) if p.kind == "command" else p.kind for p in parts]


def test_split_inverts_every_template() -> None:
    text = np.array([3, 1, 4, 1, 5])
    grid = np.arange(64).reshape(8, 8) * 3
    low = np.arange(16).reshape(4, 4)
    seq = text_to_image(L, text, grid, 90)
    parts = split_sequence(L, seq.tokens)
    assert _kinds(parts) == ["[ROI1]", "text", "[BASE]", "[BOI1]", "image", "[EOI1]"]
    assert parts[1].raw(L).tolist() == text.tolist() and parts[4].raw(L).tolist() == grid.reshape(-1).tolist()
    assert np.array_equal(np.concatenate([p.ids for p in parts]), seq.tokens[: 4 + 5 + 64])
    assert _kinds(split_sequence(L, seq.tokens, keep_padding=True))[-1] == "[PAD]"
    assert _kinds(split_sequence(L, image_to_text(L, grid, text, 80).tokens)) == [
        "[BASE]",
        "[BOI1]",
        "image",
        "[EOI1]",
        "[ROI1]",
        "text",
    ]
    sr = split_sequence(L, super_resolution(L, text, low, grid, 100).tokens)
    assert _kinds(sr) == [
        "[ROI1]",
        "text",
        "[BASE]",
        "[BOI1]",
        "image",
        "[EOI1]",
        "[ROI2]",
        "[BASE]",
        "[BOI2]",
        "image",
        "[EOI2]",
    ]
    assert sr[4].raw(L).tolist() == list(range(16)) and sr[9].raw(L).tolist() == grid.reshape(-1).tolist()
    assert _kinds(split_sequence(L, pure_text(L, text, 10).tokens)) == ["[ROI1]", "text"]
    assert split_sequence(L, []) == []
    with pytest.raises(TokenizationError, match="outside this layout"):
        split_sequence(L, [L.num_tokens])


def test_unified_with_real_tokenizers(text_model: Path, trained_vqvae: Path) -> None:
    text = TextTokenizer(text_model)
    image = ImageTokenizer.from_pretrained(trained_vqvae)
    layout = TokenLayout(num_image_tokens=image.num_codes, num_text_tokens=text.vocab_size)
    uni = UnifiedTokenizer(text, image, layout)
    assert uni.layout == UnifiedTokenizer.for_tokenizers(text, image).layout
    caption = "一只可爱的小猫\na cartoon cat"
    ids = uni.encode_text(caption)
    assert all(layout.is_text(np.array(ids))) and uni.decode_text(ids) == caption
    pictures = shape_images(2, seed=9)
    grids = uni.encode_image(pictures)
    assert grids.shape == (2, 8, 8) and bool(layout.is_image(grids).all())
    seq = text_to_image(layout, text.encode(caption), grids[0], 100)
    assert uni.texts(seq.tokens) == [caption]
    assert [g.tolist() for g in uni.image_codes(seq.tokens)] == [grids[0].tolist()]
    assert uni.describe(seq.tokens) == "[ROI1] 一只可爱的小猫\\na cartoon cat [BASE] [BOI1] <image 8x8> [EOI1]"
    decoded = uni.decode_image(uni.split(seq.tokens)[4].ids)
    assert isinstance(decoded[0], Image.Image) and decoded[0].size == (32, 32)
    assert set(uni.fingerprint()) == {"layout", "text", "image"}
    with pytest.raises(TokenizationError, match="non-text"):
        uni.decode_text([0])


def test_size_mismatch_and_missing_image(text_model: Path) -> None:
    text = TextTokenizer(text_model)
    with pytest.raises(TokenizationError, match="num_text_tokens"):
        UnifiedTokenizer(text, None, TokenLayout(num_text_tokens=10))
    uni = UnifiedTokenizer(text, None, TokenLayout())
    with pytest.raises(TokenizationError, match="no image tokenizer"):
        uni.encode_image(shape_images(1))
    assert uni.encode_text("a cat")[0] >= 8192
