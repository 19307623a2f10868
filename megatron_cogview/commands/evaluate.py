"""`cogview evaluate`: FID-k, Inception Score, Caption Loss and checker accuracy of a text-to-image checkpoint."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_cogview.commands.generate import add_sampling_flags
from megatron_cogview.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    p = subparsers.add_parser("evaluate", help="generate for (caption, image) pairs and score FID-k, IS, Caption "
                              "Loss (and the synthetic checker), one-sample and self-reranked")
    p.add_argument("--load", required=True, help="text-to-image checkpoint directory")
    p.add_argument("--data", nargs="+", required=True, help="(caption, reference image) pairs: JSONL/TSV with "
                   "caption + image path, image folders with same-name .txt captions, img2dataset .tar shards "
                   "(the demo's held-out split is DEMO_OUT/data/synth/heldout.jsonl)")
    p.add_argument("--out", default="eval", help="output folder (a re-run continues its generation)")
    p.add_argument("--caption-model", default="", help="image-to-text checkpoint: Caption Loss and reranking")
    p.add_argument("--samples-per-caption", type=int, default=1, help="kept images per caption")
    p.add_argument("--rerank", type=int, default=1, help="draw N per kept image and keep the lowest Caption Loss "
                   "(needs --caption-model; CogView reranked 60)")
    p.add_argument("--features", choices=("shapes", "inception", "none"), default="inception",
                   help="FID/IS network: the FID Inception-v3 (needs --inception-weights), the synthetic-shapes CNN, "
                        "or none (Caption Loss and checker only)")
    p.add_argument("--inception-weights", default="", help="the FID Inception-v3 weights file "
                   "(weights-inception-2015-12-05-6726825d.pth of torch-fidelity; read from disk, never downloaded)")
    p.add_argument("--shapes-model", default="", help="shapes extractor file (default OUT/shapes_extractor."
                   "safetensors, trained there in about a minute when missing)")
    p.add_argument("--blur", type=float, nargs="+", default=[0, 1, 2, 4, 8], help="FID-k blur radii")
    p.add_argument("--max-captions", type=int, default=0, help="use only the first N unique captions (0 = all)")
    p.add_argument("--max-references", type=int, default=10000, help="reference images read for FID (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="delete samples of an earlier run with other settings")
    add_sampling_flags(p)
    p.set_defaults(func=run)


def _checkpoint_id(path: str) -> str:
    """Path, iteration and save time of a checkpoint: samples of a retrained checkpoint are not reused."""
    if not path:
        return ""
    latest = Path(path) / "latest"
    stamp = f"{latest.read_text().strip()}@{latest.stat().st_mtime_ns}" if latest.is_file() else "?"
    return f"{Path(path).resolve()}#{stamp}"


def _extractor(args: argparse.Namespace, out: Path, image_size: int):
    if args.features == "inception":
        from megatron_cogview.evaluation.inception import WEIGHTS_SOURCE, InceptionFeatures

        if not args.inception_weights:
            raise ConfigError("--features inception needs --inception-weights FILE (the FID Inception-v3 weights, "
                              f"{WEIGHTS_SOURCE}); or use --features shapes on the synthetic data")
        return InceptionFeatures(args.inception_weights)
    if args.features == "shapes":
        from megatron_cogview.evaluation.shapes import shapes_net

        path = args.shapes_model or str(out / "shapes_extractor.safetensors")
        if args.shapes_model and not Path(path).is_file():
            raise ConfigError(f"--shapes-model {path!r} does not exist; omit it to train one into {out}")
        return shapes_net(path, image_size=image_size, log=lambda m: print(m, file=sys.stderr))
    return None


def run(args: argparse.Namespace) -> int:
    """Check every input, then generate (resumably) and score; prints the markdown table."""
    from megatron_cogview.commands.generate import load_for_generation
    from megatron_cogview.evaluation.references import read_references
    from megatron_cogview.evaluation.report import markdown_table
    from megatron_cogview.evaluation.run import EvalSettings, evaluate

    settings = EvalSettings(args.samples_per_caption, args.rerank, tuple(args.blur), args.seed, args.temperature,
                            args.top_k, args.top_p, args.max_inference_batch_size)
    if args.rerank > 1 and not args.caption_model:
        raise ConfigError(f"--rerank {args.rerank} needs --caption-model (reranking keeps the lowest Caption Loss)")
    if settings.samples_per_caption < 1 or settings.rerank < 1:
        raise ConfigError("--samples-per-caption and --rerank must be >= 1")
    out = Path(args.out)
    model, tok = load_for_generation(args, args.load)
    caption = load_for_generation(args, args.caption_model)[0] if args.caption_model else None
    size = tok.image.image_size
    refs = read_references(args.data, size, max_captions=args.max_captions or None,
                           max_references=args.max_references or None)
    extractor = _extractor(args, out, size)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    log(f"evaluating {len(refs.captions)} captions x {settings.draws} draws against {refs.images.size(0)} "
        f"reference images -> {out}/")
    results = evaluate(model, tok, refs, settings, out, extractor=extractor, caption_model=caption,
                       checkpoints={"load": _checkpoint_id(args.load), "caption_model": _checkpoint_id(args.caption_model)},
                       features=args.features, overwrite=args.overwrite, log=log)
    print(markdown_table(results))
    log(f"wrote {out}/results.json, {out}/results.md, {out}/grid.png")
    return 0
