"""Writing fixed-length token sequences into numbered tar shards plus their manifest."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from tokenization.layout import TokenLayout

from .errors import DataError
from .shards import Manifest, ShardInfo, encode_sample, storage_dtype
from .wds import AtomicTarWriter, safe_key


def shard_name(prefix: str, index: int) -> str:
    """File name of shard `index`: PREFIX-000000.tar."""
    if not prefix or "/" in prefix or "." in prefix:
        raise DataError(f"--prefix {prefix!r} must be a plain name without '/' or '.'")
    return f"{prefix}-{index:06d}.tar"


@dataclass(frozen=True)
class TokenRecord:
    """One sequence to store: its key, tokens and position ids (length seq_len), caption and metadata."""

    key: str
    tokens: np.ndarray
    position_ids: np.ndarray
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def write_shard(out: str, prefix: str, index: int, records: Iterable[TokenRecord], seq_len: int, dtype: str) -> ShardInfo:
    """Write one shard atomically (temporary name, renamed when complete); returns its name and size."""
    name = shard_name(prefix, index)
    with AtomicTarWriter(os.path.join(out, name)) as writer:
        for r in records:
            tokens, positions = np.asarray(r.tokens), np.asarray(r.position_ids)
            if tokens.shape != (seq_len,) or positions.shape != (seq_len,):
                raise DataError(f"sample {r.key!r} has length {tokens.shape}, not ({seq_len},); build it with seq_len={seq_len}")
            meta = {"source": r.key, **r.meta}
            writer.write(encode_sample(safe_key(r.key), tokens, positions, r.caption, meta, dtype))
        count = writer.count
    return ShardInfo(name, count)


def _chunks(items: Iterable[TokenRecord], size: int) -> Iterator[list[TokenRecord]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def write_token_dataset(
    out: str,
    records: Iterable[TokenRecord],
    *,
    layout: TokenLayout,
    seq_len: int,
    samples_per_shard: int = 1000,
    prefix: str = "data",
    task: str = "custom",
    text_tokenizer_fingerprint: str = "",
    image_tokenizer_fingerprint: str = "",
    settings: dict[str, Any] | None = None,
) -> Manifest:
    """Write in-memory token sequences as shards + dataset.json (for tests, tools and fine-tuning sets)."""
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard {samples_per_shard} must be >= 1")
    os.makedirs(out, exist_ok=True)
    dtype = storage_dtype(layout.vocab_size)
    shards = [write_shard(out, prefix, i, chunk, seq_len, dtype) for i, chunk in enumerate(_chunks(records, samples_per_shard))]
    manifest = Manifest(
        task=task, seq_len=seq_len, dtype=dtype, layout=layout.to_dict(), layout_fingerprint=layout.fingerprint(),
        text_tokenizer_fingerprint=text_tokenizer_fingerprint, image_tokenizer_fingerprint=image_tokenizer_fingerprint,
        shards=shards,
        stats={"written": sum(s.samples for s in shards)}, settings=dict(settings or {}), root=os.path.abspath(out),
    )
    manifest.save(out)
    return manifest
