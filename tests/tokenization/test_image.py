"""ImageTokenizer on a tiny trained VQ-VAE: quality, codebook usage, encode/decode shapes, inputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tokenization.shapes import shape_images
from tokenization.errors import TokenizationError
from tokenization.image import ImageTokenizer
from tokenization.imageproc import pil_to_tensor


def test_trained_tokenizer_reconstructs_and_uses_codebook(trained_vqvae: Path) -> None:
    """400 steps on 256 shape images: held-out PSNR >= 18 dB (untrained ~10 dB), >= 75% of 64 codes used."""
    tok = ImageTokenizer.from_pretrained(trained_vqvae)
    held_out = shape_images(64, seed=123)
    codes = tok.encode(held_out)
    recon = tok.decode_to_tensor(codes)
    target = torch.stack([pil_to_tensor(im) for im in held_out])
    psnr = 10 * torch.log10(1.0 / (recon - target).pow(2).mean())
    assert psnr >= 18.0, f"PSNR {psnr:.2f} dB"
    assert codes.unique().numel() >= 0.75 * tok.num_codes
    log = (trained_vqvae / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"psnr"' in log[-1] and '"perplexity"' in log[-1] and '"codes_used"' in log[-1]


def test_encode_decode_round_trip_shapes(trained_vqvae: Path) -> None:
    tok = ImageTokenizer.from_pretrained(trained_vqvae, batch_size=3)
    assert (tok.num_codes, tok.grid_size, tok.image_size) == (64, 8, 32)
    images = shape_images(5, seed=7)
    codes = tok.encode(images)
    assert codes.shape == (5, 8, 8) and codes.dtype == torch.int64 and codes.device.type == "cpu"
    decoded = tok.decode(codes)
    assert len(decoded) == 5 and all(
        isinstance(im, Image.Image) and im.size == (32, 32) and im.mode == "RGB" for im in decoded
    )
    again = tok.encode(decoded)  # in batches of 3: the same codes as one batch of 5, no gradients kept
    assert torch.equal(again, ImageTokenizer.from_pretrained(trained_vqvae, batch_size=64).encode(decoded))
    assert not again.requires_grad
    assert (again == codes).float().mean() > 0.8  # decode -> encode mostly returns the same codes
    # one image, numpy codes, flat codes
    assert tok.encode(images[0]).shape == (1, 8, 8)
    assert len(tok.decode(codes[0].numpy())) == 1
    flat = tok.decode_to_tensor(codes.view(5, 64))
    torch.testing.assert_close(flat, tok.decode_to_tensor(codes))


def test_tensor_and_pil_inputs_agree(trained_vqvae: Path) -> None:
    tok = ImageTokenizer.from_pretrained(trained_vqvae)
    images = shape_images(4, seed=3)
    batch = torch.stack([pil_to_tensor(im) for im in images])
    assert torch.equal(tok.encode(images), tok.encode(batch))
    assert torch.equal(tok.encode(batch[0]), tok.encode(images[:1]))


def test_resize_centre_crop_and_modes(trained_vqvae: Path) -> None:
    tok = ImageTokenizer.from_pretrained(trained_vqvae)
    square = shape_images(1, seed=11)[0]
    wide = Image.new("RGB", (96, 32), (255, 255, 255))
    wide.paste(square, (32, 0))  # the square sits in the centre of a wide image
    assert torch.equal(tok.encode(wide), tok.encode(square))
    big = square.resize((64, 64), Image.Resampling.NEAREST)
    assert (tok.encode(big) == tok.encode(square)).float().mean() > 0.7
    assert tok.encode(square.convert("RGBA")).shape == (1, 8, 8)
    assert tok.encode(square.convert("L")).shape == (1, 8, 8)
    assert tok.encode(big, image_size=64).shape == (1, 16, 16)  # fully convolutional: larger grids


def test_fingerprint(trained_vqvae: Path) -> None:
    a = ImageTokenizer.from_pretrained(trained_vqvae)
    b = ImageTokenizer.from_pretrained(trained_vqvae)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    with torch.no_grad():
        b.model.quantizer.codebook[0] += 1
    b._fingerprint = None
    assert a.fingerprint() != b.fingerprint()


def test_user_errors(trained_vqvae: Path, tmp_path: Path) -> None:
    tok = ImageTokenizer.from_pretrained(trained_vqvae)
    with pytest.raises(TokenizationError, match="0..63"):
        tok.decode(np.full((8, 8), 64))
    with pytest.raises(TokenizationError, match="integers"):
        tok.decode(torch.zeros(8, 8))
    with pytest.raises(TokenizationError, match="float"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TokenizationError, match="PIL"):
        tok.encode(["not an image"])  # type: ignore[list-item]
    with pytest.raises(TokenizationError, match="multiple"):
        tok.encode(shape_images(1), image_size=30)
    with pytest.raises(TokenizationError, match="not found"):
        ImageTokenizer.from_pretrained(tmp_path / "missing")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu(trained_vqvae: Path) -> None:
    cpu = ImageTokenizer.from_pretrained(trained_vqvae)
    gpu = ImageTokenizer.from_pretrained(trained_vqvae, device="cuda")
    images = shape_images(8, seed=5)
    assert (gpu.encode(images) == cpu.encode(images)).float().mean() > 0.95
    assert gpu.decode_to_tensor(cpu.encode(images)).device.type == "cpu"
