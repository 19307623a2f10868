"""`cogview preprocess --from-cogview-bin`: CogView's CompactBinaryDataset rows -> our shards, row for row."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from data_utils import cli, cogview_bin
from data_utils.cogview_bin import BinConfig, convert_cogview_bin
from data_utils.errors import DataError
from data_utils.shards import Manifest, decode_sample
from data_utils.wds import iter_tar
from tokenization.layout import TokenLayout
from tokenization.text import TextTokenizer

TEXT_LEN, GRID, SEQ_LEN = 64, 4, 48  # the release's 64 text ids; a 4x4 code grid (the fixture VQ-VAE)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cogview")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def write_bin(path: Path, texts: list[list[int]], codes: np.ndarray) -> None:
    """The original's format: int32 rows of TEXT_LEN text ids (-1 padded) + GRID*GRID image codes."""
    rows = np.full((len(texts), TEXT_LEN + GRID * GRID), -1, dtype=np.int32)
    for i, t in enumerate(texts):
        rows[i, : len(t)] = t
    rows[:, TEXT_LEN:] = codes
    rows.tofile(path)


def expected_sequence(layout: TokenLayout, unified_text: list[int], codes: np.ndarray) -> np.ndarray:
    """The original's TextCodeTemplate: [ROI1] text, then wrap_code: [BASE] [BOI1] codes [EOI1]; [PAD] to seq_len."""
    c = layout.command
    seq = [c("ROI1"), *unified_text, c("BASE"), c("BOI1"), *codes.tolist(), c("EOI1")]
    return np.array(seq + [layout.pad_id] * (SEQ_LEN - len(seq)), dtype=np.int64)


@pytest.fixture
def release_bin(tokenizers: tuple[str, str], tmp_path: Path) -> tuple[Path, list[list[int]], np.ndarray, TokenLayout]:
    text = TextTokenizer(tokenizers[0])
    layout = TokenLayout(num_image_tokens=64, num_text_tokens=text.vocab_size)
    captions = ["a red circle", "a blue square at the top", "", "a green triangle", "a small red square", "circle"]
    texts = [[layout.text_id(i) for i in text.encode(cap)] for cap in captions]
    codes = np.random.default_rng(0).integers(0, 64, (len(captions), GRID * GRID))
    path = tmp_path / "train.bin"
    write_bin(path, texts, codes)
    return path, texts, codes, layout


def _samples(out: Path) -> list:
    m = Manifest.load(str(out))
    return [decode_sample(raw, m.seq_len) for p in m.shard_paths() for raw in iter_tar(p)]


def test_rows_become_the_original_template(release_bin, tokenizers, tmp_path: Path, capsys) -> None:
    path, texts, codes, layout = release_bin
    out = tmp_path / "shards"
    args = _parse(["preprocess", "--from-cogview-bin", str(path), "--text-tokenizer", tokenizers[0],
                   "--image-tokenizer", tokenizers[1], "--out", str(out), "--seq-len", str(SEQ_LEN),
                   "--samples-per-shard", "2"])
    assert args.func(args) == 0
    assert "5 of 6 rows written (1 without text" in capsys.readouterr().out
    samples = _samples(out)
    kept = [i for i, t in enumerate(texts) if t]
    assert len(samples) == 5
    text = TextTokenizer(tokenizers[0])
    for sample, i in zip(samples, kept):
        assert np.array_equal(sample.tokens, expected_sequence(layout, texts[i], codes[i]))
        assert np.array_equal(sample.position_ids, np.arange(SEQ_LEN))
        assert sample.caption == text.decode([t - layout.text_offset for t in texts[i]])
        assert sample.meta["source"] == f"train:{i}"
    m = Manifest.load(str(out))
    assert m.task == "text2image" and m.layout == layout.to_dict()
    info = _parse(["data-info", str(out), "--verify"])
    assert info.func(info) == 0


def test_interrupted_run_continues_to_the_same_shards(release_bin, tokenizers, tmp_path: Path) -> None:
    path = release_bin[0]
    config = lambda out: BinConfig((str(path),), tokenizers[0], tokenizers[1], str(out), seq_len=SEQ_LEN,  # noqa: E731
                                   samples_per_shard=2)
    convert_cogview_bin(config(tmp_path / "straight"), log=lambda s: None)
    real = cogview_bin.write_shard
    calls = []

    def failing(*a, **kw):  # the third shard write dies (e.g. the job is killed)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    with mock.patch.object(cogview_bin, "write_shard", failing), pytest.raises(KeyboardInterrupt):
        convert_cogview_bin(config(tmp_path / "resumed"), log=lambda s: None)
    assert not (tmp_path / "resumed" / "dataset.json").exists()
    with mock.patch.object(cogview_bin, "write_shard", wraps=real) as again:
        convert_cogview_bin(config(tmp_path / "resumed"), log=lambda s: None)
    assert again.call_count == 1  # only the missing shard was written
    a, b = _samples(tmp_path / "straight"), _samples(tmp_path / "resumed")
    assert [s.key for s in a] == [s.key for s in b]
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b))


def test_bad_files_are_one_clear_error(release_bin, tokenizers, tmp_path: Path) -> None:
    path, texts, codes, layout = release_bin
    base = ["preprocess", "--text-tokenizer", tokenizers[0], "--image-tokenizer", tokenizers[1], "--seq-len", str(SEQ_LEN)]
    (tmp_path / "short.bin").write_bytes(path.read_bytes()[:-4])
    args = _parse([*base, "--from-cogview-bin", str(tmp_path / "short.bin"), "--out", str(tmp_path / "a")])
    with pytest.raises(DataError, match="not a multiple of 320"):
        args.func(args)
    raw = [[t - layout.text_offset for t in row] for row in texts]  # raw SentencePiece ids, not unified
    raw[0] = [0, 1]  # ids below the text range
    write_bin(tmp_path / "raw.bin", raw, codes)
    args = _parse([*base, "--from-cogview-bin", str(tmp_path / "raw.bin"), "--out", str(tmp_path / "b")])
    with pytest.raises(DataError, match="pass --text-ids raw"):
        args.func(args)
    args = _parse([*base, "--from-cogview-bin", str(tmp_path / "raw.bin"), "--out", str(tmp_path / "c"), "--text-ids", "raw"])
    assert args.func(args) == 0
    assert np.array_equal(_samples(tmp_path / "c")[1].tokens, _samples_of(tmp_path, path, base)[1].tokens)
    args = _parse([*base, "in.jsonl", "--from-cogview-bin", str(path), "--out", str(tmp_path / "d")])
    with pytest.raises(DataError, match="not both"):
        args.func(args)
    args = _parse([*base, "--from-cogview-bin", str(path), "--out", str(tmp_path / "e"), "--task", "superres"])
    with pytest.raises(DataError, match="cannot be built from a CogView binary file"):
        args.func(args)
    assert not any(os.path.exists(tmp_path / n / "dataset.json") for n in "abde")


def _samples_of(tmp_path: Path, path: Path, base: list[str]) -> list:
    args = _parse([*base, "--from-cogview-bin", str(path), "--out", str(tmp_path / "unified")])
    assert args.func(args) == 0
    return _samples(tmp_path / "unified")
