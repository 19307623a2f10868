"""Fixtures for data_utils tests: tiny token datasets and tiny tokenizers, all made in tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from data_utils.synth import write_synth
from data_utils.writer import TokenRecord, write_token_dataset
from tokenization.layout import TokenLayout

SEQ_LEN = 12
LAYOUT = TokenLayout(num_image_tokens=64, num_text_tokens=40)


def make_record(i: int, layout: TokenLayout = LAYOUT, seq_len: int = SEQ_LEN) -> TokenRecord:
    """A record whose content identifies i: [ROI1] 2 text ids [BASE] [BOI1] codes [EOI1] [PAD]..."""
    text = layout.text_id(np.array([i % 40, (i // 40) % 40]))
    codes = layout.image_id(np.arange(4) + i % 60)
    cmd = layout.command
    seq = np.concatenate([[cmd("ROI1")], text, [cmd("BASE"), cmd("BOI1")], codes, [cmd("EOI1")]])
    seq = np.concatenate([seq, np.full(seq_len - len(seq), layout.pad_id)]).astype(np.int64)
    return TokenRecord(f"s{i:05d}", seq, np.arange(seq_len), f"caption {i}", {"i": i})


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny convolutions run far faster on one thread on a busy 2-core machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def token_dataset(tmp_path: Path) -> Callable[..., str]:
    """Factory: write `n` records in shards of `per_shard` under tmp_path/name and return the folder."""

    def make(n: int = 120, per_shard: int = 10, name: str = "ds", text_fp: str = "text-a", start: int = 0) -> str:
        out = str(tmp_path / name)
        write_token_dataset(out, (make_record(i) for i in range(start, start + n)), layout=LAYOUT, seq_len=SEQ_LEN,
                            samples_per_shard=per_shard, text_tokenizer_fingerprint=text_fp,
                            image_tokenizer_fingerprint="image-a")
        return out

    return make


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic shapes dataset (seed 0, 32 px)."""
    out = str(tmp_path_factory.mktemp("synth"))
    write_synth(out, 160, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory: pytest.TempPathFactory, synth_dir: str) -> tuple[str, str]:
    """(SentencePiece .model path, VQ-VAE folder) of tiny untrained-but-deterministic tokenizers."""
    from tokenization.text import train_text_tokenizer
    from tokenization.vqvae.config import VQVAEConfig
    from tokenization.vqvae.model import VQVAE
    from tokenization.vqvae.serialization import save_pretrained

    root = tmp_path_factory.mktemp("tok")
    model = train_text_tokenizer([os.path.join(synth_dir, "captions.jsonl")], root / "sp", 40, caption_column="caption")
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=32, hidden_channels=16, num_res_blocks=0, res_channels=8, downsample=8,
                         codebook_size=64, code_dim=8)
    save_pretrained(VQVAE(config), root / "vq")
    return str(model), str(root / "vq")
