"""UnifiedTokenizer: captions and images to global ids, and mixed sequences back into parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from tokenization.errors import TokenizationError
from tokenization.image import ImageInput, ImageTokenizer
from tokenization.layout import TokenLayout
from tokenization.templates import IdsLike, _as_ids
from tokenization.text import TextTokenizer


@dataclass(frozen=True)
class Part:
    """A run of one kind in a mixed sequence: kind is "text", "image" or "command"; ids are global ids."""

    kind: str
    ids: np.ndarray  # int64 [n] global ids

    def raw(self, layout: TokenLayout) -> np.ndarray:
        """Ids without the layout offset (SentencePiece ids, image codes, or command index)."""
        offset = {"text": layout.text_offset, "image": layout.image_offset, "command": layout.command_offset}[self.kind]
        return self.ids - offset

    def name(self, layout: TokenLayout) -> str:
        """Command name ("[BOI1]") of a one-token command part."""
        if self.kind != "command":
            raise TokenizationError(f"a {self.kind} part has no command name")
        return layout.command_name(int(self.ids[0]))


def split_sequence(layout: TokenLayout, sequence: IdsLike, keep_padding: bool = False) -> list[Part]:
    """Ordered parts of a mixed sequence: runs of text, runs of image codes, one part per command token."""
    ids = _as_ids(sequence, "sequence")
    if ids.size and (ids.min() < 0 or ids.max() >= layout.num_tokens):
        bad = int(ids[(ids < 0) | (ids >= layout.num_tokens)][0])
        raise TokenizationError(
            f"id {bad} is outside this layout (0..{layout.num_tokens - 1}); was the sequence built with another layout?"
        )
    kinds = np.where(layout.is_image(ids), 0, np.where(layout.is_text(ids), 1, 2))  # [n]
    if ids.size == 0:
        return []
    boundary = np.ones(len(ids), dtype=bool)  # a part starts where the kind changes; each command is its own part
    boundary[1:] = (kinds[1:] != kinds[:-1]) | (kinds[1:] == 2)
    starts = np.flatnonzero(boundary)
    ends = np.append(starts[1:], len(ids))
    parts: list[Part] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        kind = ("image", "text", "command")[int(kinds[start])]
        if keep_padding or not (kind == "command" and ids[start] == layout.pad_id):
            parts.append(Part(kind, ids[start:end].copy()))
    return parts


def codes_as_grid(codes: np.ndarray, grid_size: int | None = None) -> np.ndarray:
    """Shape a run of image codes as a [h, w] grid (square unless grid_size says the width)."""
    n = codes.shape[0]
    width = grid_size or int(round(n**0.5))
    if width < 1 or n % width:
        raise TokenizationError(f"{n} image codes do not form a grid of width {width}; pass grid_size")
    if grid_size is None and width * width != n:
        raise TokenizationError(f"{n} image codes are not a square grid; pass grid_size")
    return codes.reshape(n // width, width)  # [h*w] -> [h, w]


class UnifiedTokenizer:
    """Text tokenizer + optional image tokenizer + the id layout: one object for mixed sequences."""

    def __init__(self, text: TextTokenizer, image: ImageTokenizer | None, layout: TokenLayout) -> None:
        if text.vocab_size > layout.num_text_tokens:
            raise TokenizationError(
                f"text tokenizer has {text.vocab_size} pieces but the layout holds {layout.num_text_tokens}; "
                f"use TokenLayout(num_text_tokens={text.vocab_size}) or a smaller tokenizer"
            )
        if image is not None and image.num_codes > layout.num_image_tokens:
            raise TokenizationError(
                f"image tokenizer has {image.num_codes} codes but the layout holds {layout.num_image_tokens}; "
                f"use TokenLayout(num_image_tokens={image.num_codes})"
            )
        self.text = text
        self.image = image
        self.layout = layout

    @classmethod
    def for_tokenizers(cls, text: TextTokenizer, image: ImageTokenizer | None, tp_size: int = 1) -> "UnifiedTokenizer":
        """A layout sized exactly to the given tokenizers (for models trained from scratch)."""
        layout = TokenLayout(
            num_image_tokens=image.num_codes if image is not None else 8192,
            num_text_tokens=text.vocab_size,
            tp_size=tp_size,
        )
        return cls(text, image, layout)

    def command(self, name: str) -> int:
        """Global id of a command token ("ROI1" or "[ROI1]")."""
        return self.layout.command(name)

    def encode_text(self, text: str) -> list[int]:
        """Global (offset) ids of a caption."""
        return [self.layout.text_id(i) for i in self.text.encode(text)]

    def decode_text(self, ids: IdsLike) -> str:
        """Caption of global text ids (non-text ids are an error)."""
        array = _as_ids(ids, "ids")
        if array.size and not bool(self.layout.is_text(array).all()):
            raise TokenizationError("decode_text got non-text ids; use split() for mixed sequences")
        return self.text.decode((array - self.layout.text_offset).tolist())

    def _image_tokenizer(self) -> ImageTokenizer:
        if self.image is None:
            raise TokenizationError(
                "this UnifiedTokenizer has no image tokenizer; pass ImageTokenizer.from_pretrained(dir)"
            )
        return self.image

    def encode_image(self, images: ImageInput, image_size: int | None = None) -> np.ndarray:
        """Global image ids [b, h, w] of images."""
        codes = self._image_tokenizer().encode(images, image_size=image_size).numpy()
        return self.layout.image_id(codes)

    def decode_image(self, ids: IdsLike, grid_size: int | None = None) -> list[Image.Image]:
        """PIL image of a run of global image ids (flat or [h, w])."""
        array = _as_ids(ids, "ids") - self.layout.image_offset
        return self._image_tokenizer().decode(codes_as_grid(array, grid_size)[None])

    def split(self, sequence: IdsLike, keep_padding: bool = False) -> list[Part]:
        """Ordered (kind, ids) parts of a mixed sequence ([PAD] dropped unless keep_padding)."""
        return split_sequence(self.layout, sequence, keep_padding)

    def texts(self, sequence: IdsLike) -> list[str]:
        """Decoded strings of every text run in a sequence."""
        return [self.text.decode(p.raw(self.layout).tolist()) for p in self.split(sequence) if p.kind == "text"]

    def image_codes(self, sequence: IdsLike, grid_size: int | None = None) -> list[np.ndarray]:
        """Raw code grids [h, w] of every image run in a sequence."""
        return [codes_as_grid(p.raw(self.layout), grid_size) for p in self.split(sequence) if p.kind == "image"]

    def describe(self, sequence: IdsLike) -> str:
        """Readable one-line rendering, e.g. `[ROI1] a cat [BASE] [BOI1] <image 32x32> [EOI1]`."""
        out: list[str] = []
        for part in self.split(sequence):
            if part.kind == "command":
                out.append(part.name(self.layout))
            elif part.kind == "text":
                out.append(self.text.decode(part.raw(self.layout).tolist()).replace("\n", "\\n"))
            else:
                side = int(round(len(part.ids) ** 0.5))
                out.append(
                    f"<image {side}x{side}>" if side * side == len(part.ids) else f"<image {len(part.ids)} codes>"
                )
        return " ".join(out)

    def fingerprint(self) -> dict[str, str]:
        """Fingerprints of the layout, text model and (if any) image model."""
        result = {"layout": self.layout.fingerprint(), "text": self.text.fingerprint()}
        if self.image is not None:
            result["image"] = self.image.fingerprint()
        return result
