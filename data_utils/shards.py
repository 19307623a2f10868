"""Token-sequence samples in tar shards, and the dataset manifest (`dataset.json`) beside them."""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import DataError

MANIFEST_NAME = "dataset.json"
MANIFEST_FORMAT = "cogview-token-shards"
MANIFEST_VERSION = 1
TOKENS_FIELD = "tokens.npy"
POSITIONS_FIELD = "position_ids.npy"
CAPTION_FIELD = "txt"
META_FIELD = "json"


def storage_dtype(vocab_size: int) -> str:
    """The narrowest dtype name that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"


def _npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}  # header bytes -> (dtype, shape, items)


def _npy_load(data: bytes) -> np.ndarray:
    """An array from .npy bytes (no pickles)."""
    # Shards repeat one header (dtype, shape) in every sample: parse it once, then read the bytes in place.
    if data[:8] == _NPY_MAGIC and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        parsed = _npy_headers.get(data[:end])
        if parsed is None:
            parsed = _parse_npy_header(data[:end])
        if parsed is not None and len(data) >= end + parsed[2] * parsed[0].itemsize:
            return np.frombuffer(data, parsed[0], parsed[2], end).reshape(parsed[1])
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # EOFError, TypeError, SyntaxError, ...: callers handle one error type
        raise ValueError(f"not a readable .npy array ({type(e).__name__}: {e})") from e


def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(dtype, shape, items) of a version 1.0 .npy header of a plain C-order array, cached; None otherwise."""
    try:
        stream = io.BytesIO(header)
        np.lib.format.read_magic(stream)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    except Exception:  # ValueError, SyntaxError, TypeError, ...: np.load decides
        return None
    if fortran or dtype.hasobject or dtype.itemsize == 0 or stream.tell() != len(header):
        return None
    if not all(type(n) is int and n >= 0 for n in shape):
        return None
    parsed = (dtype, tuple(shape), math.prod(shape))
    if len(_npy_headers) < 64:
        _npy_headers[header] = parsed
    return parsed


def encode_sample(
    key: str, tokens: np.ndarray, position_ids: np.ndarray, caption: str, meta: dict[str, Any], dtype: str
) -> dict[str, object]:
    """A tar sample dict for one fixed-length sequence."""
    return {
        "__key__": key,
        TOKENS_FIELD: _npy_bytes(np.asarray(tokens).astype(dtype)),
        POSITIONS_FIELD: _npy_bytes(np.asarray(position_ids).astype(dtype)),
        CAPTION_FIELD: caption,
        META_FIELD: json.dumps(meta, ensure_ascii=False),
    }


@dataclass(frozen=True)
class TokenSample:
    """One decoded sequence: int64 tokens and position ids of length seq_len."""

    key: str
    tokens: np.ndarray
    position_ids: np.ndarray
    caption: str
    meta: dict[str, Any]


def decode_sample(sample: dict[str, object], seq_len: int) -> TokenSample:
    """Check and decode a raw tar sample; raises ValueError naming the defect."""
    missing = [f for f in (TOKENS_FIELD, POSITIONS_FIELD) if f not in sample]
    if missing:
        raise ValueError(f"missing fields {missing}")
    tokens = _npy_load(sample[TOKENS_FIELD]).astype(np.int64)
    positions = _npy_load(sample[POSITIONS_FIELD]).astype(np.int64)
    if tokens.shape != (seq_len,) or positions.shape != (seq_len,):
        raise ValueError(f"sequence shape {tokens.shape}/{positions.shape}, expected ({seq_len},)")
    caption = _text(sample.get(CAPTION_FIELD, b""))
    meta = json.loads(_text(sample[META_FIELD])) if META_FIELD in sample else {}
    return TokenSample(str(sample["__key__"]), tokens, positions, caption, meta)


