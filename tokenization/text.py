"""SentencePiece text tokenizer (CogView style: `<n>` for newline) and its trainer."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from tokenization.errors import TokenizationError

NEWLINE_PIECE = "<n>"
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_TABLE_SUFFIXES = {".tsv": "\t", ".csv": ","}


def _to_model_text(text: str) -> str:
    """Map newlines to the `<n>` piece, as CogView's tokenizer did."""
    return text.replace("\r\n", "\n").replace("\n", NEWLINE_PIECE)


class TextTokenizer:
    """A SentencePiece model: text <-> raw piece ids 0..vocab_size-1."""

    def __init__(self, model_file: str | os.PathLike[str]) -> None:
        path = Path(model_file)
        if not path.is_file():
            raise TokenizationError(
                f"text tokenizer model {str(path)!r} not found; pass a SentencePiece .model file "
                "(train one with `cogview tokenizer train-text`)"
            )
        self.model_file = path
        self._bytes = path.read_bytes()
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._bytes)
        except (RuntimeError, OSError) as e:
            raise TokenizationError(
                f"{str(path)!r} is not a valid SentencePiece model ({e}); pass a .model file"
            ) from e
        self._fingerprint = hashlib.sha256(self._bytes).hexdigest()

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the model."""
        return int(self._sp.GetPieceSize())

    @property
    def unk_id(self) -> int:
        """Id of the unknown piece."""
        return int(self._sp.unk_id())

    def fingerprint(self) -> str:
        """sha256 of the model file bytes."""
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        """Raw piece ids of one string (newlines become `<n>`)."""
        if not isinstance(text, str):
            raise TokenizationError(
                f"TextTokenizer.encode takes a str, got {type(text).__name__}; use encode_batch for lists"
            )
        return list(self._sp.EncodeAsIds(_to_model_text(text)))

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Raw piece ids of many strings (multi-threaded inside SentencePiece)."""
        return [list(ids) for ids in self._sp.Encode([_to_model_text(t) for t in texts], num_threads=num_threads)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of raw piece ids (`<n>` becomes a newline)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizationError(
                f"text ids {bad[:5]} are outside 0..{self.vocab_size - 1}; pass raw SentencePiece ids "
                "(subtract the layout's text_offset from global ids)"
            )
        return self._sp.DecodeIds(ids).replace(NEWLINE_PIECE, "\n")

    def id_to_piece(self, piece_id: int) -> str:
        """The piece string of an id."""
        return str(self._sp.IdToPiece(int(piece_id)))

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece string (unk_id if absent)."""
        return int(self._sp.PieceToId(piece))

    def __repr__(self) -> str:
        return f"TextTokenizer({str(self.model_file)!r}, vocab_size={self.vocab_size})"


def _iter_table_column(path: Path, delimiter: str, column: str) -> Iterator[str]:
    """Captions from a TSV/CSV column given by header name or 0-based index."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        if column in header:
            index, rows = header.index(column), reader
        elif column.isdigit():
            index, rows = int(column), _chain_row(header, reader)
        else:
            raise TokenizationError(
                f"caption column {column!r} is not in the header of {str(path)!r} ({header[:8]}); "
                "pass a header name or a 0-based column index"
            )
        for row in rows:
            if index < len(row) and row[index].strip():
                yield row[index]


def _chain_row(first: list[str], rest: Iterable[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _iter_jsonl_column(path: Path, column: str) -> Iterator[str]:
    """Captions from a JSON-lines file (key `column`, dots for nested keys)."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise TokenizationError(f"{path}:{line_no} is not valid JSON ({e.msg}); fix or drop that line") from e
            for key in column.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str) and value.strip():
                yield value


def iter_training_text(inputs: Sequence[str | os.PathLike[str]], caption_column: str | None = None) -> Iterator[str]:
    """Sentences for tokenizer training: lines of text files, or a caption column of JSONL/TSV/CSV files."""
    for raw in inputs:
        path = Path(raw)
        if not path.is_file():
            raise TokenizationError(f"training input {str(path)!r} not found; pass existing text/JSONL/TSV files")
        suffix = path.suffix.lower()
        if suffix in _JSON_SUFFIXES or suffix in _TABLE_SUFFIXES:
            if caption_column is None:
                raise TokenizationError(
                    f"{str(path)!r} is a table; pass --caption-column NAME to say which field holds the text"
                )
            if suffix in _JSON_SUFFIXES:
                yield from (_to_model_text(t) for t in _iter_jsonl_column(path, caption_column))
            else:
                yield from (
                    _to_model_text(t) for t in _iter_table_column(path, _TABLE_SUFFIXES[suffix], caption_column)
                )
        else:
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.rstrip("\r\n")
                    if line.strip():
                        yield line


def train_text_tokenizer(
    inputs: Sequence[str | os.PathLike[str]],
    model_prefix: str | os.PathLike[str],
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    caption_column: str | None = None,
    *,
    normalization: str = "nmt_nfkc",
    max_sentences: int = 0,
    num_threads: int | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> Path:
    """Train a SentencePiece model (CogView settings, `<n>` as a piece); returns the .model path."""
    if model_type not in ("bpe", "unigram", "char", "word"):
        raise TokenizationError(f"model_type {model_type!r} is not supported; use bpe, unigram, char or word")
    if not isinstance(vocab_size, int) or vocab_size < 8:
        raise TokenizationError(f"vocab_size must be an integer >= 8, got {vocab_size!r}")
    if not 0.0 < character_coverage <= 1.0:
        raise TokenizationError(f"character_coverage must be in (0, 1], got {character_coverage}")
    if not inputs:
        raise TokenizationError("no training inputs given; pass one or more text/JSONL/TSV files")
    sentences = list(iter_training_text(inputs, caption_column))
    if not sentences:
        raise TokenizationError("the training inputs hold no text; check the files and --caption-column")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    options = dict(
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        normalization_rule_name=normalization,
        user_defined_symbols=[NEWLINE_PIECE],
        hard_vocab_limit=False,  # tiny corpora cannot fill the vocabulary
        max_sentence_length=1 << 16,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=num_threads or min(16, os.cpu_count() or 1),
        minloglevel=0 if verbose else 2,
    )
    spm.set_random_generator_seed(seed)  # only used by shuffling/sampling of sentences
    try:
        spm.SentencePieceTrainer.Train(sentence_iterator=iter(sentences), **options)
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise TokenizationError(
            f"SentencePiece training failed: {message}; try a larger --vocab-size or more text"
        ) from e
    model = Path(f"{prefix}.model")
    if not model.is_file():
        raise TokenizationError(f"SentencePiece wrote no model at {model}; check that the prefix directory is writable")
    if verbose:
        print(f"trained {model} ({TextTokenizer(model).vocab_size} pieces)", file=sys.stderr)
    return model
