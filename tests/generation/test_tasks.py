"""Entry-layer tasks with a tiny SentencePiece model, a random VQ-VAE and random CogView models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_cogview.config import ConfigError, ModelConfig
from megatron_cogview.generation import GenerationConfig, caption_loss
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from megatron_cogview.tasks import (
    PromptFileError,
    caption_images,
    generate_images,
    generate_images_from_file,
    parse_prompts,
    read_prompts,
    rerank_images,
    sample_seed,
)
from megatron_cogview.tasks.captioning import caption_template

CAPTIONS = ["a red circle at the top left", "a blue square at the bottom right", "a green triangle in the middle"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from tokenization.image import ImageTokenizer
    from tokenization.text import TextTokenizer, train_text_tokenizer
    from tokenization.unified import UnifiedTokenizer
    from tokenization.vqvae import VQVAEConfig
    from tokenization.vqvae.model import VQVAE

    tmp = tmp_path_factory.mktemp("tok")
    corpus = tmp / "captions.txt"
    corpus.write_text("\n".join(CAPTIONS * 20) + "\n", encoding="utf-8")
    text = TextTokenizer(train_text_tokenizer([corpus], tmp / "sp", 60, character_coverage=1.0))
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(image_size=32, hidden_channels=16, res_channels=8, num_res_blocks=1, downsample=4,
                           codebook_size=64, code_dim=8))
    return UnifiedTokenizer.for_tokenizers(text, ImageTokenizer(vq.eval()))


@pytest.fixture(scope="module")
def models(tokenizer):
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=tokenizer.layout.vocab_size,
                      max_position_embeddings=80, hidden_dropout=0.0, attention_dropout=0.0)
    gen = CogViewModel(cfg, ParallelState.single()).eval()
    cap = CogViewModel(ModelConfig.from_dict({**cfg.to_dict(), "seed": 99}), ParallelState.single()).eval()
    return gen, cap


def test_prompt_file_parsing(tmp_path: Path) -> None:
    raw = [b"a red circle", b"", b"cat1\ta blue square", b"bad/id\tx", b"e1\t   ", b"cat1\tagain", b"\xff\xfe", b"a\tb\tc"]
    parsed = parse_prompts(raw, "p.txt")
    assert [(p.id, p.text, p.line) for p in parsed.prompts] == [("0001", "a red circle", 1), ("cat1", "a blue square", 3)]
    assert [m.split(":")[1] for m in parsed.problems] == ["4", "5", "6", "7", "8"]
    assert "empty prompt" in parsed.problems[1] and "duplicate id 'cat1'" in parsed.problems[2]
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("x\t \n")
    with pytest.raises(PromptFileError, match="no usable prompt") as e:
        read_prompts(tmp_path / "empty.txt")
    assert isinstance(e.value, ConfigError)


def test_prompt_file_that_is_not_utf8_text_is_refused(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"a cat\n" + bytes(range(256)) * 4)  # byte 10 is a newline: the bad byte 0x80 sits on line 3
    with pytest.raises(PromptFileError, match=r"is not UTF-8 text \(invalid byte at line 3, offset 134\)"):
        read_prompts(noise)
    binary = tmp_path / "nul.bin"
    binary.write_bytes(b"a cat\x00\x01\x02\n")  # valid UTF-8, but binary
    with pytest.raises(PromptFileError, match="NUL bytes"):
        read_prompts(binary)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffun chat rouge\r\nsecond\n".encode("utf-8"))  # BOM and CRLF are fine
    assert [q.text for q in read_prompts(bom).prompts] == ["un chat rouge", "second"]


def test_text_to_image_writes_pngs_grid_and_jsonl(tokenizer, models, tmp_path: Path) -> None:
    gen, _ = models
    prompts = tmp_path / "prompts.txt"
    long = " ".join(CAPTIONS * 3)  # more text tokens than the 80 positions leave beside 64 codes
    prompts.write_text(f"red\t{CAPTIONS[0]}\nx\t \n{long}\n", encoding="utf-8")
    logs: list[str] = []
    config = GenerationConfig(top_k=20, seed=5, max_inference_batch_size=4)
    records = generate_images_from_file(gen, tokenizer, prompts, 3, config, tmp_path / "out", log=logs.append)
    out = tmp_path / "out"
    for pid in ("red", "0003"):
        assert sorted(p.name for p in (out / pid).iterdir()) == ["000.png", "001.png", "002.png", "grid.png"]
        assert Image.open(out / pid / "000.png").size == (32, 32)
        assert Image.open(out / pid / "grid.png").size == (64, 64)  # 2x2 tiles for 3 samples
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert lines[0]["error"].endswith("empty prompt (id 'x'); skipped")
    samples = [x for x in lines if "sample" in x]
    assert samples == records and len(samples) == 6
    assert samples[0]["settings"] == config.to_dict() and samples[0]["seed"] == sample_seed(5, "red", 0)
    assert samples[3]["text_truncated"] > 0 and any("were cut" in m for m in logs)
    # the same seed gives the same image alone or in another batch
    again = generate_images(gen, tokenizer, [CAPTIONS[0]], 2, config.replace(max_inference_batch_size=1),
                          tmp_path / "again", log=logs.append)
    assert [r["seed"] for r in again] == [sample_seed(5, "0001", j) for j in range(2)]
    batched = generate_images(gen, tokenizer, [CAPTIONS[0], CAPTIONS[1]], 2, config, tmp_path / "batched",
                            log=logs.append)  # 4 samples in one batch of 4
    assert [r["seed"] for r in batched[:2]] == [r["seed"] for r in again]
    for j in range(2):
        alone = np.asarray(Image.open(tmp_path / "again" / "0001" / f"00{j}.png"))
        in_batch = np.asarray(Image.open(tmp_path / "batched" / "0001" / f"00{j}.png"))
        assert alone.shape == (32, 32, 3) and np.array_equal(alone, in_batch), j
    other = np.asarray(Image.open(tmp_path / "batched" / "0002" / "001.png"))
    assert not np.array_equal(other, in_batch)  # another prompt and seed: another image


def test_post_selection_orders_samples_by_caption_loss(tokenizer, models, tmp_path: Path) -> None:
    gen, cap = models
    config = GenerationConfig(seed=1, max_inference_batch_size=8)
    records = generate_images(gen, tokenizer, [CAPTIONS[1]], 4, config, tmp_path, caption_model=cap, keep=2,
                            log=lambda m: None)
    assert [r["rank"] for r in records] == [0, 1]
    assert records[0]["caption_loss"] <= records[1]["caption_loss"]
    assert sorted(p.name for p in (tmp_path / "0001").iterdir()) == sorted([f"{r['sample']:03d}.png" for r in records] + ["grid.png"])
    codes = torch.randint(0, 64, (1, 3, 64), generator=torch.Generator().manual_seed(0))
    sel = rerank_images(cap, tokenizer, [CAPTIONS[2]], codes, 3, config)
    ids = tokenizer.encode_text(CAPTIONS[2])[: 80 - 3 - 64]
    ref = caption_loss(cap, codes[0], [ids] * 3, caption_template(tokenizer))
    torch.testing.assert_close(sel.scores[0], ref)
    assert sel.indices[0].tolist() == ref.argsort(stable=True).tolist()


def test_caption_images_returns_text(tokenizer, models) -> None:
    _, cap = models
    images = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    captions = caption_images(cap, tokenizer, images, GenerationConfig(seed=2), max_text_len=6, num_samples=2)
    assert len(captions) == 2 and all(len(c) == 2 and all(isinstance(s, str) for s in c) for c in captions)
