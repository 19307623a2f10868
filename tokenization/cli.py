"""`cogview tokenizer ...` subcommands: train-text and train-vqvae (heavy imports happen when they run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenization.errors import TokenizationError

# Model flags of train-vqvae and their VQVAEConfig fields (None = keep the default / the checkpoint's value).
_MODEL_FLAGS = {
    "image_size": "image_size",
    "downsample": "downsample",
    "codebook_size": "codebook_size",
    "code_dim": "code_dim",
    "hidden_channels": "hidden_channels",
    "res_channels": "res_channels",
    "num_res_blocks": "num_res_blocks",
    "ema_decay": "ema_decay",
    "commitment_beta": "commitment_beta",
    "dead_code_threshold": "dead_code_threshold",
    "architecture": "architecture",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tokenizer` subcommand (train-text, train-vqvae, import-vqvae) to the `cogview` parser."""
    parser = subparsers.add_parser("tokenizer", help="train the text (SentencePiece) and image (VQ-VAE) tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _help(parser))
    _add_train_text(sub)
    _add_train_vqvae(sub)
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


def _add_train_vqvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-vqvae", help="train a VQ-VAE image tokenizer on a folder, an image list or webdataset tars"
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="folders of images, image-list .txt files, or .tar shards (shard-{000..009}.tar)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output directory: model.safetensors, config.json, checkpoint.pt, train_log.jsonl",
    )
    p.add_argument(
        "--steps", type=int, default=100_000, help="total optimisation steps (a resumed run continues up to this)"
    )
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per step per process (under torchrun: global batch = this x WORLD_SIZE)")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes")
    p.add_argument("--save-every", type=int, default=2000, help="checkpoint + export every N steps")
    p.add_argument("--log-every", type=int, default=100, help="log metrics averaged over N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun cuda = cuda:LOCAL_RANK)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (quantiser stays fp32)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    model = p.add_argument_group("model (defaults: CogView's; ignored flags must match the checkpoint when resuming)")
    model.add_argument("--image-size", type=int, default=None, help="training resolution (default 256)")
    model.add_argument("--downsample", type=int, default=None, help="pixels per code side, a power of two (default 8)")
    model.add_argument("--codebook-size", type=int, default=None, help="number of codes (default 8192)")
    model.add_argument("--code-dim", type=int, default=None, help="code vector size (default 256)")
    model.add_argument("--hidden-channels", type=int, default=None, help="conv width (default 256)")
    model.add_argument("--res-channels", type=int, default=None, help="residual-block bottleneck width (default 128)")
    model.add_argument(
        "--num-res-blocks", type=int, default=None, help="residual blocks at the code resolution (default 2)"
    )
    model.add_argument("--ema-decay", type=float, default=None, help="codebook EMA decay (default 0.99)")
    model.add_argument("--commitment-beta", type=float, default=None, help="commitment loss weight (default 0.25)")
    model.add_argument(
        "--dead-code-threshold",
        type=float,
        default=None,
        help="re-initialise codes used less than this x the uniform share (default 0.03; 0: never)",
    )
    model.add_argument(
        "--architecture",
        choices=("residual", "cogview-original"),
        default=None,
        help="residual (default) or cogview-original (the released CogView VQ-VAE's layers; no residual blocks)",
    )
    p.set_defaults(func=_run_train_vqvae)


def _config_from_args(args: argparse.Namespace) -> "object":
    """VQVAEConfig from the flags, or from the checkpoint when resuming (given flags must agree)."""
    from tokenization.vqvae.config import VQVAEConfig
    from tokenization.vqvae.train import CHECKPOINT_NAME, load_checkpoint

    given = {field: getattr(args, flag) for flag, field in _MODEL_FLAGS.items() if getattr(args, flag) is not None}
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


def _run_train_vqvae(args: argparse.Namespace) -> int:
    from tokenization.vqvae.train import TrainOptions, train_vqvae

    config = _config_from_args(args)
    options = TrainOptions(
        data=list(args.data),
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        workers=args.workers,
        save_every=args.save_every,
        log_every=args.log_every,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        resume=args.resume,
    )
    train_vqvae(config, options, log=lambda line: print(line, flush=True))  # type: ignore[arg-type]
    return 0


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
