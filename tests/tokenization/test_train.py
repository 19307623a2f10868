"""train-vqvae: data sources (folder, list, tars), exact resume, checkpoints, CLI, logs."""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_utils.errors import DataError
from data_utils.image_sources import find_images
from megatron_cogview.commands.tokenizer import register
from tests.tokenization.conftest import tiny_vqvae_config
from tests.tokenization.shapes import shape_images
from tokenization.errors import TokenizationError
from tokenization.imageproc import pil_to_tensor
from tokenization.vqvae.config import VQVAEConfig
from tokenization.vqvae.data import ImageFolderDataset, ResumableBatchSampler
from tokenization.vqvae.train import TrainOptions, TrainResult, train_vqvae


def _write_tar(path: Path, n: int, seed: int) -> Path:
    """A webdataset shard: KEY.jpg / KEY.png with KEY.txt captions beside them."""
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(shape_images(n, seed=seed)):
            for name, data in (
                (f"s{seed}_{i:03d}.{'png' if i % 2 else 'jpg'}", _encode(image, "PNG" if i % 2 else "JPEG")),
                (f"s{seed}_{i:03d}.txt", b"a caption"),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _encode(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _options(data: list[str], out: Path, **overrides: object) -> TrainOptions:
    base = dict(data=data, out=out, steps=6, batch_size=8, lr=1e-3, warmup_steps=2, workers=0, save_every=3,
                log_every=3, seed=1, progress=False)  # fmt: skip
    base.update(overrides)
    return TrainOptions(**base)  # type: ignore[arg-type]


def _train(config: VQVAEConfig, options: TrainOptions, log: Callable[[str], None]) -> TrainResult:
    return train_vqvae(config, options, find_images(options.data), log=log)


def _big_shapes(folder: Path, n: int, size: int) -> Path:
    """n shape images rendered at 32 px and enlarged to `size` px (PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(shape_images(n, seed=7)):
        image.resize((size, size), Image.BICUBIC).save(folder / f"big{i:03d}.png")
    return folder


@pytest.mark.parametrize("random_crop", [False, True])
def test_resume_is_bit_exact(shapes_dir: Path, tmp_path: Path, random_crop: bool) -> None:
    config = tiny_vqvae_config()
    data = [str(shapes_dir)] + ([str(_big_shapes(tmp_path / "big", 16, 64))] if random_crop else [])
    lines: list[str] = []
    _train(config, _options(data, tmp_path / "full", steps=8, save_every=4, random_crop=random_crop),
           log=lines.append)
    _train(config, _options(data, tmp_path / "part", steps=4, save_every=4, random_crop=random_crop),
           log=lambda s: None)
    resumed: list[str] = []
    _train(config, _options(data, tmp_path / "part", steps=8, save_every=4, resume=True, random_crop=random_crop),
           log=resumed.append)
    assert any("resumed from" in line and "step 4" in line for line in resumed)
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    part = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert full.keys() == part.keys()
    for key in full:
        assert torch.equal(full[key], part[key]), key
    first = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert not torch.equal(first["quantizer.codebook"], torch.zeros_like(first["quantizer.codebook"]))
    assert any("psnr" in line and "perplexity" in line and "codes_used" in line for line in lines)


def test_checkpoint_guards(shapes_dir: Path, tmp_path: Path) -> None:
    config = tiny_vqvae_config()
    with pytest.raises(TokenizationError, match="no checkpoint"):
        _train(config, _options([str(shapes_dir)], tmp_path / "a", resume=True), log=lambda s: None)
    _train(config, _options([str(shapes_dir)], tmp_path / "b", steps=3), log=lambda s: None)
    with pytest.raises(TokenizationError, match="--resume"):
        _train(config, _options([str(shapes_dir)], tmp_path / "b", steps=3), log=lambda s: None)
    with pytest.raises(TokenizationError, match="different model config"):
        _train(
            tiny_vqvae_config(code_dim=8), _options([str(shapes_dir)], tmp_path / "b", resume=True), log=lambda s: None
        )


def test_sampler_restarts_mid_stream() -> None:
    full = ResumableBatchSampler(10, 4, seed=3)
    stream = iter(full)
    batches = [next(stream) for _ in range(7)]
    later = iter(ResumableBatchSampler(10, 4, seed=3, start_step=4))
    assert [next(later) for _ in range(3)] == batches[4:]
    flat = [i for b in batches[:5] for i in b]  # 20 indices = 2 epochs, each a permutation
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]


def test_sampler_tags_each_index_with_its_epoch() -> None:
    plain, tagged = iter(ResumableBatchSampler(10, 4, seed=3)), iter(ResumableBatchSampler(10, 4, seed=3, tag_epochs=True))
    flat = [k for _ in range(8) for k in next(tagged)]
    assert [i for i, _ in flat] == [i for _ in range(8) for i in next(plain)]
    assert [e for _, e in flat] == [p // 10 for p in range(32)]
    later = iter(ResumableBatchSampler(10, 4, seed=3, start_step=5, tag_epochs=True))
    assert next(later) == flat[20:24]


def test_random_crop_windows(tmp_path: Path) -> None:
    """random_crop: an S x S window of the image at its own pixels, fixed by (seed, index, draw); S px images whole,
    smaller ones resized up; the cache changes nothing."""
    images = shape_images(3, seed=2)
    images[0].resize((64, 48), Image.BICUBIC).save(tmp_path / "a_big.png")
    images[1].save(tmp_path / "b_same.png")  # 32 px: the whole image
    images[2].resize((20, 24), Image.BICUBIC).save(tmp_path / "c_small.png")
    sources = find_images([str(tmp_path)])
    norm = ((0.5,) * 3, (0.5,) * 3)
    crop = ImageFolderDataset(sources, 32, *norm, random_crop=True, seed=4)
    cached = ImageFolderDataset(sources, 32, *norm, cache=True, random_crop=True, seed=4)
    plain = ImageFolderDataset(sources, 32, *norm)
    big = (pil_to_tensor(Image.open(tmp_path / "a_big.png").convert("RGB")) - 0.5) / 0.5  # [3, 48, 64]
    corners = set()
    for draw in range(12):
        item = crop[(0, draw)]
        assert item.shape == (3, 32, 32)
        found = [(t, l) for t in range(17) for l in range(33) if torch.equal(big[:, t : t + 32, l : l + 32], item)]
        assert found, "not a window of the image at its own pixels"
        corners.add(found[0])
        assert torch.equal(cached[(0, draw)], item) and torch.equal(cached[(0, draw)], item)  # read, then cached
    assert len(corners) >= 6  # windows move between draws
    assert torch.equal(crop[(0, 3)], ImageFolderDataset(sources, 32, *norm, random_crop=True, seed=4)[(0, 3)])
    assert not torch.equal(crop[(0, 3)], ImageFolderDataset(sources, 32, *norm, random_crop=True, seed=5)[(0, 3)]) or \
        not torch.equal(crop[(0, 4)], ImageFolderDataset(sources, 32, *norm, random_crop=True, seed=5)[(0, 4)])
    assert torch.equal(crop[(1, 0)], plain[1]) and torch.equal(crop[(1, 9)], plain[1])
    small = crop[(2, 1)]
    assert small.shape == (3, 32, 32)
    up = (pil_to_tensor(Image.open(tmp_path / "c_small.png").convert("RGB").resize((32, 38), Image.BICUBIC)) - 0.5) / 0.5
    assert any(torch.equal(up[:, t : t + 32], small) for t in range(7))


def test_data_sources(tmp_path: Path, shapes_dir: Path) -> None:
    shards = [_write_tar(tmp_path / f"shard-{i:03d}.tar", 6, seed=i) for i in range(3)]
    sources = find_images([str(tmp_path / "shard-{000..002}.tar")])
    assert len(sources) == 18 and all(s.offset >= 0 for s in sources)
    listing = tmp_path / "list.txt"  # absolute paths, and relative ones (to the list file) with a TSV tail
    files = sorted(shapes_dir.iterdir())
    (tmp_path / "local.png").write_bytes(files[0].read_bytes())
    listing.write_text("# images\n" + "\n".join(str(p) for p in files[:4]) + "\nlocal.png\tcaption\n")
    assert len(find_images([str(listing)])) == 5
    assert len(find_images([str(shapes_dir)])) == 256
    dataset = ImageFolderDataset(sources + find_images([str(listing)]), 32, (0.5,) * 3, (0.5,) * 3)
    item = dataset[1]  # a PNG from inside a tar
    assert item.shape == (3, 32, 32) and item.min() >= -1 and item.max() <= 1
    assert dataset[len(dataset) - 1].shape == (3, 32, 32)
    with pytest.raises(DataError, match="not found"):
        find_images([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        find_images([str(tmp_path / "empty")])
    with pytest.raises(DataError, match="compressed"):
        (tmp_path / "x.tar.gz").write_bytes(b"")
        find_images([str(tmp_path / "x.tar.gz")])
    # every tar source points at its member's bytes (read back with the standard library)
    assert sorted({s.path for s in sources}) == [str(p) for p in shards]
    for s in sources:
        with tarfile.open(s.path) as tar:
            member = next(m for m in tar.getmembers() if m.offset_data == s.offset)
            expect = tar.extractfile(member).read()
        with open(s.path, "rb") as f:
            f.seek(s.offset)
            assert member.name.endswith((".jpg", ".png")) and f.read(s.size) == expect


def test_broken_image_is_skipped(tmp_path: Path, shapes_dir: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = sorted(shapes_dir.iterdir())[0]
    dataset = ImageFolderDataset(find_images([str(bad), str(good)]), 32, (0.5,) * 3, (0.5,) * 3)
    assert dataset[0].shape == (3, 32, 32)


def test_image_cache_returns_the_same_tensors_without_reading_again(tmp_path: Path, shapes_dir: Path) -> None:
    from PIL import Image

    for i, src in enumerate(sorted(shapes_dir.iterdir())[:6]):
        (tmp_path / f"{i}.png").write_bytes(src.read_bytes())
    Image.open(tmp_path / "0.png").resize((48, 48), Image.BICUBIC).save(tmp_path / "big.png")  # resized on the way in
    sources = find_images([str(tmp_path)])
    plain = ImageFolderDataset(sources, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    cached = ImageFolderDataset(sources, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), cache=True)
    expected = [plain[i] for i in range(len(sources))]
    assert all(torch.equal(cached[i], expected[i]) for i in range(len(sources)))  # first read: from the files
    for f in tmp_path.glob("*.png"):
        f.unlink()
    assert all(torch.equal(cached[i], expected[i]) for i in range(len(sources)))  # then from memory, bit for bit
    with pytest.raises(TokenizationError, match="unreadable"):
        plain[0]  # without the cache the files are read again (and are gone)


def test_cli_train_vqvae_on_tars_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        _write_tar(tmp_path / f"data-{i}.tar", 8, seed=10 + i)
    parser = argparse.ArgumentParser(prog="cogview")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "tok"
    argv = ["tokenizer", "train-vqvae", "--data", str(tmp_path / "data-{0..1}.tar"), "--out", str(out), "--steps", "4",
            "--batch-size", "4", "--workers", "2", "--save-every", "2", "--log-every", "2", "--image-size", "32",
            "--downsample", "4", "--codebook-size", "32", "--code-dim", "8", "--hidden-channels", "16",
            "--res-channels", "8", "--num-res-blocks", "1"]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "step 2/4" in text and "psnr" in text and "codes_used" in text
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "checkpoint.pt", "train_log.jsonl"}
    args = parser.parse_args(argv[:7] + ["6", "--resume", "--workers", "0", "--codebook-size", "32"])
    assert args.func(args) == 0
    assert "resumed from" in capsys.readouterr().out
    args = parser.parse_args(argv[:7] + ["8", "--resume", "--codebook-size", "16"])
    with pytest.raises(TokenizationError, match="--codebook-size"):
        args.func(args)
