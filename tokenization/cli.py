"""`cogview tokenizer ...` subcommands: train-text and train-vqvae (heavy imports happen when they run)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from megatron_cogview.dataclass_flags import add_flags, cli_fields, flag_values
from tokenization.errors import TokenizationError

RunCommand = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction, run_train_vqvae: RunCommand | None = None) -> None:
    """Add the `tokenizer` subcommand (train-text, train-vqvae, import-vqvae) to the `cogview` parser.

    train-vqvae runs `run_train_vqvae` (megatron_cogview/commands/tokenizer.py: it lists the --data images with
    data_utils, which this package does not import); without one that action only parses its flags."""
    parser = subparsers.add_parser("tokenizer", help="train the text (SentencePiece) and image (VQ-VAE) tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _help(parser))
    _add_train_text(sub)
    _add_train_vqvae(sub, run_train_vqvae or _no_image_reader)
    _add_import_vqvae(sub)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _add_train_text(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-text", help="train a SentencePiece model from text files or a caption column")
    p.add_argument(
        "inputs", nargs="+", help="text files (one sentence per line) or JSONL/TSV/CSV files with --caption-column"
    )
    p.add_argument("--model-prefix", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=50000, help="number of pieces (a soft limit for tiny corpora)")
    p.add_argument(
        "--model-type", default="bpe", choices=["bpe", "unigram", "char", "word"], help="SentencePiece algorithm"
    )
    p.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="fraction of characters covered (1.0 for small alphabets)",
    )
    p.add_argument(
        "--caption-column", default=None, help="JSONL key (dots for nested) or TSV/CSV header name / 0-based index"
    )
    p.add_argument("--normalization", default="nmt_nfkc", help="SentencePiece normalisation rule (CogView: nmt_nfkc)")
    p.add_argument("--max-sentences", type=int, default=0, help="sample at most this many sentences (0: all)")
    p.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")
    p.set_defaults(func=_run_train_text)


def _run_train_text(args: argparse.Namespace) -> int:
    from tokenization.text import TextTokenizer, train_text_tokenizer

    model = train_text_tokenizer(
        args.inputs,
        args.model_prefix,
        args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        caption_column=args.caption_column,
        normalization=args.normalization,
        max_sentences=args.max_sentences,
        verbose=args.verbose,
    )
    print(f"wrote {model} ({TextTokenizer(model).vocab_size} pieces)")
    return 0


def _add_train_vqvae(sub: argparse._SubParsersAction, run: RunCommand) -> None:
    p = sub.add_parser(
        "train-vqvae", help="train a VQ-VAE image tokenizer on a folder, an image list or webdataset tars"
    )
    from tokenization.vqvae.config import TrainOptions, VQVAEConfig

    add_flags(p, TrainOptions)
    model = p.add_argument_group("model (defaults: CogView's; ignored flags must match the checkpoint when resuming)")
    add_flags(model, VQVAEConfig, show_defaults=True, defaults={f.name: None for f in cli_fields(VQVAEConfig)})
    p.set_defaults(func=run)


def _config_from_args(args: argparse.Namespace) -> "object":
    """VQVAEConfig from the flags, or from the checkpoint when resuming (given flags must agree)."""
    from tokenization.vqvae.config import VQVAEConfig
    from tokenization.vqvae.train import CHECKPOINT_NAME, load_checkpoint

    given = {k: v for k, v in flag_values(VQVAEConfig, args).items() if v is not None}
    if not args.resume:
        if given.get("architecture") == "cogview-original":
            given.setdefault("num_res_blocks", 0)  # that architecture has none
        return VQVAEConfig(**given)
    saved = VQVAEConfig.from_dict(load_checkpoint(Path(args.out) / CHECKPOINT_NAME)["config"])
    clashes = [f"--{k.replace('_', '-')}" for k, v in given.items() if getattr(saved, k) != v]
    if clashes:
        raise TokenizationError(
            f"{', '.join(clashes)} differ from the checkpoint being resumed; drop them or use a new --out"
        )
    return saved


def _no_image_reader(args: argparse.Namespace) -> int:
    raise TokenizationError("train-vqvae needs the image readers of data_utils; run it as `cogview tokenizer train-vqvae`")


def _add_import_vqvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-vqvae", help="convert the released CogView VQ-VAE (vqvae_hard_biggerset_011.pt) to our format"
    )
    p.add_argument("checkpoint", type=Path, help="the original VQ-VAE .pt file (a state dict)")
    p.add_argument("--out", required=True, type=Path, help="output directory: model.safetensors + config.json")
    p.add_argument("--image-size", type=int, default=256, help="default encoding resolution (the release used 256)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow the full unpickler when weights_only=True refuses the file (runs code: trusted files only)",
    )
    p.set_defaults(func=_run_import_vqvae)


def _run_import_vqvae(args: argparse.Namespace) -> int:
    import sys

    from tokenization.image import ImageTokenizer
    from tokenization.vqvae.original import import_original_vqvae
    from tokenization.vqvae.serialization import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

    out: Path = args.out
    if (out / WEIGHTS_NAME).exists() or (out / CONFIG_NAME).exists():
        raise TokenizationError(f"{out} already holds a VQ-VAE; choose a new --out (nothing was overwritten)")
    model = import_original_vqvae(
        args.checkpoint, args.trust_pickle, args.image_size, log=lambda line: print(line, file=sys.stderr)
    )
    save_pretrained(model, out)
    reloaded = ImageTokenizer.from_pretrained(out)
    if reloaded.fingerprint() != ImageTokenizer(model).fingerprint():
        raise TokenizationError(f"verification of {out} failed after writing (disk full?); delete it and retry")
    c = model.config
    print(
        f"wrote {out} ({c.architecture}: {c.image_size} px -> {c.grid_size}x{c.grid_size} codes of "
        f"{c.codebook_size}, fingerprint {reloaded.fingerprint()[:12]})"
    )
    return 0
