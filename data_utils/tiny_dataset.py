"""A tiny learnable text-to-image token dataset (image codes are a function of the caption).

Tests, benches and `bench/gpu_validate.py` train on it: it needs no tokenizer files, and a model that
learns it shows a falling loss within a few dozen steps.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from data_utils.writer import TokenRecord, write_token_dataset
from tokenization.layout import TokenLayout
from tokenization.templates import TEXT_TO_IMAGE, text_to_image

LAYOUT = TokenLayout(num_image_tokens=64, num_text_tokens=100)
GRID = 16  # image codes per sample (a 4x4 grid) by default
MAX_TEXT = 6  # text ids per caption at most, by default


def seq_len(grid: int = GRID, max_text: int = MAX_TEXT) -> int:
    """[ROI1] text(<=max_text) [BASE] [BOI1] codes [EOI1] + one shifted label."""
    return TEXT_TO_IMAGE.length(max_text, grid) + 1


SEQ_LEN = seq_len()


def records(n: int, seed: int = 0, grid: int = GRID, max_text: int = MAX_TEXT) -> Iterator[TokenRecord]:
    """n samples: 2..max_text random text ids, then `grid` codes that depend on the first text id."""
    rng = np.random.default_rng(seed)
    length = seq_len(grid, max_text)
    for i in range(n):
        text = rng.integers(0, 100, size=int(rng.integers(2, max_text + 1)))
        codes = (np.arange(grid) * 3 + int(text[0])) % 64
        seq = text_to_image(LAYOUT, text.tolist(), codes, length)
        yield TokenRecord(key=f"s{i:05d}", tokens=seq.tokens, position_ids=seq.position_ids, caption=f"c{i}")


def make_tiny_dataset(out: str, n: int = 256, samples_per_shard: int = 32, seed: int = 0, grid: int = GRID,
                      max_text: int = MAX_TEXT) -> str:
    """Write the dataset into `out` (shards + dataset.json) and return the folder."""
    write_token_dataset(out, records(n, seed, grid, max_text), layout=LAYOUT, seq_len=seq_len(grid, max_text),
                        samples_per_shard=samples_per_shard, text_tokenizer_fingerprint="tiny-text",
                        image_tokenizer_fingerprint="tiny-image")
    return out
