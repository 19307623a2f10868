"""Sequence builders for every CogView task; text is truncated to fit (and counted), images never."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

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
        values = values.detach().cpu().numpy()
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


@dataclass(frozen=True)
class Slot:
    """Where a template takes variable ids: the text, or one image's code grid (named as the builder argument)."""

    name: str
    kind: str  # "text" | "image"


TEXT = Slot("text_ids", "text")
IMAGE = Slot("image_codes", "image")
LOW = Slot("low_codes", "image")  # super-resolution: the low-res grid of the image
HIGH = Slot("high_codes", "image")  # super-resolution: the high-res grid the model writes
RESTART = "|"  # a piece: position ids start again at 0 with the next piece

Piece = Union[str, Slot]  # a command name ("ROI1"), a Slot, or RESTART


@dataclass(frozen=True)
class Template:
    """One task's sequence as a declarative piece list; everything else about its layout is derived from it."""

    task: str  # the task identifier, spelled as on the command line and in shard metadata ("text2image", ...)
    pieces: tuple[Piece, ...]
    generate: Slot  # the slot a model writes after the prompt (the pieces before it)

    def __post_init__(self) -> None:
        slots = self.slots
        if len(set(slots)) != len(slots) or self.generate not in slots or [s.kind for s in slots].count("text") > 1:
            raise TokenizationError(f"template {self.task!r}: slots must be distinct, at most one text, one generated")
        if self.pieces.count(RESTART) > 1:
            raise TokenizationError(f"template {self.task!r}: at most one position restart")

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(p for p in self.pieces if isinstance(p, Slot))

    @property
    def commands(self) -> tuple[str, ...]:
        """Command names in sequence order."""
        return tuple(p for p in self.pieces if isinstance(p, str) and p != RESTART)

    @property
    def overhead(self) -> int:
        """Positions the commands take: a built sequence is overhead + text + image codes (+ padding) long."""
        return len(self.commands)

    @property
    def prompt_pieces(self) -> tuple[Piece, ...]:
        """The generation prompt: every piece before the generated slot."""
        return self.pieces[: self.pieces.index(self.generate)]

    def length(self, text_len: int, num_image_tokens: int) -> int:
        """Unpadded length of a sequence with text_len text pieces and num_image_tokens codes (all images)."""
        return self.overhead + text_len + num_image_tokens

    def text_budget(self, seq_len: int, num_image_tokens: int, *, positions: bool = False) -> int:
        """Most text pieces that fit beside num_image_tokens codes (all images) in seq_len.

        With positions=True, seq_len is a position-table size and only the position segment holding the text
        counts (pieces up to a restart): num_image_tokens is then the codes of that segment.
        """
        pieces = self.pieces
        if positions and RESTART in pieces:
            cut = pieces.index(RESTART)
            pieces = pieces[:cut] if TEXT in pieces[:cut] else pieces[cut + 1 :]
        commands = sum(1 for p in pieces if isinstance(p, str) and p != RESTART)
        return max(0, seq_len - commands - num_image_tokens)

    def prompt_length(self, **lengths: int) -> int:
        """Length of the prompt, given the length of each slot in it (by argument name, e.g. image_codes=1024)."""
        _check_names(self, self.prompt_pieces, lengths)
        return sum(lengths[p.name] if isinstance(p, Slot) else 1 for p in self.prompt_pieces if p != RESTART)

    def first_label(self, **lengths: int) -> int:
        """Sequence index of the token whose output predicts the first generated token (the prompt's last)."""
        return self.prompt_length(**lengths) - 1

    def command_ids(self, layout: TokenLayout, before: Slot, after: Slot | None = None) -> tuple[int, ...]:
        """Ids of the commands between slot `after` (the start if None) and slot `before`."""
        start = 0 if after is None else self.pieces.index(after) + 1
        return tuple(
            layout.command(p)
            for p in self.pieces[start : self.pieces.index(before)]
            if isinstance(p, str) and p != RESTART
        )

    def build(self, layout: TokenLayout, seq_len: int, **slots: IdsLike) -> TemplateSequence:
        """The sequence padded with [PAD] to seq_len; text truncated to fit (and counted), images never."""
        _check_seq_len(seq_len)
        return _assemble(layout, self.pieces, self, slots, seq_len, None)

    def prompt(self, layout: TokenLayout, max_text_len: int | None = None, **slots: IdsLike) -> TemplateSequence:
        """The generation prompt (no padding; text cut to max_text_len if given)."""
        return _assemble(layout, self.prompt_pieces, self, slots, None, max_text_len)


