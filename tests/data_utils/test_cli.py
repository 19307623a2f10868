"""The data subcommands: synth, preprocess and data-info through argparse."""
from __future__ import annotations

import argparse
import json
import os

import pytest

from data_utils import cli
from data_utils.errors import DataError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cogview")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_synth_command(tmp_path, capsys):
    args = _parse(["synth", "--out", str(tmp_path), "--num", "40", "--image-size", "32", "--seed", "2", "--lang", "zh"])
    assert args.func(args) == 0
    assert "held-out" in capsys.readouterr().out
    meta = json.loads((tmp_path / "splits.json").read_text(encoding="utf-8"))
    assert meta["num"] == 40 and meta["lang"] == "zh" and len(meta["heldout"]) == 10
    assert len(os.listdir(tmp_path / "images")) == 40


def test_preprocess_and_info_commands(tokenizers, synth_dir, tmp_path, capsys):
    out = tmp_path / "shards"
    args = _parse(["preprocess", os.path.join(synth_dir, "captions.jsonl"), "--text-tokenizer", tokenizers[0],
                   "--image-tokenizer", tokenizers[1], "--out", str(out), "--seq-len", "24",
                   "--samples-per-shard", "50", "--prefix", "shapes"])
    assert args.func(args) == 0
    assert "samples written" in capsys.readouterr().out
    assert sorted(os.listdir(out))[:2] == ["dataset.json", "shapes-000000.tar"]
    info = _parse(["data-info", str(out), "--verify"])
    assert info.func(info) == 0
    assert "all shards verified" in capsys.readouterr().out
    with open(out / "shapes-000001.tar", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(DataError, match="1 shard"):
        info.func(info)
    assert "BAD shapes-000001.tar" in capsys.readouterr().out


def test_user_error_exits_2_through_cogview_main(tmp_path, capsys):
    from megatron_cogview.cli import main

    assert main(["synth", "--out", str(tmp_path), "--num", "0"]) == 2
    err = capsys.readouterr().err
    assert "--num 0 must be positive" in err and len(err.strip().splitlines()) == 1
