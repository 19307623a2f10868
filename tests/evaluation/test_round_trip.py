"""The tokenizer-ceiling reading (evaluation/round_trip.py) against tokenizers whose effect is known exactly."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import pytest
import torch
from PIL import Image

from data_utils.checker import check_image
from data_utils.synth import ShapeSample, iter_samples, render
from megatron_cogview.evaluation.metrics import wilson_interval
from megatron_cogview.evaluation.round_trip import round_trip_reading


class RenderingTokenizer:
    """Codes are indices of the scenes it was given; decoding renders each scene again, squares drawn as `square_as`
    (an identity round trip when that is "square"), so the checker's reading of every decoded image is known."""

    def __init__(self, scenes: Sequence[ShapeSample], square_as: str = "square") -> None:
        self.scenes, self.square_as = list(scenes), square_as
        self.sizes: list[int | None] = []  # image_size of each encode call
        self.encoded, self.pixels = 0, 0

    def encode(self, images: Sequence[Image.Image], image_size: int | None = None) -> torch.Tensor:
        self.sizes.append(image_size)
        self.pixels = images[0].size[0]
        start, self.encoded = self.encoded, self.encoded + len(images)
        return torch.arange(start, self.encoded)

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        out = []
        for i in codes.tolist():
            s = self.scenes[i]
            shown = dataclasses.replace(s, shape=self.square_as) if s.shape == "square" else s
            out.append(render(shown, self.pixels))
        return out


def _read(image: Image.Image) -> tuple[str, str, str] | None:
    return check_image(image).combination


def test_identity_round_trip_reads_every_real_image_right() -> None:
    scenes = list(iter_samples(60, seed=3))
    result = round_trip_reading(RenderingTokenizer(scenes), [render(s, 32) for s in scenes],
                                [s.combination for s in scenes], _read)
    assert result["images"] == result["correct"] == 60 and result["accuracy"] == 1.0
    assert result["accuracy_ci95"] == list(wilson_interval(60, 60))
    assert set(result["by_shape"]) == {s.shape for s in scenes} and set(result["by_shape"].values()) == {1.0}


@pytest.mark.parametrize("batch", [7, 256])
def test_a_tokenizer_that_rounds_squares_costs_exactly_the_squares(batch: int) -> None:
    scenes = list(iter_samples(90, seed=5))
    squares = sum(s.shape == "square" for s in scenes)
    assert 0 < squares < 90
    tok = RenderingTokenizer(scenes, square_as="circle")
    result = round_trip_reading(tok, [render(s, 64) for s in scenes], [s.combination for s in scenes], _read,
                                image_size=64, batch=batch)
    assert result["correct"] == 90 - squares and result["accuracy"] == pytest.approx((90 - squares) / 90)
    assert result["accuracy_ci95"] == list(wilson_interval(90 - squares, 90))
    assert result["by_shape"]["square"] == 0.0 and result["by_shape"]["circle"] == result["by_shape"]["triangle"] == 1.0
    assert set(tok.sizes) == {64} and len(tok.sizes) == -(-90 // batch)  # encoded at the size asked, in batches


def test_mismatched_lengths_are_refused() -> None:
    scenes = list(iter_samples(3, seed=0))
    with pytest.raises(ValueError, match="3 images but 2"):
        round_trip_reading(RenderingTokenizer(scenes), [render(s, 32) for s in scenes],
                           [s.combination for s in scenes[:2]], _read)
