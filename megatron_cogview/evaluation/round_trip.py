"""The image tokenizer's share of a checker score: how the attribute checker reads real images after their round
trip through the VQ-VAE (encode, then decode).

Every generated image is decoded by the same VQ-VAE, so a scene the checker misreads after a round trip is an error
the transformer cannot avoid: the round-trip accuracy is the most a generated image can score through this
tokenizer, and 1 minus it is the tokenizer's part of a measured miss rate."""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
from PIL import Image

from data_utils.synth import Combination
from megatron_cogview.evaluation.metrics import wilson_interval


class RoundTripTokenizer(Protocol):
    def encode(self, images: Sequence[Image.Image], image_size: int | None = None) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> list[Image.Image]: ...


def round_trip_reading(tokenizer: RoundTripTokenizer, images: Sequence[Image.Image], expected: Sequence[Combination],
                       read: Callable[[Image.Image], Combination | None], image_size: int | None = None,
                       batch: int = 256) -> dict[str, Any]:
    """Checker accuracy on decode(encode(image)) against each image's true combination, with its Wilson 95%
    interval, overall and per shape; `image_size` is the size the tokenizer encodes at (default: its own)."""
    if len(images) != len(expected):
        raise ValueError(f"{len(images)} images but {len(expected)} expected combinations")
    hits: list[bool] = []
    for start in range(0, len(images), batch):
        chunk = list(images[start : start + batch])
        decoded = tokenizer.decode(tokenizer.encode(chunk, image_size=image_size))
        hits += [read(im) == want for im, want in zip(decoded, expected[start : start + batch], strict=True)]
    correct = sum(hits)
    low, high = wilson_interval(correct, len(hits))
    by_shape: dict[str, list[bool]] = {}
    for ok, want in zip(hits, expected):
        by_shape.setdefault(want[1], []).append(ok)
    return {"images": len(hits), "accuracy": correct / max(1, len(hits)), "accuracy_ci95": [low, high],
            "correct": correct, "by_shape": {s: sum(v) / len(v) for s, v in sorted(by_shape.items())}}
