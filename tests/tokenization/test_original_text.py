"""The released text tokenizer (cog-pretrain.model) loads as is: unified ids equal the original wrapper's.

The original wrapper called SentencePieceProcessor.EncodeAsIds (no BOS/EOS) and added the number of image
codes (8192). A model trained here with the release's settings (BPE, `<n>` user symbol, nmt_nfkc) stands
in for the release file; the reference below uses sentencepiece directly, as the original did.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from tokenization import templates
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer
from tokenization.unified import UnifiedTokenizer

PROMPTS = ["a photo of a red car parked on the street", "一只可爱的小猫坐在窗台上", "ＡＢＣ　full width", "the dog 两只狗"]


def original_unified_ids(model: Path, text: str, image_tokens: int = 8192) -> list[int]:
    """What CogView's UnifiedTokenizer.EncodeAsIds returned."""
    sp = spm.SentencePieceProcessor()
    sp.Load(str(model))
    return [x + image_tokens for x in sp.EncodeAsIds(text)]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_unified_ids_equal_the_original_wrapper(text_model: Path, prompt: str) -> None:
    text = TextTokenizer(text_model)
    tok = UnifiedTokenizer(text, None, TokenLayout(num_image_tokens=8192, num_text_tokens=text.vocab_size))
    expected = original_unified_ids(text_model, prompt)
    assert tok.encode_text(prompt) == expected
    prompt_seq = templates.text_to_image_prompt(tok.layout, text.encode(prompt)).tokens.tolist()
    assert prompt_seq == [tok.command("ROI1"), *expected, tok.command("BASE"), tok.command("BOI1")]


def test_release_settings(text_model: Path) -> None:
    text = TextTokenizer(text_model)
    newline = text.piece_to_id("<n>")
    assert newline != text.unk_id and text.encode("a\nb") == text.encode("a<n>b")  # `<n>` is one user piece
    assert text.encode("ＡＢＣ") == text.encode("ABC")  # nmt_nfkc folds full-width forms
    assert text.id_to_piece(text.encode("car")[0]).startswith("\u2581")  # SentencePiece word-boundary pieces
    layout = TokenLayout()  # the release: 8192 codes, 50,000 pieces, 27 commands
    assert (layout.text_offset, layout.num_tokens, layout.vocab_size) == (8192, 58219, 58240)
