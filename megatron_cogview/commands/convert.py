"""`cogview convert`: change a checkpoint's tensor-parallel size, consolidate ZeRO shards, export safetensors."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from megatron_cogview.commands import original
from megatron_cogview.config import PRESETS, ConfigError, ModelConfig, model_preset

EPILOG = """examples:
  cogview convert --load ckpt --save ckpt-tp4 --target-tp 4
  cogview convert --load ckpt --save ckpt-fp32 --consolidate            (ZeRO shards -> full fp32 weights)
  cogview convert --load ckpt --save export --export safetensors        (one file, tp=1, + config.json)
  cogview convert --from cogview-original --load cogview-base --preset cogview-4b --num-tokens 58219 \\
      --save ckpt-tp2 --target-tp 2
  cogview convert --from cogview-original --load cogview-sr --preset cogview-4b --task superres \\
      --text-tokenizer cog-pretrain.model --image-tokenizer vqvae --save ckpt-sr   (records what generation needs)
Optimizer state is dropped (except --consolidate --keep-optimizer at the same tp). The vocabulary is
re-padded to pad_vocab_size(num_tokens, tp) when the metadata records tokenizers.num_tokens (or
--num-tokens is given); otherwise the padded size is kept when tp divides it, else grown with zero rows.
A ZeRO-3 checkpoint (parameters partitioned over dp ranks) is always consolidated: any conversion of it,
--target-tp and --export included, gathers the fp32 weights from its optimizer shards."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    p = subparsers.add_parser(
        "convert", help="change tensor-parallel size, consolidate ZeRO shards, export safetensors",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--load", required=True, metavar="DIR", help="checkpoint directory (holding the tracker files)")
    p.add_argument("--save", required=True, metavar="DIR", help="new directory to write (must not exist or be empty)")
    p.add_argument("--iteration", type=int, help="convert this iteration instead of the latest")
    p.add_argument("--target-tp", type=int, help="tensor-parallel size of the output (default: unchanged)")
    p.add_argument("--consolidate", action="store_true",
                   help="merge DeepSpeed ZeRO optimizer shards into full fp32 weights per tp rank "
                        "(implied for ZeRO-3 checkpoints)")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="with --consolidate at an unchanged tp: copy the ZeRO optimizer shards too")
    p.add_argument("--export", choices=["safetensors"],
                   help="write one safetensors file of the full tp=1 model + config.json + tokenizer files")
    p.add_argument("--from", dest="fmt", choices=["cogview", "cogview-original"], default="cogview",
                   help="input layout: this project's (default) or the original CogView release")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--preset", choices=sorted(PRESETS), help="model shape, when the checkpoint records none")
    shape.add_argument("--config", metavar="FILE", help="JSON ModelConfig, when the checkpoint records none")
    p.add_argument("--num-tokens", type=int, help="real (unpadded) vocabulary size, for re-padding at a new tp")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow the full unpickler for files weights_only=True refuses (runs code: trusted files only)")
    g = p.add_argument_group("longer sequences / bigger image grids (alone, no other conversion)")
    g.add_argument("--max-position-embeddings", type=int, metavar="N",
                   help="grow the position table to N rows (new image rows: bilinear interpolation of the old grid)")
    g.add_argument("--image-grid", type=int, metavar="G",
                   help="with --max-position-embeddings: the new image grid side (default: the one that keeps "
                        "the text rows, N - G*G = old rows - old G*G)")
    original.add_arguments(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """One-line errors for flag combinations that cannot work."""
    if args.keep_optimizer and not args.consolidate:
        raise ConfigError("--keep-optimizer only applies with --consolidate")
    if args.export and args.target_tp not in (None, 1):
        raise ConfigError(f"--export writes the full tp=1 model; drop --target-tp {args.target_tp}")
    if args.export and args.keep_optimizer:
        raise ConfigError("--export writes weights only; drop --keep-optimizer")
    if args.num_tokens is not None and args.num_tokens < 1:
        raise ConfigError(f"--num-tokens {args.num_tokens} must be >= 1")
    if args.image_grid is not None and args.max_position_embeddings is None:
        raise ConfigError("--image-grid only applies with --max-position-embeddings")
    if args.max_position_embeddings is not None:
        others = [f for f, v in (("--target-tp", args.target_tp), ("--consolidate", args.consolidate or None),
                                 ("--export", args.export), ("--from cogview-original", args.fmt != "cogview" or None))
                  if v is not None]
        if others:
            raise ConfigError(f"--max-position-embeddings is a conversion of its own; run {', '.join(others)} in a "
                              "separate `cogview convert`")
        if args.image_grid is not None and args.image_grid < 1:
            raise ConfigError(f"--image-grid {args.image_grid} must be >= 1")
    if Path(args.save).absolute() == Path(args.load).absolute():
        raise ConfigError("--save must be a new directory, not --load")
    original.check_arguments(args)


def run(args: argparse.Namespace) -> int:
    """Run the conversion the flags ask for."""
    from megatron_cogview.checkpoint.convert import check_save_dir, consolidate, reshard
    from megatron_cogview.checkpoint.export import export_safetensors
    from megatron_cogview.checkpoint.source import open_source

    _check_args(args)
    save = Path(args.save)
    check_save_dir(save.absolute())
    config: ModelConfig | None = None
    if args.config:
        config = ModelConfig.from_json(args.config)
    elif args.preset:
        config = model_preset(args.preset)
    if args.fmt == "cogview-original" and config is not None:  # position table, vocab rows, PB-relax LN
        from megatron_cogview.checkpoint.original import original_config

        config = original_config(args.load, config, iteration=args.iteration, trust_pickle=args.trust_pickle)
    source = open_source(args.load, fmt=args.fmt, iteration=args.iteration, config=config,
                         num_tokens=args.num_tokens, trust_pickle=args.trust_pickle)
    if args.fmt == "cogview-original":
        tokenizers, extra = original.import_metadata(args, source.config)
        source.meta.tokenizers.update(tokenizers)
        source.meta.extra.update(extra)
    if args.max_position_embeddings is not None:
        from megatron_cogview.checkpoint.positions import write_grown

        meta = write_grown(source, save, args.max_position_embeddings, args.image_grid, source.log)
        print(f"wrote {save} (iteration {meta.iteration}, {args.max_position_embeddings} positions, image grid "
              f"{meta.tokenizers.get('image_grid', 'unrecorded')})")
        return 0
    if not args.export:
        if args.consolidate:
            meta = consolidate(source, save, target_tp=args.target_tp, keep_optimizer=args.keep_optimizer)
        else:
            meta = reshard(source, save, args.target_tp)
        print(f"wrote {save} (iteration {meta.iteration}, tensor-parallel size {meta.tensor_parallel_size}, "
              f"vocab_size {meta.model['vocab_size']})")
        return 0
    if not (args.consolidate or source.partitioned):
        export_safetensors(source, save)
    else:  # consolidate into a scratch checkpoint beside --save, then export that
        save.absolute().parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{save.name}.fp32-", dir=save.absolute().parent))
        try:
            consolidate(source, scratch / "ckpt")
            export_safetensors(open_source(scratch / "ckpt"), save)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {save} (safetensors export of iteration {source.iteration}, tensor-parallel size 1)")
    return 0
