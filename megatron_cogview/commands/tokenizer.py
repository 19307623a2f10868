"""`cogview tokenizer ...`: the parser of tokenization/cli.py; train-vqvae lists its --data images with data_utils."""
from __future__ import annotations

import argparse

from megatron_cogview.dataclass_flags import flag_values
from tokenization import cli


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tokenizer` subcommand (train-text, train-vqvae, import-vqvae)."""
    cli.register(subparsers, run_train_vqvae=run_train_vqvae)


def run_train_vqvae(args: argparse.Namespace) -> int:
    """List the --data images (a bad --data fails here, before anything is written), then train."""
    from data_utils.image_sources import find_images
    from tokenization.vqvae.config import TrainOptions
    from tokenization.vqvae.train import train_vqvae

    config = cli._config_from_args(args)
    options = TrainOptions(**flag_values(TrainOptions, args))
    sources = find_images(options.data)
    train_vqvae(config, options, sources, log=lambda line: print(line, flush=True))
    return 0
