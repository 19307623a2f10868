"""`cogview info`: print a model configuration and its exact parameter count (meta device, no memory)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from megatron_cogview.config import PRESETS, ConfigError, ModelConfig, model_preset

if TYPE_CHECKING:
    import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    p = subparsers.add_parser("info", help="print a model configuration and its exact parameter count")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), help="a built-in model preset (default: cogview-4b)")
    src.add_argument("--config", metavar="FILE", help="a JSON ModelConfig (or one under the key 'model')")
    p.add_argument("--tp", type=int, default=1, help="check that this tensor-parallel size fits the model")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


_OUTSIDE_LAYERS = ("word_embeddings", "position_embeddings", "final_layernorm")  # module names


def breakdown(model: "torch.nn.Module") -> tuple[dict[str, int], dict[str, int]]:
    """(parts, per-layer parts) of the model's parameter count, read from its parameters by module name.

    parts: word_embeddings, position_embeddings, per_layer (layer 0), layers (all), final_layernorm;
    per-layer parts: attention, mlp, layernorms. A parameter outside these groups is an error, so the
    parts always add up to the model (per_layer is layer 0's share of `layers`).
    """
    parts = dict.fromkeys(("word_embeddings", "position_embeddings", "per_layer", "layers", "final_layernorm"), 0)
    layer = dict.fromkeys(("attention", "mlp", "layernorms"), 0)
    for name, param in model.named_parameters():
        path, n = name.split("."), param.numel()
        if path[:2] == ["transformer", "layers"]:
            parts["layers"] += n
            if path[2] == "0":
                parts["per_layer"] += n
                group = "layernorms" if path[3].endswith("layernorm") else path[3]
                if group not in layer:
                    raise RuntimeError(f"`cogview info` has no line for parameter {name}; please report this")
                layer[group] += n
        elif path[-2] in _OUTSIDE_LAYERS:
            parts[path[-2]] += n
        else:
            raise RuntimeError(f"`cogview info` has no line for parameter {name}; please report this")
    return parts, layer


def run(args: argparse.Namespace) -> int:
    """Print the configuration and parameter count."""
    from megatron_cogview.model import CogViewModel, count_parameters  # torch import only when the command runs
    from megatron_cogview.parallel.state import ParallelState

    config = ModelConfig.from_json(args.config) if args.config else model_preset(args.preset or "cogview-4b")
    if args.tp < 1:
        raise ConfigError(f"--tp {args.tp} must be >= 1")
    config.check_tensor_parallel(args.tp)
    model = CogViewModel(config, ParallelState.single(), device="meta")  # shapes only, no memory
    total = sum(p.numel() for p in model.parameters())
    parts, layer = breakdown(model)
    if args.json:
        per_rank = count_parameters(config, args.tp)
        print(json.dumps({"config": config.to_dict(), "parameters": total, "per_tp_rank": per_rank, "breakdown": parts,
                          "per_layer_breakdown": layer}))
        return 0
    name = args.config or args.preset or "cogview-4b"
    print(f"model: {name}")
    for key, value in config.to_dict().items():
        print(f"  {key:26s} {value}")
    print("parameters:")
    for key, value in parts.items():
        print(f"  {key:26s} {value:,}")
        if key == "per_layer":
            for sub, n in layer.items():
                print(f"    {sub:24s} {n:,}")
    print(f"  {'total':26s} {total:,}")
    if args.tp > 1:
        print(f"  {f'per rank at tp={args.tp}':26s} {count_parameters(config, args.tp):,}")
    return 0
