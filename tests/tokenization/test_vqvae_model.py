"""VQ-VAE model shapes, config validation, safetensors save/load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tokenization.conftest import tiny_vqvae_config
from tokenization.errors import TokenizationError
from tokenization.vqvae import VQVAE, VQVAEConfig, load_pretrained, save_pretrained


@pytest.mark.parametrize("downsample", [2, 4, 8])
def test_shapes_for_each_downsampling(downsample: int) -> None:
    torch.manual_seed(0)
    config = tiny_vqvae_config(downsample=downsample)
    model = VQVAE(config)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    side = 32 // downsample
    assert config.grid_size == side and config.num_downsamples == downsample.bit_length() - 1
    assert out.codes.shape == (3, side, side) and out.codes.dtype == torch.int64
    assert out.reconstruction.shape == x.shape
    assert out.counts.sum() == 3 * side * side
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # gradient reaches the encoder
    model.eval()
    codes = model.encode(x)
    assert codes.shape == (3, side, side)
    assert model.decode(codes).shape == x.shape
    assert model.encode(torch.randn(1, 3, 64, 48)).shape == (1, 64 // downsample, 48 // downsample)


def test_default_config_is_cogview() -> None:
    config = VQVAEConfig()
    assert (config.image_size, config.grid_size, config.codebook_size, config.code_dim) == (256, 32, 8192, 256)


def test_config_validation() -> None:
    with pytest.raises(TokenizationError, match="power of two"):
        VQVAEConfig(downsample=6)
    with pytest.raises(TokenizationError, match="multiple of downsample"):
        VQVAEConfig(image_size=100, downsample=8)
    with pytest.raises(TokenizationError, match="ema_decay"):
        VQVAEConfig(ema_decay=1.0)
    with pytest.raises(TokenizationError, match="normalize_mean needs 3"):
        VQVAEConfig(normalize_mean=(0.5,))
    with pytest.raises(TokenizationError, match="unknown VQ-VAE config keys"):
        VQVAEConfig.from_dict({"layers": 3})
    config = tiny_vqvae_config()
    assert VQVAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VQVAE(tiny_vqvae_config())
    model(torch.randn(4, 3, 32, 32))  # initialises the codebook and moves the EMA buffers
    model.eval()
    save_pretrained(model, tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "tok")
    assert not loaded.training and bool(loaded.quantizer.initialized)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.encode(x), loaded.encode(x))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizationError, match="not found"):
        load_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizationError, match="no model.safetensors"):
        load_pretrained(tmp_path / "empty")
    save_pretrained(VQVAE(tiny_vqvae_config()), tmp_path / "a")
    tiny_vqvae_config(codebook_size=32).save(tmp_path / "a" / "config.json")
    with pytest.raises(TokenizationError, match="do not match its config.json"):
        load_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenizationError, match="corrupt"):
        load_pretrained(tmp_path / "a")
