"""Sequence builders for every CogView task; text is truncated to fit (and counted), images never."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from tokenization.errors import TokenizationError
from tokenization.layout import TokenLayout

IdsLike = Union[Sequence[int], np.ndarray, "torch.Tensor"]  # noqa: F821 (torch optional here)


@dataclass(frozen=True)
class TemplateSequence:
    """A built sequence: global ids padded with [PAD], position ids, and how many text pieces were cut."""

    tokens: np.ndarray  # int64 [seq_len]
    position_ids: np.ndarray  # int64 [seq_len]
    text_truncated: int = 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _as_ids(values: IdsLike, name: str) -> np.ndarray:
    """Flatten ids (list, numpy or torch; any shape, row-major) to int64 [n]."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()  # type: ignore[union-attr]
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TokenizationError(f"{name} must be integer ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False).reshape(-1)  # [...] -> [n]


def _text(layout: TokenLayout, text_ids: IdsLike) -> np.ndarray:
    """Raw SentencePiece ids -> global text ids (validated)."""
    ids = _as_ids(text_ids, "text_ids")
    if ids.size and (ids.min() < 0 or ids.max() >= layout.num_text_tokens):
        raise TokenizationError(
            f"text ids must be raw SentencePiece ids in 0..{layout.num_text_tokens - 1}, got {ids.min()}..{ids.max()}; "
            "is the tokenizer larger than the layout's num_text_tokens?"
        )
    return layout.text_id(ids)


def _image(layout: TokenLayout, codes: IdsLike, name: str = "image_codes") -> np.ndarray:
    """Raw VQ-VAE codes (any shape, row-major) -> global image ids (validated)."""
    ids = _as_ids(codes, name)
    if ids.size == 0:
        raise TokenizationError(f"{name} is empty; pass the code grid of an image")
    if ids.min() < 0 or ids.max() >= layout.num_image_tokens:
        raise TokenizationError(
            f"{name} must be raw codes in 0..{layout.num_image_tokens - 1}, got {ids.min()}..{ids.max()}; "
            "does the VQ-VAE codebook match the layout's num_image_tokens?"
        )
    return layout.image_id(ids)


def _cmd(layout: TokenLayout, *names: str) -> np.ndarray:
    return np.array([layout.command(n) for n in names], dtype=np.int64)


def _assemble(
    layout: TokenLayout,
    pieces: list[np.ndarray | None],
    text: np.ndarray,
    seq_len: int | None,
    restart_at: int | None = None,
) -> TemplateSequence:
    """Join pieces (None marks where the text goes), truncate text to fit seq_len, pad, build positions."""
    fixed = sum(len(p) for p in pieces if p is not None)
    truncated = 0
    if seq_len is not None:
        if fixed > seq_len:
            raise TokenizationError(
                f"the image tokens and commands alone need {fixed} positions but seq_len is {seq_len}; "
                "raise seq_len or use a smaller image grid (images are never truncated)"
            )
        budget = seq_len - fixed
        if len(text) > budget:
            truncated = len(text) - budget
            text = text[:budget]
    parts = [text if p is None else p for p in pieces]
    tokens = np.concatenate(parts).astype(np.int64)
    positions = np.arange(len(tokens), dtype=np.int64)
    if seq_len is not None and len(tokens) < seq_len:
        tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), layout.pad_id, dtype=np.int64)])
        positions = np.arange(seq_len, dtype=np.int64)
    if restart_at is not None:
        start = sum(len(p) for p in parts[:restart_at])
        positions[start:] = np.arange(len(tokens) - start, dtype=np.int64)
    return TemplateSequence(tokens, positions, truncated)


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise TokenizationError(f"seq_len must be a positive integer, got {seq_len!r}")


def text_to_image(layout: TokenLayout, text_ids: IdsLike, image_codes: IdsLike, seq_len: int) -> TemplateSequence:
    """`[ROI1] text [BASE] [BOI1] codes [EOI1]` + [PAD] to seq_len."""
    _check_seq_len(seq_len)
    pieces = [
        _cmd(layout, "ROI1"),
        None,
        _cmd(layout, "BASE", "BOI1"),
        _image(layout, image_codes),
        _cmd(layout, "EOI1"),
    ]
    return _assemble(layout, pieces, _text(layout, text_ids), seq_len)


