"""Package hygiene: import direction, light CLI import, parser wiring."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tokenization

PACKAGE = Path(tokenization.__file__).parent
FORBIDDEN = ("megatron_cogview", "data_utils", "finetune")
# the dependency-free leaves every package may import (user errors; flags generated from dataclasses)
SHARED_LEAVES = ("megatron_cogview.errors", "megatron_cogview.dataclass_flags")


def test_never_imports_core_or_data_utils() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN and n not in SHARED_LEAVES]
    assert not offenders


def test_tokenization_reads_no_tars() -> None:
    users = [
        p.name
        for p in PACKAGE.rglob("*.py")
        if "import webdataset" in p.read_text() or "import tarfile" in p.read_text()
    ]
    assert users == []  # tars are listed by data_utils/image_sources.py; the dataset only seeks to member offsets


def test_cli_import_is_light() -> None:
    code = "import sys, tokenization.cli; bad = [m for m in ('torch', 'sentencepiece', 'PIL') if m in sys.modules]; print(bad)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True
    )
    assert result.stdout.strip() == "[]"


def test_parser_help_lists_actions() -> None:
    import argparse

    from tokenization.cli import register

    parser = argparse.ArgumentParser(prog="cogview")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer"])
    assert args.func(args) == 0
    args = parser.parse_args(["tokenizer", "train-vqvae", "--data", "x", "--out", "y"])
    assert args.steps == 100_000 and args.codebook_size is None and callable(args.func)
