"""`cogview demo --super-resolution` on top of a finished fast demo (slow: the SR stages only, ~1 min)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_cogview.cli import main
from megatron_cogview.demo.pipeline import STAGE_FIELDS
from megatron_cogview.demo.superres import ROUND_TRIP_SCENES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's shared fast demo when there is one (tests/demo/conftest.py), else our own run."""
    try:
        return request.getfixturevalue("demo")
    except pytest.FixtureLookupError:
        out = tmp_path_factory.mktemp("demo_sr") / "out"
        assert main(["demo", "--fast", "--out", str(out)]) == 0
        return out


def test_demo_super_resolution_stages(finished_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--super-resolution reuses the finished main stages and adds the SR fine-tune, magnify and report."""
    from PIL import Image

    demo = finished_demo
    assert main(["demo", "--fast", "--super-resolution", "--out", str(demo)]) == 0
    assert capsys.readouterr().out.count("done before, skipped") == len(STAGE_FIELDS)  # only the SR stages ran
    result = json.loads((demo / "report" / "superres.json").read_text())
    assert result["generated_magnified"] > 0 and 0.0 <= result["checker_agreement"] <= 1.0
    assert 0.0 <= result["bicubic_checker_agreement"] <= 1.0 and result["clear_sources"] <= result["generated_magnified"]
    assert result["on_caption_sources"] + result["off_caption_sources"] == result["generated_magnified"]
    for key in ("on_caption_kept", "bicubic_on_caption_kept", "off_caption_moved_to_caption"):
        assert 0.0 <= result[key] <= 1.0
    assert result["psnr_ours_db"] > 10.0 and result["psnr_bicubic_db"] > 10.0
    assert result["round_trip_2x"]["images"] == ROUND_TRIP_SCENES and 0.0 <= result["round_trip_2x"]["accuracy"] <= 1.0
    assert (demo / "report" / "superres.png").is_file() and "PSNR" in (demo / "report" / "superres.md").read_text()
    magnified = sorted((demo / "samples" / "superres").glob("*.x2.png"))
    assert magnified and Image.open(magnified[0]).size == (64, 64)
    assert main(["demo", "--fast", "--super-resolution", "--out", str(demo)]) == 0  # all stages skipped now
    assert capsys.readouterr().out.count("done before, skipped") == len(STAGE_FIELDS) + 3
