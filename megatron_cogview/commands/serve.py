"""`cogview serve`: a local web page + HTTP API for text-to-image and image-to-text over one loaded model."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from megatron_cogview.commands.generate import DTYPES, load_for_generation
from megatron_cogview.config import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve`."""
    p = subparsers.add_parser("serve", help="serve a web page for text-to-image (and image-to-text) on localhost")
    p.add_argument("--load", required=True, help="text-to-image checkpoint directory")
    p.add_argument("--caption-model", default="", help="image-to-text checkpoint: enables post-selection and captioning")
    p.add_argument("--text-tokenizer", default="", help="SentencePiece model (default: the one the checkpoint names)")
    p.add_argument("--image-tokenizer", default="", help="VQ-VAE directory (default: the one the checkpoint names)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--max-batch", type=int, default=16, help="samples decoded together (requests are batched)")
    p.add_argument("--max-samples", type=int, default=16, help="samples one request may ask for")
    p.add_argument("--max-prompt-chars", type=int, default=300, help="longest prompt accepted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from megatron_cogview.serve.app import Limits, create_app
        from megatron_cogview.serve.worker import Worker
    except ImportError as e:
        raise ConfigError(f"cogview serve needs the [serve] extra ({e.name} is missing): "
                          "pip install 'megatron-cogview[serve]'") from None
    for name in ("max_batch", "max_samples", "max_prompt_chars"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if not _is_loopback(args.host):
        print(f"warning: binding to {args.host}: anyone who can reach this address can use the model; there is no "
              "authentication", file=sys.stderr)
    model, tok = load_for_generation(args, args.load)
    caption = load_for_generation(args, args.caption_model)[0] if args.caption_model else None
    worker = Worker(model, tok, caption, max_batch_rows=args.max_batch)
    app = create_app(worker, Limits(max_samples=args.max_samples, max_prompt_chars=args.max_prompt_chars))
    print(f"serving {args.load} on http://{args.host}:{args.port}/ (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
