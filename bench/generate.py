"""Image-token generation speed on CPU: ours beside Hugging Face GPT-2 generate and CogView's original scheme.

One 32x32 image (1024 tokens) per sample after a 64-token prompt, at batch 1 and 8, same model shape
(4 layers, hidden 256, 4 heads, vocab 58,240, 1,089 positions, fp32, eval, fixed threads):
  ours    megatron_cogview.generation: preallocated KV cache, logits only on the 8,192 image rows, top-k 200
  hf      GPT2LMHeadModel.generate(use_cache=True, do_sample=True, top_k=200, min=max=1024 new tokens)
          (full 58,240-wide logits each step; no modality mask)
  hidden  CogView's released scheme, on our weights: cache each layer's input hidden states and recompute
          LayerNorm + Q/K/V over the whole prefix every step (into preallocated buffers, which only helps it),
          full-vocabulary logits masked to image ids, top-k 200
Runs alternate (ours, hf, hidden, ours, ...) in one process; we print min and median seconds and
tokens/s (b * new tokens / s), and ratios of medians. Results go to bench/results/generate_cpu.json.

    python bench/generate.py            # 1024 tokens, batch 1 and 8 (~5-8 min on 2 cores)
    python bench/generate.py --quick    # 128 tokens
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator import use_fair_allocator  # noqa: E402  (bench/ is on sys.path when run as a script)
from megatron_cogview.config import ModelConfig  # noqa: E402
from megatron_cogview.generation import GenerationConfig, draw_uniforms, generate_image_codes, inference, sample  # noqa: E402
from megatron_cogview.model import CogViewModel  # noqa: E402
from megatron_cogview.parallel import ParallelState  # noqa: E402

VOCAB, IMAGE_TOKENS, TOP_K, PROMPT = 58240, 8192, 200, 64


def build_ours() -> CogViewModel:
    cfg = ModelConfig(num_layers=4, hidden_size=256, num_attention_heads=4, vocab_size=VOCAB,
                      max_position_embeddings=1089, hidden_dropout=0.0, attention_dropout=0.0)
    return CogViewModel(cfg, ParallelState.single()).eval()


def build_hf() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=1089, n_embd=256, n_layer=4, n_head=4,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     tie_word_embeddings=True)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = 0
    return model


def run_ours(model: CogViewModel, prompts: torch.Tensor, n: int) -> torch.Tensor:
    config = GenerationConfig(top_k=TOP_K, seed=1, max_inference_batch_size=prompts.size(0))
    return generate_image_codes(model, list(prompts), n, (0, IMAGE_TOKENS), config)


def run_hf(model: torch.nn.Module, prompts: torch.Tensor, n: int) -> torch.Tensor:
    with torch.inference_mode():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=TOP_K,
                             min_new_tokens=n, max_new_tokens=n, use_cache=True)
    return out[:, prompts.size(1):]


@torch.inference_mode()
def run_hidden(model: CogViewModel, prompts: torch.Tensor, n: int) -> torch.Tensor:
    """CogView's released scheme: per-layer hidden-state memory, Q/K/V recomputed over the prefix each step."""
    b, s0 = prompts.shape
    layers, hdim, heads = model.transformer.layers, model.config.hidden_size, model.config.num_attention_heads
    mems = [torch.empty(b, s0 + n, hdim) for _ in layers]  # each layer's input hidden states
    allowed = torch.zeros(VOCAB, dtype=torch.bool)
    allowed[:IMAGE_TOKENS] = True
    config, u = GenerationConfig(top_k=TOP_K), draw_uniforms(range(b), n)
    tokens, out, length = prompts, [], 0
    for t in range(n):
        pos = torch.arange(length, length + tokens.size(1)).unsqueeze(0)
        x = model.word_embeddings(tokens) + model.transformer.position_embeddings(pos)  # [b, s, h]
        new = tokens.size(1)
        for i, layer in enumerate(layers):
            mems[i][:, length : length + new] = x
            full = mems[i][:, : length + new]  # [b, L, h]: the whole prefix, recomputed below
            qkv = layer.attention.query_key_value(layer.input_layernorm(full)).view(b, length + new, 3, heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [b, n, L, d]
            ctx = F.scaled_dot_product_attention(q[:, :, -new:], k, v, is_causal=new > 1)  # [b, n, new, d]
            a = layer.attention.dense(ctx.transpose(1, 2).reshape(b, new, hdim))
            h = x + layer.third_layernorm(a)
            x = h + layer.fourth_layernorm(layer.mlp(layer.post_attention_layernorm(h)))
        length += new
        logits = model.logits(model.transformer.final_layernorm(x[:, -1]))  # [b, V]
        tokens = sample(logits, config, u[:, t], allowed).unsqueeze(1)
        out.append(tokens)
    return torch.cat(out, 1)


def timed(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_batch(models: dict, b: int, n: int, repeats: dict[str, int]) -> dict:
    prompts = torch.randint(IMAGE_TOKENS, 58192, (b, PROMPT), generator=torch.Generator().manual_seed(0))
    runners = {"ours": lambda: run_ours(models["ours"], prompts, n), "hf": lambda: run_hf(models["hf"], prompts, n),
               "hidden": lambda: run_hidden(models["ours"], prompts, n)}
    for name in runners:  # warm-up on a few tokens
        {"ours": run_ours, "hf": run_hf, "hidden": run_hidden}[name](models["hf" if name == "hf" else "ours"], prompts, 4)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(max(repeats.values())):
        for name, fn in runners.items():
            if r < repeats[name]:
                times[name].append(timed(fn))
                print(f"  batch {b} {name:6s} run {r + 1}: {times[name][-1]:.2f} s", flush=True)
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = dict(seconds=ts, min_s=min(ts), median_s=med, tokens_per_s_median=b * n / med,
                          tokens_per_s_best=b * n / min(ts))
    for peer in ("hf", "hidden"):
        rows["ours"][f"speedup_vs_{peer}_median"] = rows[peer]["median_s"] / rows["ours"]["median_s"]
        rows["ours"][f"speedup_vs_{peer}_min"] = rows[peer]["min_s"] / rows["ours"]["min_s"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 new tokens instead of 1024")
    ap.add_argument("--tokens", type=int, default=0, help="new tokens per sample (default 1024, --quick 128)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3, help="runs of ours and hf per batch size")
    ap.add_argument("--hidden-repeats", type=int, default=1, help="runs of the (slow) hidden-state scheme")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "generate_cpu.json"))
    args = ap.parse_args()
    allocator = use_fair_allocator()
    print(f"allocator (both sides): {allocator}", flush=True)
    n = args.tokens or (128 if args.quick else 1024)
    if PROMPT + n > 1089:
        raise SystemExit(f"--tokens {n} does not fit 1089 positions after a {PROMPT}-token prompt")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"ours": build_ours(), "hf": build_hf()}
    repeats = {"ours": args.repeats, "hf": args.repeats, "hidden": args.hidden_repeats}
    results = {}
    for b in args.batches:
        print(f"batch {b}: {n} image tokens per sample", flush=True)
        results[str(b)] = bench_batch(models, b, n, repeats)
    print(f"\n{'batch':>5} {'impl':>7} {'min s':>8} {'median s':>9} {'tok/s (med)':>12} {'ours x':>8}")
    for b, rows in results.items():
        for name, row in rows.items():
            ratio = "" if name == "ours" else f"{rows['ours'][f'speedup_vs_{name}_median']:.2f}"
            print(f"{b:>5} {name:>7} {row['min_s']:8.2f} {row['median_s']:9.2f} {row['tokens_per_s_median']:12.1f} {ratio:>8}")
    machine = dict(platform=platform.platform(), cpus=torch.get_num_threads(), processor=platform.processor())
    out = dict(machine=machine, torch=torch.__version__, allocator=allocator, threads=args.threads, new_tokens=n, prompt_tokens=PROMPT,
               shape=dict(layers=4, hidden=256, heads=4, vocab=VOCAB, positions=1089), top_k=TOP_K, results=results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
