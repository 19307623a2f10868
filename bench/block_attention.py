"""Causal attention with dropout on CPU, forward + backward: our block_causal_attention (what the sdpa kernel
runs in CPU training with attention dropout) beside torch's scaled_dot_product_attention(dropout_p, is_causal),
alternating in one process under the same allocator.

    python bench/block_attention.py [--json bench/results/block_attention_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator import use_fair_allocator  # noqa: E402  (bench/ is on sys.path when run as a script)

from megatron_cogview.model.attention import block_causal_attention  # noqa: E402

SHAPES = ((2, 8, 1088, 64), (2, 4, 1088, 64), (1, 8, 2600, 64), (64, 4, 82, 32))  # [b, heads, seq, head dim]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--json")
    args = ap.parse_args()
    allocator = use_fair_allocator()
    torch.set_num_threads(args.threads)
    print(f"allocator (both sides): {allocator}; {args.threads} threads; dropout {args.dropout}")
    rows = []
    for b, n, s, d in SHAPES:
        qkv = torch.randn(b, s, 3, n, d, requires_grad=True)
        gen = torch.Generator().manual_seed(0)

        def ours() -> torch.Tensor:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # the layout the model hands its kernels
            return block_causal_attention(q, k, v, args.dropout, gen)

        def torch_sdpa() -> torch.Tensor:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=args.dropout, is_causal=True)

        times: dict[str, list[float]] = {"ours": [], "torch": []}
        for i in range(args.repeat + 1):
            for name, fn in (("ours", ours), ("torch", torch_sdpa)):
                t0 = time.perf_counter()
                fn().sum().backward()
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - t0)
        row = {"shape": [b, n, s, d], **{k: statistics.median(v) for k, v in times.items()}}
        row["ratio"] = row["ours"] / row["torch"]
        rows.append(row)
        print(f"b {b} heads {n} seq {s} dim {d}: ours {row['ours'] * 1e3:.0f} ms, torch {row['torch'] * 1e3:.0f} ms, "
              f"ratio {row['ratio']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"allocator": allocator, "threads": args.threads, "torch": torch.__version__,
                                               "dropout": args.dropout, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
