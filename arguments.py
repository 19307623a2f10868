"""Shim: the parser of pretrain_gpt2.py lives in megatron_cogview.arguments (kept for `from arguments import ...`)."""
from megatron_cogview.arguments import Args, build_parser, parse_args

__all__ = ["Args", "build_parser", "parse_args"]
