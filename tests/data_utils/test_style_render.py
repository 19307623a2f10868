"""The new shape styles (outlined, striped: styles pretraining never saw) and the checker that reads them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_utils.checker import check_image, check_style
from data_utils.synth import RENDER_STYLES, render, sample_attributes, write_synth


@pytest.mark.parametrize("size", [32, 64])
def test_checker_reads_the_drawn_style_and_attributes(size: int) -> None:
    for i in range(150):
        s = sample_attributes(i, seed=3)
        for style in RENDER_STYLES:
            image = render(s, size, style)
            assert check_style(image) == style, (i, s, style)
            r = check_image(image)
            assert (r.color, r.position) == (s.color, s.position), (i, s, r)
    # an image drawn independently (a ring made by hand with numpy) and a blank one
    ring = np.full((32, 32, 3), 255, np.uint8)
    ring[4:14, 4:14] = (220, 20, 20)
    ring[7:11, 7:11] = 255
    assert check_style(Image.fromarray(ring)) == "outlined"
    ring[7:11, 7:11] = (220, 20, 20)
    assert check_style(Image.fromarray(ring)) == "filled"
    assert check_style(np.full((32, 32, 3), 255, np.uint8)) is None
    bands = np.full((32, 32, 3), 255, np.uint8)  # a square painted in 2-row bands, by hand
    bands[4:16:4, 4:16] = bands[5:16:4, 4:16] = (20, 50, 220)
    assert check_style(Image.fromarray(bands)) == "striped"
    bands[4:16, 4:16] = (20, 50, 220)
    assert check_style(Image.fromarray(bands)) == "filled"


def test_striped_bands_follow_the_image_rows() -> None:
    s = sample_attributes(0, seed=0)
    filled, striped = (np.asarray(render(s, 32, st)) for st in ("filled", "striped"))
    changed = np.any(filled != striped, axis=-1)
    assert changed.any() and not changed[[0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29]].any()


@pytest.mark.parametrize("style", ["outlined", "striped"])
def test_synth_writes_new_style_images(tmp_path, style: str) -> None:
    write_synth(str(tmp_path), 12, 32, seed=1, style=style)
    images = sorted((tmp_path / "images").iterdir())
    assert len(images) == 12 and all(check_style(Image.open(p)) == style for p in images)
