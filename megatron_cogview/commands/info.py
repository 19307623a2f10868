"""`cogview info`: print a model configuration and its exact parameter count (meta device, no memory)."""
from __future__ import annotations

import argparse
import json

from megatron_cogview.config import PRESETS, ConfigError, ModelConfig, model_preset


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    p = subparsers.add_parser("info", help="print a model configuration and its exact parameter count")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), help="a built-in model preset (default: cogview-4b)")
    src.add_argument("--config", metavar="FILE", help="a JSON ModelConfig (or one under the key 'model')")
    p.add_argument("--tp", type=int, default=1, help="check that this tensor-parallel size fits the model")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _breakdown(config: ModelConfig) -> dict[str, int]:
    h, v, f, L = config.hidden_size, config.vocab_size, config.ffn_size, config.num_layers
    n_ln = {"sandwich": 4, "pre": 2, "post": 2}[config.layernorm_order]
    per_layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + n_ln * 2 * h
    return {
        "word_embeddings": v * h,
        "position_embeddings": config.max_position_embeddings * h,
        "per_layer": per_layer,
        "layers": L * per_layer,
        "final_layernorm": 0 if config.layernorm_order == "post" else 2 * h,
    }


def run(args: argparse.Namespace) -> int:
    """Print the configuration and parameter count."""
    from megatron_cogview.model import count_parameters  # torch import only when the command runs

    config = ModelConfig.from_json(args.config) if args.config else model_preset(args.preset or "cogview-4b")
    if args.tp < 1:
        raise ConfigError(f"--tp {args.tp} must be >= 1")
    config.check_tensor_parallel(args.tp)
    total = count_parameters(config)
    parts = _breakdown(config)
    if total != sum(v for k, v in parts.items() if k != "per_layer"):
        raise RuntimeError("parameter breakdown disagrees with the model; please report this")
    if args.json:
        per_rank = count_parameters(config, args.tp)
        print(json.dumps({"config": config.to_dict(), "parameters": total, "per_tp_rank": per_rank, "breakdown": parts}))
        return 0
    name = args.config or args.preset or "cogview-4b"
    print(f"model: {name}")
    for key, value in config.to_dict().items():
        print(f"  {key:26s} {value}")
    print("parameters:")
    for key, value in parts.items():
        print(f"  {key:26s} {value:,}")
    print(f"  {'total':26s} {total:,}")
    if args.tp > 1:
        print(f"  {f'per rank at tp={args.tp}':26s} {count_parameters(config, args.tp):,}")
    return 0