def _check_names(template: Template, pieces: tuple[Piece, ...], given: Mapping[str, object]) -> None:
    want = [p.name for p in pieces if isinstance(p, Slot)]
    if sorted(given) != sorted(want):
        raise TokenizationError(f"template {template.task!r} takes {want}, got {sorted(given)}")


def _assemble(
    layout: TokenLayout,
    pieces: tuple[Piece, ...],
    template: Template,
    values: Mapping[str, IdsLike],
    seq_len: int | None,
    max_text_len: int | None,
) -> TemplateSequence:
    """Join pieces, truncate the text to fit seq_len (or max_text_len), pad, build positions (restarting if marked)."""
    _check_names(template, pieces, values)
    ids: dict[str, np.ndarray] = {}
    for p in pieces:  # images first: their errors come before the text's
        if isinstance(p, Slot) and p.kind == "image":
            ids[p.name] = _image(layout, values[p.name], p.name)
    text = _text(layout, values[TEXT.name]) if TEXT.name in values else np.zeros(0, dtype=np.int64)
    fixed = sum(1 if isinstance(p, str) else len(ids[p.name]) for p in pieces if p != RESTART and p != TEXT)
    limit = max_text_len
    if seq_len is not None:
        if fixed > seq_len:
            raise TokenizationError(
                f"the image tokens and commands alone need {fixed} positions but seq_len is {seq_len}; "
                "raise seq_len or use a smaller image grid (images are never truncated)"
            )
        limit = seq_len - fixed
    truncated = 0
    if limit is not None and len(text) > limit:
        truncated, text = len(text) - limit, text[:limit]
    parts: list[np.ndarray] = []
    restart: int | None = None
    for p in pieces:
        if p == RESTART:
            restart = sum(len(x) for x in parts)
        elif isinstance(p, str):
            parts.append(np.array([layout.command(p)], dtype=np.int64))
        else:
            parts.append(text if p == TEXT else ids[p.name])
    tokens = np.concatenate(parts).astype(np.int64)
    if seq_len is not None and len(tokens) < seq_len:
        tokens = np.concatenate([tokens, np.full(seq_len - len(tokens), layout.pad_id, dtype=np.int64)])
    positions = np.arange(len(tokens), dtype=np.int64)
    if restart is not None:
        positions[restart:] = np.arange(len(tokens) - restart, dtype=np.int64)
    return TemplateSequence(tokens, positions, truncated)


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise TokenizationError(f"seq_len must be a positive integer, got {seq_len!r}")


# Every CogView sequence layout. Super-resolution has two families: ours, and the original CogView release's
# model (trained with a [POS0] after [ROI2]; `cogview convert --from cogview-original` marks it).
TEXT_TO_IMAGE = Template("text2image", ("ROI1", TEXT, "BASE", "BOI1", IMAGE, "EOI1"), generate=IMAGE)
IMAGE_TO_TEXT = Template("image2text", ("BASE", "BOI1", IMAGE, "EOI1", "ROI1", TEXT), generate=TEXT)
PURE_TEXT = Template("puretext", ("ROI1", TEXT), generate=TEXT)
SR_TEMPLATES = {
    "ours": Template(
        "superres",
        ("ROI1", TEXT, "BASE", "BOI1", LOW, "EOI1", RESTART, "ROI2", "BASE", "BOI2", HIGH, "EOI2"),
        generate=HIGH,
    ),
    "cogview-original": Template(
        "superres",
        ("ROI1", TEXT, "BASE", "BOI1", LOW, "EOI1", RESTART, "ROI2", "POS0", "BASE", "BOI2", HIGH, "EOI2"),
        generate=HIGH,
    ),
}
SUPER_RESOLUTION = SR_TEMPLATES["ours"]
TEMPLATES = {t.task: t for t in (TEXT_TO_IMAGE, IMAGE_TO_TEXT, SUPER_RESOLUTION, PURE_TEXT)}  # by task identifier

