"""Magnify speed on CPU: one g x g grid -> 2g x 2g codes by the 9 sliding windows, ours vs naive.

Same model and windows for both (4 layers, hidden 256, 4 heads, vocab 58,240, 1,089 positions, fp32, eval,
fixed threads), a 16-token text, top-k 200:
  ours   megatron_cogview.generation.super_resolution.magnify: per window one KV cache, the prompt prefilled
         once, runs of cells given by earlier windows fed as one chunk, logits only on the image rows
  naive  the same windows recomputed from scratch without a cache: a full forward over prompt + cells so
         far for every sampled cell (what CogView's original magnify did; it had no KV cache)
Both draw the same codes (checked: the naive path is the test reference). We print seconds and sampled
cells per second, and the ratio. Results go to bench/results/superres_cpu.json.

    python bench/superres.py            # 32x32 -> 64x64 (the paper's 512 px path; naive takes minutes)
    python bench/superres.py --quick    # 16x16 -> 32x32
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_cogview.config import ModelConfig  # noqa: E402
from megatron_cogview.generation import GenerationConfig  # noqa: E402
from megatron_cogview.generation.super_resolution import magnify  # noqa: E402
from megatron_cogview.model import CogViewModel  # noqa: E402
from megatron_cogview.parallel import ParallelState  # noqa: E402
from tokenization.layout import TokenLayout  # noqa: E402
from tokenization.templates import super_resolution_prompt  # noqa: E402

LAYOUT = TokenLayout()  # CogView's: 8,192 image codes, 50,000 text pieces -> vocab 58,240
TEXT = list(range(100, 116))


def build() -> CogViewModel:
    cfg = ModelConfig(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=LAYOUT.vocab_size,
                      max_position_embeddings=1089, hidden_dropout=0.0, attention_dropout=0.0)
    return CogViewModel(cfg, ParallelState.single()).eval()


def build_prompt(row: int, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seq = super_resolution_prompt(LAYOUT, TEXT, low)
    return torch.from_numpy(seq.tokens), torch.from_numpy(seq.position_ids)


def timed(model: CogViewModel, codes: torch.Tensor, use_cache: bool) -> tuple[float, torch.Tensor]:
    config = GenerationConfig(top_k=200, seed=1)
    start = time.perf_counter()
    out = magnify(model, codes, build_prompt, config, (0, LAYOUT.num_image_tokens), [7], use_cache=use_cache)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16x16 -> 32x32 instead of 32x32 -> 64x64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs of ours (the naive scheme runs once)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "superres_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    grid = 16 if args.quick else 32
    model = build()
    codes = torch.randint(0, LAYOUT.num_image_tokens, (1, grid, grid), generator=torch.Generator().manual_seed(0))
    cells = (2 * grid) ** 2
    ours = [timed(model, codes, True) for _ in range(args.repeats)]
    naive_s, naive_out = timed(model, codes, False)
    same = all(torch.equal(o, naive_out) for _, o in ours)
    best = min(s for s, _ in ours)
    result = {
        "grid": f"{grid}x{grid} -> {2 * grid}x{2 * grid}", "windows": 9, "sampled_cells": cells,
        "model": "4 layers x 256, 4 heads, vocab 58240, fp32", "threads": args.threads,
        "ours_s": [round(s, 2) for s, _ in ours], "naive_s": round(naive_s, 2),
        "ours_cells_per_s": round(cells / best, 1), "naive_cells_per_s": round(cells / naive_s, 2),
        "speedup": round(naive_s / best, 1), "same_codes": same,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
