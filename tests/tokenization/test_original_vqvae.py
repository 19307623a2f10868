"""Importing the released CogView VQ-VAE: encode/decode equal a reference module written from its description."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from megatron_cogview.cli import main as cli
from tests.tokenization.conftest import tiny_vqvae_config
from tokenization.image import ImageTokenizer
from tokenization.vqvae import VQVAE, VQVAEConfig

MEAN, STD = (0.79093, 0.76271, 0.75340), (0.30379, 0.32279, 0.32800)


class _Blocks(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*layers)


class ReferenceVQVAE(nn.Module):
    """The released architecture as described: encoder Conv4x4/s2 3->ch, ReLU, Conv4x4/s2, ReLU, Conv4x4/s2, ReLU,
    Conv1x1 ch->d; EMA codebook embed [d, K]; decoder ConvT4x4/s2 d->ch, ReLU, ConvT/s2, ReLU, ConvT/s2, ReLU,
    Conv1x1 -> 3. Codes are the argmin of the full squared distance."""

    def __init__(self, ch: int, d: int, k: int) -> None:
        super().__init__()
        conv = lambda i, o: nn.Conv2d(i, o, 4, stride=2, padding=1)  # noqa: E731
        convt = lambda i, o: nn.ConvTranspose2d(i, o, 4, stride=2, padding=1)  # noqa: E731
        self.enc_b = _Blocks([conv(3, ch), nn.ReLU(), conv(ch, ch), nn.ReLU(), conv(ch, ch), nn.ReLU(), nn.Conv2d(ch, d, 1)])
        self.quantize_t = nn.Module()
        embed = torch.randn(d, k)
        self.quantize_t.register_buffer("embed", embed)
        self.quantize_t.register_buffer("cluster_size", torch.rand(k))
        self.quantize_t.register_buffer("embed_avg", embed * 3.0)
        self.dec = _Blocks([convt(d, ch), nn.ReLU(), convt(ch, ch), nn.ReLU(), convt(ch, ch), nn.ReLU(), nn.Conv2d(ch, 3, 1)])

    def img2code(self, img: torch.Tensor) -> torch.Tensor:
        z = self.enc_b.blocks(img).permute(0, 2, 3, 1)  # [b, h, w, d]
        flat = z.reshape(-1, z.shape[-1])
        embed = self.quantize_t.embed
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed + embed.pow(2).sum(0, keepdim=True)
        return (-dist).max(1)[1].view(img.shape[0], -1)

    def code2img(self, code: torch.Tensor) -> torch.Tensor:
        s = int(math.sqrt(code.shape[1]))
        quant = nn.functional.embedding(code.view(-1, s, s), self.quantize_t.embed.t()).permute(0, 3, 1, 2)
        out = self.dec.blocks(quant)
        return out * torch.tensor(STD).view(1, -1, 1, 1) + torch.tensor(MEAN).view(1, -1, 1, 1)


class _Marker:
    """Unpickling this writes a marker file (stands in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReferenceVQVAE, Path]:
    torch.manual_seed(0)
    ref = ReferenceVQVAE(ch=16, d=8, k=32).eval()
    with torch.no_grad():  # a codebook on the encoder's outputs (as training leaves it), so many codes are used
        flat = ref.enc_b.blocks(torch.randn(8, 3, 32, 32)).permute(0, 2, 3, 1).reshape(-1, 8)
        ref.quantize_t.embed.copy_(flat[torch.randperm(flat.shape[0])[:32]].t())
    path = tmp_path_factory.mktemp("release") / "vqvae_hard_biggerset_011.pt"
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, path)  # DDP-style prefix, as released
    return ref, path


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


def _import(args: list[str]) -> int:
    return cli(["tokenizer", "import-vqvae", *args])