# The commands that open the high-res segment, per template family.
SR_SECOND_SEGMENT = {
    family: tuple(p for p in t.pieces[t.pieces.index(RESTART) + 1 : t.pieces.index(HIGH)] if isinstance(p, str))
    for family, t in SR_TEMPLATES.items()
}


def template(task: str) -> Template:
    """The template of a task identifier ("text2image", "image2text", "superres", "puretext")."""
    if task not in TEMPLATES:
        raise TokenizationError(f"unknown task {task!r}; use one of {sorted(TEMPLATES)}")
    return TEMPLATES[task]


def sr_template(family: str = "ours") -> Template:
    """The super-resolution template of a family ("ours" or "cogview-original")."""
    if family not in SR_TEMPLATES:
        raise TokenizationError(f"unknown template family {family!r}; use one of {sorted(SR_TEMPLATES)}")
    return SR_TEMPLATES[family]


def text_to_image(layout: TokenLayout, text_ids: IdsLike, image_codes: IdsLike, seq_len: int) -> TemplateSequence:
    """`[ROI1] text [BASE] [BOI1] codes [EOI1]` + [PAD] to seq_len."""
    return TEXT_TO_IMAGE.build(layout, seq_len, text_ids=text_ids, image_codes=image_codes)


def image_to_text(layout: TokenLayout, image_codes: IdsLike, text_ids: IdsLike, seq_len: int) -> TemplateSequence:
    """`[BASE] [BOI1] codes [EOI1] [ROI1] text` + [PAD] to seq_len (captioning / post-selection)."""
    return IMAGE_TO_TEXT.build(layout, seq_len, image_codes=image_codes, text_ids=text_ids)


def super_resolution(
    layout: TokenLayout, text_ids: IdsLike, low_codes: IdsLike, high_codes: IdsLike, seq_len: int
) -> TemplateSequence:
    """`[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2] high [EOI2]` + pad; positions restart at [ROI2]."""
    return SUPER_RESOLUTION.build(layout, seq_len, text_ids=text_ids, low_codes=low_codes, high_codes=high_codes)


def pure_text(layout: TokenLayout, text_ids: IdsLike, seq_len: int) -> TemplateSequence:
    """`[ROI1] text` + [PAD] to seq_len (text-only language modelling)."""
    return PURE_TEXT.build(layout, seq_len, text_ids=text_ids)


def text_to_image_prompt(layout: TokenLayout, text_ids: IdsLike, max_text_len: int | None = None) -> TemplateSequence:
    """Generation prompt `[ROI1] text [BASE] [BOI1]` (no padding; text cut to max_text_len if given)."""
    return TEXT_TO_IMAGE.prompt(layout, max_text_len, text_ids=text_ids)


def image_to_text_prompt(layout: TokenLayout, image_codes: IdsLike) -> TemplateSequence:
    """Captioning prompt `[BASE] [BOI1] codes [EOI1] [ROI1]` (no padding)."""
    return IMAGE_TO_TEXT.prompt(layout, image_codes=image_codes)


def super_resolution_prompt(
    layout: TokenLayout, text_ids: IdsLike, low_codes: IdsLike, family: str = "ours"
) -> TemplateSequence:
    """Super-resolution prompt `[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2]` (the original release's
    family has `[ROI2] [POS0] [BASE] [BOI2]`); positions restart at [ROI2]."""
    return sr_template(family).prompt(layout, text_ids=text_ids, low_codes=low_codes)


def max_text_length(num_image_tokens: int, seq_len: int, task: str = "text2image") -> int:
    """Most text pieces that fit beside num_image_tokens codes (all images together) in seq_len."""
    return template(task).text_budget(seq_len, num_image_tokens)
