"""Sequence templates: lengths, ids, text truncation counted, images never truncated, position restart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenization.errors import TokenizationError
from tokenization.layout import TokenLayout
from tokenization.templates import (
    image_to_text,
    image_to_text_prompt,
    max_text_length,
    pure_text,
    super_resolution,
    super_resolution_prompt,
    text_to_image,
    text_to_image_prompt,
)

L = TokenLayout()
ROI1, ROI2, BASE, BOI1, BOI2, EOI1, EOI2, PAD = (
    L.command(n) for n in ("ROI1", "ROI2", "BASE", "BOI1", "BOI2", "EOI1", "EOI2", "PAD")
)
GRID = np.arange(1024, dtype=np.int64).reshape(32, 32) * 7 % 8192  # a 32x32 code grid


def test_text_to_image_cogview_shape() -> None:
    text = list(range(100, 110))
    seq = text_to_image(L, text, GRID, 1089)
    assert seq.tokens.dtype == np.int64 and seq.tokens.shape == (1089,) and seq.position_ids.shape == (1089,)
    assert seq.text_truncated == 0
    assert seq.tokens[0] == ROI1
    assert seq.tokens[1:11].tolist() == [8192 + t for t in text]
    assert seq.tokens[11:13].tolist() == [BASE, BOI1]
    assert seq.tokens[13:1037].tolist() == GRID.reshape(-1).tolist()  # row-major, image offset 0
    assert seq.tokens[1037] == EOI1
    assert (seq.tokens[1038:] == PAD).all() and len(seq.tokens[1038:]) == 51
    assert seq.position_ids.tolist() == list(range(1089))


def test_text_truncated_to_61_and_counted_never_the_image() -> None:
    assert max_text_length(1024, 1089) == 61
    text = list(range(1, 81))
    seq = text_to_image(L, text, GRID, 1089)
    assert seq.text_truncated == 19
    assert seq.tokens[1:62].tolist() == [8192 + t for t in text[:61]]
    assert seq.tokens[62:64].tolist() == [BASE, BOI1]
    assert seq.tokens[64:1088].tolist() == GRID.reshape(-1).tolist()
    assert seq.tokens[1088] == EOI1 and PAD not in seq.tokens
    exact = text_to_image(L, text[:61], GRID, 1089)
    assert exact.text_truncated == 0 and np.array_equal(exact.tokens, seq.tokens)


def test_image_alone_too_long_is_an_error() -> None:
    with pytest.raises(TokenizationError, match="images are never truncated"):
        text_to_image(L, [1, 2], GRID, 1027)
    seq = text_to_image(L, [1, 2], GRID, 1028)  # exactly fits with no text
    assert seq.text_truncated == 2 and seq.tokens[1] == BASE


def test_image_to_text() -> None:
    seq = image_to_text(L, torch.tensor(GRID), list(range(70)), 1089)
    assert seq.tokens[:2].tolist() == [BASE, BOI1]
    assert seq.tokens[2:1026].tolist() == GRID.reshape(-1).tolist()
    assert seq.tokens[1026:1028].tolist() == [EOI1, ROI1]
    assert seq.tokens[1028:].tolist() == [8192 + t for t in range(61)]
    assert seq.text_truncated == 9


def test_super_resolution_restarts_positions() -> None:
    low = np.arange(256).reshape(16, 16)
    text = [5, 6, 7]
    seq = super_resolution(L, text, low, GRID, 1400)
    t = seq.tokens.tolist()
    roi2 = t.index(ROI2)
    assert t[:5] == [ROI1, 8197, 8198, 8199, BASE] and t[5] == BOI1
    assert t[6:262] == list(range(256)) and t[262] == EOI1 and roi2 == 263
    assert t[263:266] == [ROI2, BASE, BOI2] and t[266:1290] == GRID.reshape(-1).tolist() and t[1290] == EOI2
    assert (seq.tokens[1291:] == PAD).all()
    assert seq.position_ids[:roi2].tolist() == list(range(roi2))
    assert seq.position_ids[roi2:].tolist() == list(range(1400 - roi2))
    assert max_text_length(256 + 1024, 1400, "super_resolution") == 1400 - 8 - 1280
    long = super_resolution(L, list(range(200)), low, GRID, 1300)
    assert long.text_truncated == 200 - (1300 - 8 - 1280) and long.tokens[-1] == EOI2
    with pytest.raises(TokenizationError, match="never truncated"):
        super_resolution(L, text, low, GRID, 1287)


def test_pure_text() -> None:
    seq = pure_text(L, list(range(10)), 8)
    assert seq.tokens.tolist() == [ROI1] + [8192 + i for i in range(7)] and seq.text_truncated == 3
    seq = pure_text(L, [1], 4)
    assert seq.tokens.tolist() == [ROI1, 8193, PAD, PAD]


def test_prompts() -> None:
    prompt = text_to_image_prompt(L, [1, 2, 3])
    assert prompt.tokens.tolist() == [ROI1, 8193, 8194, 8195, BASE, BOI1] and prompt.position_ids.tolist() == list(
        range(6)
    )
    assert text_to_image_prompt(L, list(range(80)), max_text_len=61).text_truncated == 19
    full = text_to_image(L, [1, 2, 3], GRID, 1089)
    assert full.tokens[:6].tolist() == prompt.tokens.tolist()
    cap = image_to_text_prompt(L, GRID)
    assert cap.tokens.tolist() == image_to_text(L, GRID, [], 1028).tokens.tolist()
    sr = super_resolution_prompt(L, [4], np.zeros((16, 16), dtype=np.int64))
    assert sr.tokens[-3:].tolist() == [ROI2, BASE, BOI2] and sr.position_ids[-3:].tolist() == [0, 1, 2]
    # the original release's SR model was trained with [POS0] after [ROI2]; same prefix, positions still restart
    orig = super_resolution_prompt(L, [4], np.zeros((16, 16), dtype=np.int64), "cogview-original")
    assert orig.tokens[:-4].tolist() == sr.tokens[:-3].tolist()
    assert orig.tokens[-4:].tolist() == [ROI2, L.command("POS0"), BASE, BOI2]
    assert orig.position_ids[-4:].tolist() == [0, 1, 2, 3]
    with pytest.raises(TokenizationError, match="unknown template family"):
        super_resolution_prompt(L, [4], np.zeros((16, 16), dtype=np.int64), "other")


def test_small_layout_and_validation() -> None:
    small = TokenLayout(num_image_tokens=64, num_text_tokens=300)
    seq = text_to_image(small, [0, 299], np.arange(64).reshape(8, 8) % 64, 80)
    assert seq.tokens[:3].tolist() == [small.command("ROI1"), 64, 363]
    with pytest.raises(TokenizationError, match="raw SentencePiece ids"):
        text_to_image(small, [300], np.zeros((8, 8), dtype=np.int64), 80)
    with pytest.raises(TokenizationError, match="raw codes"):
        text_to_image(small, [1], np.full((8, 8), 64), 80)
    with pytest.raises(TokenizationError, match="integer ids"):
        text_to_image(small, [1.5], np.zeros((8, 8), dtype=np.int64), 80)
    with pytest.raises(TokenizationError, match="seq_len"):
        text_to_image(small, [1], np.zeros((8, 8), dtype=np.int64), 0)
    with pytest.raises(TokenizationError, match="empty"):
        text_to_image(small, [1], [], 80)
