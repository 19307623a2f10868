"""`cogview train ...`: the same as `python pretrain_gpt2.py ...` (single process, or under torchrun)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand (all flags are pretrain_gpt2.py's; see `cogview train --help`)."""
    p = subparsers.add_parser("train", help="pre-train / fine-tune CogView (flags of pretrain_gpt2.py)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to pretrain_gpt2's main."""
    from megatron_cogview.commands.pretrain import main

    return main(args.args)
