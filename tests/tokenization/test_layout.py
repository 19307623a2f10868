"""The unified id table matches CogView's numbers and shifts consistently with other sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenization.errors import TokenizationError
from tokenization.layout import COMMAND_TOKENS, TokenLayout


def test_cogview_numbers() -> None:
    layout = TokenLayout()
    assert (layout.image_offset, layout.text_offset, layout.command_offset) == (0, 8192, 58192)
    assert layout.num_tokens == 58219
    assert layout.vocab_size == 58240
    assert layout.command("[PAD]") == layout.pad_id == 58192
    assert layout.command("ROI1") == layout.command("[ROI1]") == 58199
    assert layout.command("BASE") == 58208
    assert layout.command("BOI1") == 58193 and layout.command("EOI1") == 58196
    assert layout.command("ROI2") == 58200 and layout.command("POS8") == 58218
    assert len(COMMAND_TOKENS) == 27 and COMMAND_TOKENS[-1] == "[POS8]"
    assert [layout.command(n) for n in COMMAND_TOKENS] == list(range(58192, 58219))
    assert [layout.command_name(58192 + i) for i in range(27)] == list(COMMAND_TOKENS)


def test_padding_follows_tp_size() -> None:
    assert TokenLayout(tp_size=2).vocab_size == 58368  # multiple of 256
    assert TokenLayout(tp_size=4).vocab_size == 58368
    assert TokenLayout(tp_size=8).vocab_size == 58368
    assert TokenLayout(tp_size=3).vocab_size == 58368  # 152 x 384
    for tp in (1, 2, 3, 4, 8):
        layout = TokenLayout(tp_size=tp)
        assert layout.vocab_size % (128 * tp) == 0 and 0 <= layout.vocab_size - layout.num_tokens < 128 * tp


def test_other_sizes_shift_consistently() -> None:
    layout = TokenLayout(num_image_tokens=1024, num_text_tokens=300)
    assert layout.text_offset == 1024 and layout.command_offset == 1324
    assert layout.command("ROI1") == 1324 + 7 and layout.num_tokens == 1324 + 27
    assert layout.vocab_size == 1408
    assert layout.text_id(5) == 1029 and layout.image_id(5) == 5


@pytest.mark.parametrize("make", [np.array, torch.tensor])
def test_vectorised_kind_checks(make) -> None:
    layout = TokenLayout()
    ids = make([0, 8191, 8192, 58191, 58192, 58218, 58219])
    as_list = lambda x: [bool(v) for v in x]  # noqa: E731
    assert as_list(layout.is_image(ids)) == [True, True, False, False, False, False, False]
    assert as_list(layout.is_text(ids)) == [False, False, True, True, False, False, False]
    assert as_list(layout.is_command(ids)) == [False, False, False, False, True, True, False]
    assert as_list(layout.text_id(make([0, 1]))) == [True, True]  # arithmetic works elementwise
    assert list(np.asarray(layout.text_id(make([0, 49999])))) == [8192, 58191]


def test_dict_round_trip_and_fingerprint() -> None:
    layout = TokenLayout(num_text_tokens=32000, tp_size=2)
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    assert layout.to_dict() == {"num_image_tokens": 8192, "num_text_tokens": 32000, "tp_size": 2, "divisible_by": 128}
    assert len(layout.fingerprint()) == 64
    assert layout.fingerprint() == TokenLayout(num_text_tokens=32000).fingerprint()  # tp does not change ids
    assert layout.fingerprint() != TokenLayout().fingerprint()


def test_user_errors() -> None:
    layout = TokenLayout()
    with pytest.raises(TokenizationError, match="unknown command token"):
        layout.command("ROI9")
    with pytest.raises(TokenizationError, match="not a command token"):
        layout.command_name(5)
    with pytest.raises(TokenizationError, match="positive integer"):
        TokenLayout(tp_size=0)
    with pytest.raises(TokenizationError, match="unknown TokenLayout keys"):
        TokenLayout.from_dict({"vocab": 3})
    assert issubclass(TokenizationError, ValueError)
