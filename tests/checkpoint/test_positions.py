"""Growing the position table for a bigger image grid: the interpolation, --finetune-from, cogview convert, generation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_utils.tiny_dataset import LAYOUT, make_tiny_dataset, seq_len
from megatron_cogview import cli
from megatron_cogview.checkpoint.layout import CheckpointError, read_meta
from megatron_cogview.checkpoint.load import load_model, read_module
from megatron_cogview.checkpoint.positions import POSITION_KEY, default_new_grid, grow_position_table
from megatron_cogview.config import TrainConfig
from megatron_cogview.generation import GenerationConfig
from megatron_cogview.generation.text2image import generate_image_codes
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.training.runner import base_args, train

SINGLE = ParallelState.single()
H = 5


def _linear_table(text: int, g: int, a: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Text rows 0..text-1 (arbitrary), then a g x g image block whose row (r, c) is a + r*u + c*v."""
    rows = [torch.full((H,), float(i)) * 0.1 - 1 for i in range(text)]
    rows += [a + r * u + c * v for r in range(g) for c in range(g)]
    return torch.stack(rows).double()


def test_image_rows_are_bilinear_over_the_grid_and_text_rows_kept() -> None:
    torch.manual_seed(0)
    a, u, v = torch.randn(3, H, dtype=torch.float64)
    old = _linear_table(4, 3, a, u, v)  # 4 text rows + 3x3 image
    new = grow_position_table(old, 4 + 25, 3, 5)  # -> 4 text rows + 5x5 image
    assert torch.equal(new[:4], old[:4])
    # bilinear interpolation (align_corners) reproduces a function linear in (row, column) exactly
    want = torch.stack([a + (r * 2 / 4) * u + (c * 2 / 4) * v for r in range(5) for c in range(5)])
    torch.testing.assert_close(new[4:], want, rtol=0, atol=1e-12)
    # corners of the new grid are the old corners
    assert torch.allclose(new[4], old[4]) and torch.allclose(new[-1], old[-1])


