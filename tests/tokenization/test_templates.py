"""Sequence templates: lengths, ids, text truncation counted, images never truncated, position restart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenization.errors import TokenizationError
from tokenization.layout import TokenLayout
from tokenization.templates import (
    IMAGE,
    IMAGE_TO_TEXT,
    PURE_TEXT,
    SR_SECOND_SEGMENT,
    SUPER_RESOLUTION,
    TEMPLATES,
    TEXT,
    TEXT_TO_IMAGE,
    Template,
    image_to_text,
    image_to_text_prompt,
    max_text_length,
    pure_text,
    sr_template,
    super_resolution,
    super_resolution_prompt,
    template,
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
    assert max_text_length(256 + 1024, 1400, "superres") == 1400 - 8 - 1280
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


# --- the derived layout facts, checked against built sequences of real examples --------------------------------

LOW = np.arange(256, dtype=np.int64).reshape(16, 16) % 8192


def _build(task: str, text: list[int], seq_len: int) -> np.ndarray:
    """A built sequence of a task by its public builder (the independent side of the checks below)."""
    if task == "text2image":
        return text_to_image(L, text, GRID, seq_len).tokens
    if task == "image2text":
        return image_to_text(L, GRID, text, seq_len).tokens
    if task == "superres":
        return super_resolution(L, text, LOW, GRID, seq_len).tokens
    return pure_text(L, text, seq_len).tokens


CODES = {"text2image": 1024, "image2text": 1024, "superres": 256 + 1024, "puretext": 0}


@pytest.mark.parametrize("task", sorted(CODES))
def test_overhead_and_budget_match_built_sequences(task: str) -> None:
    tpl = template(task)
    seq_len = 1400 if task == "superres" else 1100
    budget = tpl.text_budget(seq_len, CODES[task])
    assert budget == max_text_length(CODES[task], seq_len, task)
    # the budget fills the sequence exactly: no padding, nothing cut; one more text piece is cut
    seq = _build(task, list(range(budget)), seq_len)
    assert PAD not in seq.tolist() and len(seq) == seq_len
    assert tpl.length(budget, CODES[task]) == seq_len
    assert len(_build(task, list(range(budget + 1)), seq_len)) == seq_len
    # the overhead is the number of command ids in a built sequence
    commands = sum(1 for t in seq.tolist() if t >= L.command_offset)
    assert tpl.overhead == commands == len(tpl.commands)


def test_first_label_and_prompts_match_built_sequences() -> None:
    caption = [5, 6, 7]
    seq = image_to_text(L, GRID, caption, 1100).tokens.tolist()
    first = IMAGE_TO_TEXT.first_label(image_codes=1024)
    assert first == seq.index(ROI1) and seq[first + 1] == 8192 + 5  # [ROI1]'s output predicts the caption
    assert IMAGE_TO_TEXT.prompt_length(image_codes=1024) == len(image_to_text_prompt(L, GRID).tokens) == first + 1

    t2i = text_to_image(L, caption, GRID, 1100).tokens.tolist()
    first = TEXT_TO_IMAGE.first_label(text_ids=3)
    assert first == t2i.index(BOI1) and t2i[first + 1] == GRID.reshape(-1)[0]
    assert TEXT_TO_IMAGE.prompt_length(text_ids=3) == len(text_to_image_prompt(L, caption).tokens)

    sr = super_resolution(L, caption, LOW, GRID, 1400).tokens.tolist()
    first = SUPER_RESOLUTION.first_label(text_ids=3, low_codes=256)
    assert first == sr.index(BOI2) and sr[first + 1] == GRID.reshape(-1)[0]
    assert SUPER_RESOLUTION.prompt_length(text_ids=3, low_codes=256) == len(super_resolution_prompt(L, caption, LOW).tokens)
    assert PURE_TEXT.first_label() == 0 and pure_text(L, [9], 4).tokens[0] == ROI1  # [ROI1] predicts the text

    # the caption template's command ids are the ids around the image in a built image2text sequence
    assert IMAGE_TO_TEXT.command_ids(L, before=IMAGE) == (BASE, BOI1) == tuple(seq[:2])
    assert IMAGE_TO_TEXT.command_ids(L, before=TEXT, after=IMAGE) == (EOI1, ROI1) == tuple(seq[1026:1028])


def test_position_budget_counts_only_the_text_segment() -> None:
    # super-resolution positions restart at [ROI2]: the text shares a table with [ROI1] [BASE] [BOI1] low [EOI1] only
    budget = SUPER_RESOLUTION.text_budget(300, 256, positions=True)
    assert budget == 300 - 4 - 256
    seq = super_resolution(L, list(range(budget)), LOW, GRID, 2000)
    roi2 = seq.tokens.tolist().index(ROI2)
    assert int(seq.position_ids[roi2 - 1]) == 300 - 1  # the first segment uses exactly the 300 positions
    orig = sr_template("cogview-original")
    assert orig.text_budget(300, 256, positions=True) == budget and orig.overhead == SUPER_RESOLUTION.overhead + 1
    assert TEXT_TO_IMAGE.text_budget(100, 64, positions=True) == TEXT_TO_IMAGE.text_budget(100, 64)


def test_task_names_and_slot_checks() -> None:
    assert sorted(TEMPLATES) == ["image2text", "puretext", "superres", "text2image"]
    assert SR_SECOND_SEGMENT == {"ours": ("ROI2", "BASE", "BOI2"), "cogview-original": ("ROI2", "POS0", "BASE", "BOI2")}
    with pytest.raises(TokenizationError, match="unknown task 'text_to_image'"):
        max_text_length(1024, 1089, "text_to_image")
    with pytest.raises(TokenizationError, match="takes"):
        TEXT_TO_IMAGE.build(L, 100, text_ids=[1])
    with pytest.raises(TokenizationError, match="slots"):
        Template("bad", ("ROI1", TEXT, TEXT), generate=TEXT)
