"""`cogview demo`: the end-to-end laptop demo (train a tiny CogView on CPU, then generate images)."""
from __future__ import annotations

import argparse
import dataclasses
import json

# CPU threads per demo stage: torch in this process and OMP_NUM_THREADS of the training processes (the demo's
# timings in the README were measured with 2)
DEMO_THREADS = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = subparsers.add_parser("demo", help="end-to-end demo on CPU: synthetic data -> tokenizers -> pretrain -> "
                              "generate -> report/ (~10 min on 2 cores with bf16 instructions, ~35-40 without; --fast ~2 min)")
    p.add_argument("--out", default="demo_out", help="output folder (re-running skips completed stages)")
    p.add_argument("--fast", action="store_true", help="a ~2-minute smoke version (tiny sizes, low quality)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, models and sampling")
    p.add_argument("--threads", type=int, default=DEMO_THREADS, help="CPU threads of each stage (torch here, "
                   f"OMP_NUM_THREADS of the training processes; default {DEMO_THREADS})")
    p.add_argument("--super-resolution", action="store_true", help="also fine-tune a super-resolution model and "
                   "magnify 32 px images to 64 px (report/superres.md; 3,000 SR steps, ~9 more minutes on 2 cores with bf16 "
                   "instructions, ~25 without; "
                   "off by default)")
    p.add_argument("--vq-style-fraction", type=float, default=0.0, help="also train the VQ-VAE on this many "
                   "renderings per scene in new styles (outlined and striped, never shown to the transformer), so "
                   "that bench/style_finetune.py can teach a style later (e.g. 0.2; default 0)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="training precision of the "
                   "transformers (auto: bf16 where the CPU has bf16 instructions, AVX512-BF16 or AMX, else fp32)")
    p.set_defaults(func=run, prefers_tcmalloc=True)  # its stages train and sample in this process and in children


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print where the report is."""
    from megatron_cogview.config import ConfigError
    from megatron_cogview.demo.pipeline import FAST, DemoSettings, run_demo

    settings = dataclasses.replace(FAST if args.fast else DemoSettings(), seed=args.seed,
                                   super_resolution=args.super_resolution,
                                   vq_style_fraction=args.vq_style_fraction, precision=args.precision)
    if args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    if not 0.0 <= args.vq_style_fraction <= 1.0:
        raise ConfigError(f"--vq-style-fraction {args.vq_style_fraction} must be between 0 and 1")
    metrics = run_demo(args.out, settings, threads=args.threads)
    print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("selection", "sample", "total_seconds"))}))
    print(f"report: {args.out}/report/summary.md (PNG grids in {args.out}/samples/)")
    if "superres" in metrics:
        print(f"super-resolution: {args.out}/report/superres.md, superres.png")
    return 0
