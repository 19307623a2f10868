"""CogView's unified token id table: image codes, then text pieces, then command tokens."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from tokenization.errors import TokenizationError

COMMAND_TOKENS: tuple[str, ...] = (
    "[PAD]",
    "[BOI1]", "[BOI2]", "[BOI3]",
    "[EOI1]", "[EOI2]", "[EOI3]",
    "[ROI1]", "[ROI2]", "[ROI3]",
    "[SEP]", "[MASK]", "[CLS]", "[ENC]",
    "[TINY]", "[SMALL]", "[BASE]", "[BIG]",
    "[POS0]", "[POS1]", "[POS2]", "[POS3]", "[POS4]", "[POS5]", "[POS6]", "[POS7]", "[POS8]",
)  # fmt: skip

_COMMAND_INDEX: dict[str, int] = {name: i for i, name in enumerate(COMMAND_TOKENS)}

Ids = TypeVar("Ids")  # int, numpy array or torch tensor of ids


@dataclass(frozen=True)
class TokenLayout:
    """Id ranges: image codes [0, I), text pieces [I, I+T), command tokens after; padded vocab for TP."""

    num_image_tokens: int = 8192
    num_text_tokens: int = 50000
    tp_size: int = 1
    divisible_by: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenizationError(f"TokenLayout.{f.name} must be a positive integer, got {value!r}")

    @property
    def image_offset(self) -> int:
        """First image-code id (always 0)."""
        return 0

    @property
    def text_offset(self) -> int:
        """First text-piece id (= num_image_tokens)."""
        return self.num_image_tokens

    @property
    def command_offset(self) -> int:
        """First command-token id ([PAD])."""
        return self.num_image_tokens + self.num_text_tokens

    @property
    def num_tokens(self) -> int:
        """Number of real ids (unpadded)."""
        return self.command_offset + len(COMMAND_TOKENS)

    @property
    def vocab_size(self) -> int:
        """Embedding rows: num_tokens padded up to a multiple of divisible_by * tp_size."""
        multiple = self.divisible_by * self.tp_size
        return -(-self.num_tokens // multiple) * multiple

    @property
    def pad_id(self) -> int:
        """Id of [PAD]."""
        return self.command_offset

    def command(self, name: str) -> int:
        """Id of a command token, given as "ROI1" or "[ROI1]"."""
        key = name if name.startswith("[") else f"[{name}]"
        if key not in _COMMAND_INDEX:
            raise TokenizationError(f"unknown command token {name!r}; use one of {', '.join(COMMAND_TOKENS)}")
        return self.command_offset + _COMMAND_INDEX[key]

    def command_name(self, token_id: int) -> str:
        """Name ("[ROI1]") of a command-token id."""
        index = int(token_id) - self.command_offset
        if not 0 <= index < len(COMMAND_TOKENS):
            raise TokenizationError(
                f"id {int(token_id)} is not a command token (commands are "
                f"{self.command_offset}..{self.num_tokens - 1} in this layout)"
            )
        return COMMAND_TOKENS[index]

    def is_image(self, ids: Ids) -> Ids:
        """Elementwise: is the id an image code? (numpy arrays, torch tensors or ints)"""
        return (ids >= self.image_offset) & (ids < self.text_offset)

    def is_text(self, ids: Ids) -> Ids:
        """Elementwise: is the id a text piece?"""
        return (ids >= self.text_offset) & (ids < self.command_offset)

    def is_command(self, ids: Ids) -> Ids:
        """Elementwise: is the id a command token?"""
        return (ids >= self.command_offset) & (ids < self.num_tokens)

    def text_id(self, piece_id: Ids) -> Ids:
        """Global id of a raw SentencePiece id (elementwise)."""
        return piece_id + self.text_offset

    def image_id(self, code: Ids) -> Ids:
        """Global id of a raw VQ-VAE code (elementwise)."""
        return code + self.image_offset

    def to_dict(self) -> dict[str, int]:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenLayout":
        """Inverse of to_dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TokenizationError(f"unknown TokenLayout keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """sha256 of the id table (image/text sizes and command tokens); tp_size and padding don't change ids."""
        ids = {
            "num_image_tokens": self.num_image_tokens,
            "num_text_tokens": self.num_text_tokens,
            "command_tokens": list(COMMAND_TOKENS),
        }
        return hashlib.sha256(json.dumps(ids, sort_keys=True).encode("utf-8")).hexdigest()
