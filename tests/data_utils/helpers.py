"""Test helpers shared by the data_utils tests."""
from __future__ import annotations

from typing import Any, Sequence

from data_utils.preprocess import PreprocessConfig, preprocess
from data_utils.shards import Manifest


def preprocess_paths(inputs: Sequence[str], text_tokenizer: str, image_tokenizer: str, out: str, **kwargs: Any) -> Manifest:
    """preprocess() with the config given as keyword arguments and no log output."""
    return preprocess(PreprocessConfig(tuple(inputs), text_tokenizer, image_tokenizer, out, **kwargs), log=lambda s: None)