def _text(value: object) -> str:
    """UTF-8 text from a tar field (bytes) or an already-decoded str."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8")


@dataclass(frozen=True)
class ShardInfo:
    """One shard file (relative to the manifest's folder) and how many samples it holds."""

    name: str
    samples: int


# Manifest fields whose dataset.json key is shorter (the files written so far keep these keys)
_STORED_KEYS = {"text_tokenizer_fingerprint": "text_tokenizer", "image_tokenizer_fingerprint": "image_tokenizer"}
_FIELDS = {v: k for k, v in _STORED_KEYS.items()}


@dataclass
class Manifest:
    """What a folder of token shards holds and how it was made (`dataset.json`)."""

    task: str
    seq_len: int
    dtype: str
    layout: dict[str, int]
    layout_fingerprint: str
    text_tokenizer_fingerprint: str  # stored as "text_tokenizer"
    image_tokenizer_fingerprint: str  # stored as "image_tokenizer"
    shards: list[ShardInfo]
    stats: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    root: str = ""  # folder the manifest was read from, or its URL (not stored)

    @property
    def num_samples(self) -> int:
        """Samples in all shards."""
        return sum(s.samples for s in self.shards)

    def shard_paths(self) -> list[str]:
        """Where each shard is read from, in manifest order: a local path, or a URL (listed as one, or beside a
        dataset.json read from a URL)."""
        from .remote import is_url, local_path, sibling

        if is_url(self.root):
            return [s.name if is_url(s.name) else sibling(self.root, s.name) for s in self.shards]
        return [s.name if is_url(s.name) else os.path.join(self.root, local_path(s.name)) for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of dataset.json."""
        data = {_STORED_KEYS.get(k, k): v for k, v in asdict(self).items()}
        data.pop("root")
        data["shards"] = [asdict(s) for s in self.shards]
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "num_samples": self.num_samples, **data}

    def save(self, folder: str) -> str:
        """Write dataset.json atomically into `folder`; returns its path."""
        path = os.path.join(folder, MANIFEST_NAME)
        tmp = f"{path}.{os.getpid()}.partial"  # parts finishing together each write their own, then rename
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "Manifest":
        """Read a manifest from a dataset folder, a dataset.json path, or a dataset.json URL (pipe:, http(s)://)."""
        from .remote import is_url, read_url

        remote = is_url(path)
        file = os.path.join(path, MANIFEST_NAME) if not remote and os.path.isdir(path) else path
        if not remote and not os.path.exists(file):
            raise DataError(f"no {MANIFEST_NAME} at {path}; point at a folder made by `cogview preprocess`")
        try:
            if remote:
                data = json.loads(read_url(file).decode("utf-8"))
            else:
                with open(file, encoding="utf-8") as f:
                    data = json.load(f)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {MANIFEST_FORMAT!r}")
            if data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {data.get('version')} is not {MANIFEST_VERSION}")
            data = {_FIELDS.get(k, k): v for k, v in data.items() if k not in ("format", "version", "num_samples")}
            data["shards"] = [ShardInfo(**s) for s in data["shards"]]
            return cls(**data, root=file if remote else os.path.dirname(os.path.abspath(file)))
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{file} is not a valid dataset manifest ({e}); re-run `cogview preprocess`") from e

    def check(
        self,
        *,
        text_tokenizer_fingerprint: str | None = None,
        image_tokenizer_fingerprint: str | None = None,
        layout_fingerprint: str | None = None,
        seq_len: int | None = None,
    ) -> None:
        """Refuse data made with other tokenizers (the expected fingerprints),
        another id layout or another sequence length."""
        expected = {
            "text tokenizer": (text_tokenizer_fingerprint, self.text_tokenizer_fingerprint),
            "image tokenizer": (image_tokenizer_fingerprint, self.image_tokenizer_fingerprint),
            "token layout": (layout_fingerprint, self.layout_fingerprint),
            "sequence length": (seq_len, self.seq_len),
        }
        for what, (want, have) in expected.items():
            if want is not None and want != have:
                raise DataError(
                    f"dataset {self.root} was made with another {what} ({_short(have)}, expected {_short(want)}); "
                    "re-run `cogview preprocess` with the tokenizers you train with"
                )

    def check_same_tokens(self, other: "Manifest") -> None:
        """Refuse to mix two datasets whose token ids or lengths disagree."""
        self_ids = (self.text_tokenizer_fingerprint, self.image_tokenizer_fingerprint, self.layout_fingerprint, self.seq_len)
        other_ids = (other.text_tokenizer_fingerprint, other.image_tokenizer_fingerprint, other.layout_fingerprint, other.seq_len)
        if self_ids != other_ids:
            raise DataError(
                f"datasets {self.root} and {other.root} were made with different tokenizers, layouts or "
                "sequence lengths; preprocess both with the same tokenizers and --seq-len"
            )


def _short(value: object) -> str:
    """A fingerprint shortened for messages."""
    text = str(value)
    return text[:12] if len(text) > 16 else text