def test_more_text_rows_repeat_the_last_one_and_fallback_is_1d() -> None:
    old = torch.arange(13 * H, dtype=torch.float32).view(13, H)  # 4 text rows + 3x3
    new = grow_position_table(old, 6 + 9, 3, 3)  # same grid, two more text rows
    assert torch.equal(new[:4], old[:4]) and torch.equal(new[4], old[3]) and torch.equal(new[5], old[3])
    assert torch.equal(new[6:], old[4:])
    assert new.dtype == torch.float32
    # no recorded grid: linear interpolation along the rows reproduces a table linear in the row index
    lin = grow_position_table(old, 25, None, None)
    want = torch.stack([old[0] + (old[1] - old[0]) * (i * 12 / 24) for i in range(25)])
    torch.testing.assert_close(lin, want)
    with pytest.raises(CheckpointError, match="cannot shrink"):
        grow_position_table(old, 12, 3, 3)
    assert default_new_grid(13, 4 + 25, 3) == 5 and default_new_grid(13, 30, 3) == 3


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data with 4x4 images, a tiny model trained 2 steps on it)."""
    root = tmp_path_factory.mktemp("grid")
    data = make_tiny_dataset(str(root / "d16"), n=64, grid=16)
    train(base_args(data, str(root / "t2i"), 2, "--max-position-embeddings", str(seq_len(16) - 1)))
    return root, root / "t2i"


@pytest.mark.slow
def test_finetune_onto_a_bigger_grid_grows_the_table(small_grid: tuple[Path, Path]) -> None:
    from megatron_cogview.commands.pretrain import _finetune_weights

    root, ckpt = small_grid
    it, meta = read_meta(ckpt)
    assert meta.tokenizers["image_grid"] == 4
    old = read_module(ckpt, it, 0)[POSITION_KEY]
    rows = seq_len(36) - 1  # 6x6 images, same text budget

    class Logger:
        lines: list[str] = []

        def info(self, message: str) -> None:
            self.lines.append(message)

    model = CogViewModel(meta.model_config().__class__.from_dict({**meta.model, "max_position_embeddings": rows}), SINGLE)
    _finetune_weights(model, TrainConfig(finetune_from=str(ckpt)), SINGLE, Logger(), 6, rows)  # type: ignore[arg-type]
    grown = model.state_dict()[POSITION_KEY]
    torch.testing.assert_close(grown, grow_position_table(old, rows, 4, 6), rtol=0, atol=0)
    assert torch.equal(grown[:9], old[:9])  # [ROI1] + 6 text + [BASE] [BOI1] rows unchanged
    assert any(f"position table grown {old.shape[0]} -> {rows} rows" in line and "4x4 grid to 6x6" in line
               for line in Logger.lines)
    # end to end: pretrain_gpt2.py fine-tunes on 6x6 data; a smaller table is refused in one line
    data36 = make_tiny_dataset(str(root / "d36"), n=64, grid=36)
    proc = train(base_args(data36, str(root / "ft"), 2, "--finetune-from", str(ckpt),
                           "--max-position-embeddings", str(rows)))
    assert "position table grown" in proc.stdout and "bilinear" in proc.stdout
    assert read_meta(root / "ft")[1].tokenizers["image_grid"] == 6
    bad = train(base_args(str(root / "d16"), str(root / "bad"), 2, "--finetune-from", str(root / "ft"),
                          "--max-position-embeddings", str(old.shape[0])), check=False)
    assert bad.returncode == 2 and "would shrink it" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_convert_grows_the_table_and_generation_uses_it(small_grid: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, ckpt = small_grid
    it, meta = read_meta(ckpt)
    old_rows = meta.model["max_position_embeddings"]
    rows = old_rows - 16 + 36
    assert cli.main(["convert", "--load", str(ckpt), "--save", str(tmp_path / "big"),
                     "--max-position-embeddings", str(rows)]) == 0
    assert "4x4 grid to 6x6" in capsys.readouterr().err
    model, big = load_model(tmp_path / "big", SINGLE)
    assert big.model["max_position_embeddings"] == rows and big.tokenizers["image_grid"] == 6
    want = grow_position_table(read_module(ckpt, it, 0)[POSITION_KEY], rows, 4, 6, old_rows, rows)
    assert torch.equal(model.state_dict()[POSITION_KEY], want)
    # generation fills the whole 6x6 grid after a full-length prompt (positions up to the last row)
    prompt = [LAYOUT.command("ROI1"), *LAYOUT.text_id(torch.arange(6)).tolist(), LAYOUT.command("BASE"),
              LAYOUT.command("BOI1")]
    image_range = (LAYOUT.image_offset, LAYOUT.image_offset + LAYOUT.num_image_tokens)
    codes = generate_image_codes(model, [prompt], 36, image_range, GenerationConfig(top_k=5, seed=1))
    assert codes.shape == (1, 36) and 0 <= int(codes.min()) and int(codes.max()) < 64
    # bad input: one line, exit 2
    for extra, message in ((["--max-position-embeddings", str(old_rows - 1)], "would shrink it"),
                           (["--max-position-embeddings", str(rows), "--target-tp", "1"], "separate"),
                           (["--image-grid", "6"], "only applies with"),
                           (["--max-position-embeddings", str(rows), "--image-grid", "9"], "needs more than")):
        assert cli.main(["convert", "--load", str(ckpt), "--save", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_image_tokenizer_at_a_recorded_grid_decodes_that_grid() -> None:
    """What `cogview generate` uses for a checkpoint whose image_grid differs from the VQ-VAE's default."""
    from tokenization.image import ImageTokenizer
    from tokenization.vqvae.config import VQVAEConfig
    from tokenization.vqvae.model import VQVAE

    torch.manual_seed(0)
    config = VQVAEConfig(image_size=32, hidden_channels=8, num_res_blocks=0, res_channels=4, downsample=4,
                         codebook_size=16, code_dim=4)
    tok = ImageTokenizer(VQVAE(config))
    big = tok.at_grid(12)
    assert (tok.grid_size, big.grid_size, big.image_size) == (8, 12, 48)
    assert big.fingerprint() == tok.fingerprint() and big.model is tok.model
    codes = torch.randint(0, 16, (2, 12, 12))
    images = big.decode(codes)
    assert [im.size for im in images] == [(48, 48), (48, 48)]
    assert tok.grid_size == 8  # the original is unchanged
