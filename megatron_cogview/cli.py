"""The `cogview` command: one subcommand per task; user errors print one line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from megatron_cogview.allocator import reexec_with_tcmalloc
from megatron_cogview.errors import exit_on_user_error

# (module, function) pairs; each function is `register(subparsers) -> None` and adds one or more
# subcommands whose parser sets `func=callable(args) -> int | None`.
COMMAND_MODULES: tuple[str, ...] = (
    "megatron_cogview.commands.info",
    "megatron_cogview.commands.train",
    "megatron_cogview.commands.demo",
    "megatron_cogview.commands.generate",
    "megatron_cogview.commands.convert",
    "megatron_cogview.commands.serve",
    "megatron_cogview.commands.evaluate",
    "megatron_cogview.commands.tokenizer",
    "data_utils.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `cogview` parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cogview", description="megatron-cogview: train, sample and convert CogView text-to-image models"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        try:
            register: Callable[[argparse._SubParsersAction], None] = importlib.import_module(module).register
        except ModuleNotFoundError as e:  # a subcommand module that is not part of this build
            if e.name and module.startswith(e.name):
                continue
            raise
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cogview` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if argv is None and getattr(args, "prefers_tcmalloc", False):
        # a command line (not a call from Python) of a command that allocates heavily in this process: restart it
        # once with tcmalloc preloaded when the system has it (megatron_cogview/allocator.py)
        reexec_with_tcmalloc()
    try:
        return exit_on_user_error(f"cogview {args.command}", lambda: args.func(args))
    except KeyboardInterrupt:
        print(f"cogview {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
