"""The outlined shape style (a style pretraining never saw) and the checker that reads it."""
from __future__ import annotations

import numpy as np
from PIL import Image

from data_utils.checker import check_image, check_style
from data_utils.synth import render, sample_attributes, write_synth


def test_checker_reads_the_drawn_style_and_attributes() -> None:
    for i in range(150):
        s = sample_attributes(i, seed=3)
        filled, outlined = render(s, 32), render(s, 32, "outlined")
        assert check_style(filled) == "filled" and check_style(outlined) == "outlined", (i, s)
        r = check_image(outlined)
        assert (r.color, r.position) == (s.color, s.position), (i, s, r)
    # an image drawn independently (a ring made by hand with numpy) and a blank one
    ring = np.full((32, 32, 3), 255, np.uint8)
    ring[4:14, 4:14] = (220, 20, 20)
    ring[7:11, 7:11] = 255
    assert check_style(Image.fromarray(ring)) == "outlined"
    ring[7:11, 7:11] = (220, 20, 20)
    assert check_style(Image.fromarray(ring)) == "filled"
    assert check_style(np.full((32, 32, 3), 255, np.uint8)) is None


def test_synth_writes_outlined_images(tmp_path) -> None:
    write_synth(str(tmp_path), 12, 32, seed=1, style="outlined")
    images = sorted((tmp_path / "images").iterdir())
    assert len(images) == 12 and all(check_style(Image.open(p)) == "outlined" for p in images)
