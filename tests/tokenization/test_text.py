"""SentencePiece wrapper and trainer: round trips (Chinese and English), <n>, caption columns, errors."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from tokenization.cli import register
from tokenization.errors import TokenizationError
from tokenization.text import TextTokenizer, train_text_tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a red car parked on the street",
        "the lazy dog and the quick cat",
        "一只可爱的小猫坐在窗台上",
        "美丽的山水画,远处有高山",  # ASCII comma: NFKC-stable
        "a red car 一辆红色的汽车",
    ],
)
def test_round_trip(text_model: Path, text: str) -> None:
    tok = TextTokenizer(text_model)
    ids = tok.encode(text)
    assert ids and all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text)  # merges happened: fewer pieces than characters


def test_newline_is_one_piece(text_model: Path) -> None:
    tok = TextTokenizer(text_model)
    newline = tok.piece_to_id("<n>")
    assert newline != tok.unk_id and tok.id_to_piece(newline) == "<n>"
    ids = tok.encode("a red car\n一只小猫")
    assert ids.count(newline) == 1
    assert tok.decode(ids) == "a red car\n一只小猫"


def test_nfkc_normalisation_like_cogview(text_model: Path) -> None:
    tok = TextTokenizer(text_model)
    assert tok.decode(tok.encode("美丽的山水画，远处")) == "美丽的山水画,远处"  # full-width comma -> ASCII (nmt_nfkc)


def test_batch_encode_vocab_and_fingerprint(text_model: Path) -> None:
    tok = TextTokenizer(text_model)
    texts = ["a cartoon cat", "两只狗在公园里玩球", "x\ny"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.vocab_size <= 300 and tok.vocab_size > 100
    assert tok.fingerprint() == hashlib.sha256(text_model.read_bytes()).hexdigest()
    assert "TextTokenizer" in repr(tok)


def test_unknown_characters_do_not_crash(text_model: Path) -> None:
    tok = TextTokenizer(text_model)
    ids = tok.encode("zebra 鲸鱼 ☃")
    assert tok.unk_id in ids
    assert isinstance(tok.decode(ids), str)


def test_caption_columns(tmp_path: Path) -> None:
    rows = ["a blue bird on a branch", "一只蓝色的小鸟站在树枝上", "a green frog\nin a pond"] * 10
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps({"meta": {"caption": r}, "url": "x"}) for r in rows), encoding="utf-8")
    tsv = tmp_path / "captions.tsv"
    tsv.write_text(
        "id\tcaption\n" + "\n".join(f"{i}\t{r.replace(chr(10), ' ')}" for i, r in enumerate(rows)), encoding="utf-8"
    )
    model = train_text_tokenizer(
        [jsonl], tmp_path / "a" / "sp", 120, character_coverage=1.0, caption_column="meta.caption"
    )
    tok = TextTokenizer(model)
    assert tok.decode(tok.encode("a green frog\nin a pond")) == "a green frog\nin a pond"
    assert "url" not in [tok.id_to_piece(i).strip("▁") for i in range(tok.vocab_size)]
    for column in ("caption", "1"):
        tok2 = TextTokenizer(
            train_text_tokenizer([tsv], tmp_path / column / "sp", 120, character_coverage=1.0, caption_column=column)
        )
        assert tok2.decode(tok2.encode("一只蓝色的小鸟")) == "一只蓝色的小鸟"
        assert tok2.piece_to_id("▁id") == tok2.unk_id or "id" not in rows[0]  # header not trained on
    with pytest.raises(TokenizationError, match="--caption-column"):
        train_text_tokenizer([jsonl], tmp_path / "b" / "sp", 100)
    with pytest.raises(TokenizationError, match="not in the header"):
        train_text_tokenizer([tsv], tmp_path / "c" / "sp", 100, caption_column="text")


def test_unigram_and_tiny_vocab(corpus_file: Path, tmp_path: Path) -> None:
    model = train_text_tokenizer([corpus_file], tmp_path / "uni", 200, model_type="unigram", character_coverage=1.0)
    tok = TextTokenizer(model)
    assert tok.decode(tok.encode("a cartoon cat 一只小猫")) == "a cartoon cat 一只小猫"


def test_user_errors(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(TokenizationError, match="not found"):
        TextTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizationError, match="not a valid SentencePiece model"):
        TextTokenizer(bad)
    with pytest.raises(TokenizationError, match="not found"):
        train_text_tokenizer([tmp_path / "nope.txt"], tmp_path / "sp", 100)
    with pytest.raises(TokenizationError, match="model_type"):
        train_text_tokenizer([corpus_file], tmp_path / "sp", 100, model_type="wordpiece")
    with pytest.raises(TokenizationError, match="vocab_size"):
        train_text_tokenizer([corpus_file], tmp_path / "sp", 2)


def test_decode_rejects_out_of_range(text_model: Path) -> None:
    tok = TextTokenizer(text_model)
    with pytest.raises(TokenizationError, match="outside"):
        tok.decode([tok.vocab_size + 8192])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cogview")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_train_text(corpus_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "out" / "cli"
    args = _parser().parse_args(
        ["tokenizer", "train-text", str(corpus_file), "--model-prefix", str(prefix), "--vocab-size", "200",
         "--character-coverage", "1.0", "--model-type", "bpe"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert Path(f"{prefix}.model").is_file() and Path(f"{prefix}.vocab").is_file()
    assert "pieces" in capsys.readouterr().out
    tok = TextTokenizer(f"{prefix}.model")
    assert tok.decode(tok.encode("两只狗在公园里玩球")) == "两只狗在公园里玩球"
