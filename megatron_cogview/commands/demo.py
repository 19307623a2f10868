"""`cogview demo`: the end-to-end laptop demo (train a tiny CogView on CPU, then generate images)."""
from __future__ import annotations

import argparse
import dataclasses
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = subparsers.add_parser("demo", help="end-to-end demo on CPU: synthetic data -> tokenizers -> pretrain -> "
                              "generate -> report/ (~15 min; --fast ~2 min)")
    p.add_argument("--out", default="demo_out", help="output folder (re-running skips completed stages)")
    p.add_argument("--fast", action="store_true", help="a ~2-minute smoke version (tiny sizes, low quality)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, models and sampling")
    p.add_argument("--super-resolution", action="store_true", help="also fine-tune a super-resolution model and "
                   "magnify 32 px images to 64 px (report/superres.md; ~3 more minutes, off by default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print where the report is."""
    from megatron_cogview.demo.pipeline import FAST, DemoSettings, run_demo

    settings = dataclasses.replace(FAST if args.fast else DemoSettings(), seed=args.seed,
                                   super_resolution=args.super_resolution)
    metrics = run_demo(args.out, settings)
    print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("selection", "sample", "total_seconds"))}))
    print(f"report: {args.out}/report/summary.md (PNG grids in {args.out}/samples/)")
    if "superres" in metrics:
        print(f"super-resolution: {args.out}/report/superres.md, superres.png")
    return 0
