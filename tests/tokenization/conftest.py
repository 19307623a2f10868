"""Shared fixtures: a tiny SentencePiece model and a tiny trained VQ-VAE, built once per session in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tokenization.shapes import write_folder

CORPUS = [
    "a photo of a red car parked on the street",
    "the quick brown fox jumps over the lazy dog",
    "an oil painting of mountains and a river at sunset",
    "a cartoon cat sitting on a wooden chair",
    "two dogs playing with a ball in the park",
    "一只可爱的小猫坐在窗台上",
    "美丽的山水画，远处有高山和河流",
    "城市街道上停着一辆红色的汽车",
    "两只狗在公园里玩球",
    "一幅油画，描绘了日落时的大海",
]


def tiny_vqvae_config(**overrides: object) -> "object":
    """A VQ-VAE small enough to train in seconds on 32 px images (8x8 codes of 64)."""
    from tokenization.vqvae import VQVAEConfig

    base = dict(
        image_size=32, hidden_channels=32, res_channels=16, num_res_blocks=1, downsample=4,
        codebook_size=64, code_dim=16, ema_decay=0.9, dead_code_threshold=0.1,
    )  # fmt: skip
    base.update(overrides)
    return VQVAEConfig(**base)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)  # 2 threads on 2 shared cores can be 10x slower (spin-waiting)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "captions.txt"
    path.write_text("\n".join(CORPUS * 5) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_model(corpus_file: Path) -> Path:
    from tokenization.text import train_text_tokenizer

    return train_text_tokenizer([corpus_file], corpus_file.parent / "sp", 300, character_coverage=1.0)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("shapes") / "images", 256, seed=0)


@pytest.fixture(scope="session")
def trained_vqvae(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """A tiny VQ-VAE trained for 400 steps on shapes (about 5-10 s on 2 cores)."""
    from data_utils.image_sources import find_images
    from tokenization.vqvae.train import TrainOptions, train_vqvae

    torch.set_num_threads(1)  # 2 threads on 2 shared cores can be 10x slower (spin-waiting)
    out = tmp_path_factory.mktemp("vqvae")
    options = TrainOptions(
        data=[str(shapes_dir)], out=out, steps=400, batch_size=16, lr=2e-3, warmup_steps=0,
        workers=0, save_every=400, log_every=100, progress=False,
    )  # fmt: skip
    train_vqvae(tiny_vqvae_config(), options, find_images(options.data), log=lambda line: None)
    return out
