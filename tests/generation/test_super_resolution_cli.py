"""`cogview generate super-resolution` and `text2image --super-resolution` on tiny random checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from megatron_cogview.cli import main
from megatron_cogview.config import ModelConfig
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from tests.checkpoint.helpers import save_tp1

CAPTIONS = ["a red circle at the top left", "a blue square at the bottom right"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tokenization.image import ImageTokenizer
    from tokenization.text import TextTokenizer, train_text_tokenizer
    from tokenization.unified import UnifiedTokenizer
    from tokenization.vqvae import VQVAEConfig
    from tokenization.vqvae.model import VQVAE
    from tokenization.vqvae.serialization import save_pretrained

    tmp = tmp_path_factory.mktemp("sr")
    corpus = tmp / "captions.txt"
    corpus.write_text("\n".join(CAPTIONS * 20) + "\n", encoding="utf-8")
    sp = train_text_tokenizer([corpus], tmp / "sp", 40, character_coverage=1.0)
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(image_size=32, hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4,
                           codebook_size=64, code_dim=8)).eval()
    save_pretrained(vq, tmp / "vq")
    image = ImageTokenizer.from_pretrained(tmp / "vq")
    layout = UnifiedTokenizer.for_tokenizers(TextTokenizer(sp), image).layout
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=layout.vocab_size,
                      max_position_embeddings=90, hidden_dropout=0.0, attention_dropout=0.0)
    rec = {"text": str(sp), "image": str(tmp / "vq"), "layout": layout.to_dict(), "image_size": 32}
    out = {}
    for name, task, size in (("t2i", "text2image", 32), ("sr", "superres", 32), ("sr64", "superres", 64),
                             ("sr128", "superres", 128), ("sr36", "superres", 36), ("sr64small", "superres", 64)):
        positions = {"sr64": 280, "sr128": 1100}.get(name, cfg.max_position_embeddings)  # 16x16 codes need 258
        model = CogViewModel(ModelConfig.from_dict({**cfg.to_dict(), "max_position_embeddings": positions}),
                             ParallelState.single())
        save_tp1(tmp / name, model, {**rec, "task": task, "image_size": size})
        out[name] = tmp / name
    for px in (32, 40, 16):
        Image.new("RGB", (px, px), (200, 30, 30)).save(tmp / f"img{px}.png")
        out[f"img{px}"] = tmp / f"img{px}.png"
    return out


def test_magnify_and_single_pass_images(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    args = ["generate", "super-resolution", "--load", str(ckpts["sr"]), "--prompt", CAPTIONS[0], "--top-k", "5",
            "--out", str(out)]
    assert main(args + [str(ckpts["img32"]), str(ckpts["img40"])]) == 0
    captured = capsys.readouterr()
    assert "img40.png is 40x40 px; resized" in captured.err and "img32.png is" not in captured.err
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [x["size"] for x in lines] == [[64, 64], [64, 64]] and lines[0]["mode"] == "magnify"
    first = (out / "img32.x2.png").read_bytes()
    assert Image.open(out / "img32.x2.png").size == (64, 64)
    assert main(args + [str(ckpts["img32"])]) == 0  # same seed, same image
    assert (out / "img32.x2.png").read_bytes() == first
    assert main(args + ["--mode", "single", "--num-samples", "2", str(ckpts["img16"])]) == 0
    assert Image.open(out / "img16.x2.001.png").size == (32, 32)
    assert len((out / "superres.jsonl").read_text().splitlines()) == 5


def test_text2image_chain_magnifies_only_kept_samples(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "t"
    assert main(["generate", "text2image", "--load", str(ckpts["t2i"]), "--prompt", CAPTIONS[1], "--num-samples",
                 "3", "--caption-model", str(ckpts["t2i"]), "--keep", "1", "--super-resolution", str(ckpts["sr"]),
                 "--out", str(out), "--top-k", "5"]) == 0
    recs = [json.loads(x) for x in (out / "superres.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 1 and len(samples[0]["codes"]) == 64  # post-selection ran first: one kept sample
    assert len(recs) == 1 and recs[0]["source"] == samples[0]["file"] and recs[0]["mode"] == "magnify"
    assert Image.open(out / recs[0]["file"]).size == (64, 64)
    # a 16x16-code SR model takes the 8x8 samples in one pass
    assert main(["generate", "text2image", "--load", str(ckpts["t2i"]), "--prompt", CAPTIONS[0],
                 "--super-resolution", str(ckpts["sr64"]), "--out", str(tmp_path / "s")]) == 0
    rec = json.loads((tmp_path / "s" / "superres.jsonl").read_text())
    assert rec["mode"] == "single" and rec["size"] == [64, 64]


def test_bad_inputs_fail_in_one_line(ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sr = ["generate", "super-resolution", "--out", str(tmp_path), str(ckpts["img32"])]
    cases = [
        (sr + ["--load", str(ckpts["t2i"])], "is not a super-resolution model"),
        (sr + ["--load", str(ckpts["sr36"])], "cannot split into low/high grids"),
        (sr + ["--load", str(tmp_path / "missing")], "does not exist"),
        (["generate", "super-resolution", "--load", str(ckpts["sr"]), str(tmp_path / "nope.png")], "cannot read image"),
        (["generate", "text2image", "--load", str(ckpts["t2i"]), "--prompt", "x", "--super-resolution",
          str(ckpts["sr128"]), "--out", str(tmp_path / "x")], "samples are 8x8 codes but the SR model takes 32x32"),
        (["generate", "text2image", "--load", str(ckpts["t2i"]), "--prompt", "x", "--super-resolution",
          str(ckpts["t2i"]), "--out", str(tmp_path / "y")], "is not a super-resolution model"),
        (["generate", "text2image", "--load", str(ckpts["t2i"]), "--prompt", "x", "--super-resolution",
          str(ckpts["sr64small"]), "--out", str(tmp_path / "z")], "high-res grid needs 258 positions"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / d).exists() for d in "xyz")  # refused before any sampling