def image_to_text(layout: TokenLayout, image_codes: IdsLike, text_ids: IdsLike, seq_len: int) -> TemplateSequence:
    """`[BASE] [BOI1] codes [EOI1] [ROI1] text` + [PAD] to seq_len (captioning / post-selection)."""
    _check_seq_len(seq_len)
    pieces = [_cmd(layout, "BASE", "BOI1"), _image(layout, image_codes), _cmd(layout, "EOI1", "ROI1"), None]
    return _assemble(layout, pieces, _text(layout, text_ids), seq_len)


def super_resolution(
    layout: TokenLayout, text_ids: IdsLike, low_codes: IdsLike, high_codes: IdsLike, seq_len: int
) -> TemplateSequence:
    """`[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2] high [EOI2]` + pad; positions restart at [ROI2]."""
    _check_seq_len(seq_len)
    pieces = [
        _cmd(layout, "ROI1"),
        None,
        _cmd(layout, "BASE", "BOI1"),
        _image(layout, low_codes, "low_codes"),
        _cmd(layout, "EOI1"),
        _cmd(layout, *SR_SECOND_SEGMENT["ours"]),
        _image(layout, high_codes, "high_codes"),
        _cmd(layout, "EOI2"),
    ]
    return _assemble(layout, pieces, _text(layout, text_ids), seq_len, restart_at=5)


def pure_text(layout: TokenLayout, text_ids: IdsLike, seq_len: int) -> TemplateSequence:
    """`[ROI1] text` + [PAD] to seq_len (text-only language modelling)."""
    _check_seq_len(seq_len)
    return _assemble(layout, [_cmd(layout, "ROI1"), None], _text(layout, text_ids), seq_len)


def text_to_image_prompt(layout: TokenLayout, text_ids: IdsLike, max_text_len: int | None = None) -> TemplateSequence:
    """Generation prompt `[ROI1] text [BASE] [BOI1]` (no padding; text cut to max_text_len if given)."""
    text = _text(layout, text_ids)
    truncated = 0
    if max_text_len is not None and len(text) > max_text_len:
        truncated, text = len(text) - max_text_len, text[:max_text_len]
    result = _assemble(layout, [_cmd(layout, "ROI1"), None, _cmd(layout, "BASE", "BOI1")], text, None)
    return TemplateSequence(result.tokens, result.position_ids, truncated)


def image_to_text_prompt(layout: TokenLayout, image_codes: IdsLike) -> TemplateSequence:
    """Captioning prompt `[BASE] [BOI1] codes [EOI1] [ROI1]` (no padding)."""
    pieces = [_cmd(layout, "BASE", "BOI1"), _image(layout, image_codes), _cmd(layout, "EOI1", "ROI1")]
    return _assemble(layout, pieces, np.zeros(0, dtype=np.int64), None)


# The commands that open the high-res segment, per template family: ours, and the original CogView release's
# super-resolution model (trained with a [POS0] after [ROI2]; `cogview convert --from cogview-original` marks it).
SR_SECOND_SEGMENT = {"ours": ("ROI2", "BASE", "BOI2"), "cogview-original": ("ROI2", "POS0", "BASE", "BOI2")}


def super_resolution_prompt(layout: TokenLayout, text_ids: IdsLike, low_codes: IdsLike,
                            family: str = "ours") -> TemplateSequence:
    """Super-resolution prompt `[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2]` (the original release's
    family has `[ROI2] [POS0] [BASE] [BOI2]`); positions restart at [ROI2]."""
    if family not in SR_SECOND_SEGMENT:
        raise TokenizationError(f"unknown template family {family!r}; use one of {sorted(SR_SECOND_SEGMENT)}")
    pieces = [
        _cmd(layout, "ROI1"),
        None,
        _cmd(layout, "BASE", "BOI1"),
        _image(layout, low_codes, "low_codes"),
        _cmd(layout, "EOI1"),
        _cmd(layout, *SR_SECOND_SEGMENT[family]),
    ]
    return _assemble(layout, pieces, _text(layout, text_ids), None, restart_at=5)


def max_text_length(num_image_tokens: int, seq_len: int, task: str = "text_to_image") -> int:
    """Most text pieces that fit beside num_image_tokens codes (all images together) in seq_len."""
    overhead = {"text_to_image": 4, "image_to_text": 4, "super_resolution": 8, "pure_text": 1}
    if task not in overhead:
        raise TokenizationError(f"unknown task {task!r}; use one of {sorted(overhead)}")
    return max(0, seq_len - overhead[task] - num_image_tokens)