def test_encode_decode_equal_the_reference(released: tuple[ReferenceVQVAE, Path], tmp_path: Path) -> None:
    ref, path = released
    assert _import([str(path), "--out", str(tmp_path / "vq"), "--image-size", "32"]) == 0
    tok = ImageTokenizer.from_pretrained(tmp_path / "vq")
    c = tok.config
    assert (c.architecture, c.downsample, c.hidden_channels, c.code_dim, c.codebook_size, c.num_res_blocks) == (
        "cogview-original", 8, 16, 8, 32, 0)
    assert c.normalize_mean == MEAN and c.normalize_std == STD and c.grid_size == 4
    images = _images(6, seed=1)
    pixels = tok.preprocess(images)  # resized, centre-cropped, normalised with the release's mean/std
    with torch.no_grad():
        expected = ref.img2code(pixels)
        assert torch.equal(tok.encode(images).view(6, -1), expected)
        codes = torch.randint(0, 32, (5, 16))
        assert torch.allclose(tok.decode_to_tensor(codes), ref.code2img(codes).clamp(0, 1), atol=1e-5)
    assert len(set(expected.view(-1).tolist())) > 4  # the test exercises many codes, not one


def test_default_config_json_is_unchanged() -> None:
    # configs written before the architecture field existed must keep their fingerprints
    assert "architecture" not in VQVAEConfig().to_dict()
    original = VQVAEConfig(num_res_blocks=0, architecture="cogview-original")
    assert original.to_dict()["architecture"] == "cogview-original"
    assert VQVAEConfig.from_dict(original.to_dict()) == original


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_are_one_line_exit_2(released: tuple[ReferenceVQVAE, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ref, path = released
    ours = tmp_path / "ours.pt"
    torch.save(VQVAE(tiny_vqvae_config()).state_dict(), ours)  # a VQ-VAE of our own architecture
    assert _import([str(ours), "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, "is not a CogView-original VQ-VAE")
    state = ref.state_dict()
    del state["quantize_t.embed_avg"]
    torch.save(state, tmp_path / "missing.pt")
    assert _import([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "missing quantize_t.embed_avg")
    state = dict(ref.state_dict(), **{"enc_b.blocks.8.weight": torch.zeros(8, 8, 1, 1)})
    torch.save(state, tmp_path / "variant.pt")
    assert _import([str(tmp_path / "variant.pt"), "--out", str(tmp_path / "c")]) == 2
    _one_line_error(capsys, "not supported")
    assert _import([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "d")]) == 2
    _one_line_error(capsys, "not found")
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert _import([str(path), "--out", str(tmp_path / "e")]) == 0
    assert _import([str(path), "--out", str(tmp_path / "e")]) == 2
    _one_line_error(capsys, "already holds a VQ-VAE")


def test_pickle_needs_trust_pickle(released: tuple[ReferenceVQVAE, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ref, _ = released
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": ref.state_dict(), "args": _Marker(str(marker))}, crafted)
    assert _import([str(crafted), "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, "weights_only=True", "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "a").exists()
    assert _import([str(crafted), "--out", str(tmp_path / "b"), "--trust-pickle"]) == 0
    assert marker.read_text() == "pwned"  # the full unpickler ran, as the user allowed
    assert ImageTokenizer.from_pretrained(tmp_path / "b").config.architecture == "cogview-original"


def test_original_architecture_trains_and_is_a_train_vqvae_choice() -> None:
    import argparse

    from tokenization.cli import _config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", "train-vqvae", "--data", "x", "--out", "y", "--architecture",
                              "cogview-original", "--image-size", "32", "--hidden-channels", "16", "--code-dim", "8",
                              "--codebook-size", "32"])
    config = _config_from_args(args)
    assert (config.architecture, config.num_res_blocks) == ("cogview-original", 0)
    torch.manual_seed(0)
    model = VQVAE(config)
    out = model(torch.randn(2, 3, 32, 32))
    out.loss.backward()
    assert out.reconstruction.shape == (2, 3, 32, 32) and out.codes.shape == (2, 4, 4)
    assert all(p.grad is not None for p in model.encoder.parameters())  # straight-through reaches the encoder
