"""Training-step speed: our CogViewModel (tp=1) beside Hugging Face GPT2LMHeadModel, in one process.

Both models get the same shape (layers, hidden, heads, sequence, batch, vocab 58,240, dropout 0.1,
tanh-GELU, fused SDPA attention, tied embeddings), the same torch AdamW and the same precision
recipe (fp32, or bf16 autocast with fp32 master weights). Steps alternate A, B, A, B so machine noise
hits both alike; we print min and median seconds per step and the ratio ours/HF (lower is better).
Our model carries CogView's two extra LayerNorms per layer (Sandwich-LN) on top of GPT-2's.

    python bench/model_step.py                       # both shapes, fp32 and bf16
    python bench/model_step.py --shapes small --dtypes fp32 --steps 5 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocator import use_fair_allocator  # noqa: E402  (bench/ is on sys.path when run as a script)

from megatron_cogview.config import ModelConfig  # noqa: E402
from megatron_cogview.model import CogViewModel  # noqa: E402
from megatron_cogview.parallel import ParallelState  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    heads: int
    seq: int = 1088
    batch: int = 2
    vocab: int = 58240


SHAPES = {
    "small": Shape("small", 4, 256, 4),
    "medium": Shape("medium", 8, 512, 8),
}


def build_ours(shape: Shape, device: str, compile_layers: bool = False) -> tuple[torch.nn.Module, callable]:
    cfg = ModelConfig(
        num_layers=shape.layers, hidden_size=shape.hidden, num_attention_heads=shape.heads, vocab_size=shape.vocab,
        max_position_embeddings=shape.seq + 1, attention_kernel="sdpa", compile_layers=compile_layers,
    )
    model = CogViewModel(cfg, ParallelState.single(), device=device).train()

    def loss_fn(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = torch.ones(labels.shape, device=labels.device)
        return model.lm_loss(tokens, labels, weights).total / labels.numel()

    return model, loss_fn


def build_hf(shape: Shape, device: str) -> tuple[torch.nn.Module, callable]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=shape.vocab, n_positions=shape.seq + 1, n_embd=shape.hidden, n_layer=shape.layers,
        n_head=shape.heads, activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(device).train()

    def loss_fn(tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # HF shifts the labels internally (seq - 1 predictions); ours takes explicit labels (seq predictions).
        return model(input_ids=tokens, labels=tokens).loss

    return model, loss_fn


def make_step(model: torch.nn.Module, loss_fn, dtype: str, device: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.04)
    ctx = (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext

    def step(tokens: torch.Tensor, labels: torch.Tensor) -> float:
        with ctx():
            loss = loss_fn(tokens, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_pair(shape: Shape, dtype: str, steps: int, warmup: int, device: str, compile_layers: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=g).to(device)
    labels = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=g).to(device)
    torch.manual_seed(0)
    builders = (("ours", lambda s, d: build_ours(s, d, compile_layers)), ("hf", build_hf))
    runners = {name: make_step(*build(shape, device), dtype, device) for name, build in builders}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        for name, step in runners.items():
            sync(device)
            t0 = time.perf_counter()
            step(tokens, labels)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    res = {"shape": shape.__dict__, "dtype": dtype, "steps": steps, "ours_compile_layers": compile_layers}
    for name, ts in times.items():
        res[name] = {"min_s": min(ts), "median_s": statistics.median(ts)}
    res["ratio_median"] = res["ours"]["median_s"] / res["hf"]["median_s"]
    res["ratio_min"] = res["ours"]["min_s"] / res["hf"]["min_s"]
    res["tokens_per_s_ours"] = shape.batch * shape.seq / res["ours"]["median_s"]
    return res


_MEMORY_PROBE = """
import sys, torch
sys.path.insert(0, {bench!r})
import model_step as m

def hwm_mib():
    # VmHWM belongs to this address space (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

torch.set_num_threads({threads})
s = m.SHAPES[{shape!r}]
base = hwm_mib()
model, fn = (m.build_ours if {which!r} == "ours" else m.build_hf)(s, {device!r})
step = m.make_step(model, fn, {dtype!r}, {device!r})
t = torch.randint(0, s.vocab, (s.batch, s.seq), device={device!r})
for _ in range(2):
    step(t, t)
print(torch.cuda.max_memory_allocated() / 2**20 if {device!r}.startswith("cuda") else hwm_mib() - base)
"""


def peak_memory(shape: Shape, dtype: str, which: str, device: str) -> float:
    """Peak memory (MiB) of 2 training steps of one model, measured in a fresh subprocess."""
    code = _MEMORY_PROBE.format(bench=str(Path(__file__).resolve().parent), threads=torch.get_num_threads(),
                                shape=shape.name, which=which, device=device, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _hf_version() -> str:
    import transformers

    return transformers.__version__


def _load() -> float:
    """The 1-minute load average (the machine may be shared; ratios stay fair, absolute seconds do not)."""
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile-layers", default="off", choices=("off", "on", "both"),
                    help="our model with ModelConfig.compile_layers (compiled in the warm-up steps); HF stays eager")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    allocator = use_fair_allocator()
    torch.set_num_threads(args.threads)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    results = []
    load_start = _load()
    print(f"machine: {machine}; torch {torch.__version__}; allocator (both sides): {allocator}; "
          f"load {_load():.1f}")
    print(f"{'shape':8s} {'dtype':5s} {'compile':7s} {'ours med s':>10s} {'HF med s':>9s} {'ratio':>6s} {'ours min':>9s} {'HF min':>8s} {'ours MiB':>9s} {'HF MiB':>8s}")
    compiles = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile_layers]
    for shape_name in args.shapes.split(","):
        for dtype, comp in ((d, c) for d in args.dtypes.split(",") for c in compiles):
            shape = SHAPES[shape_name]
            r = bench_pair(shape, dtype, args.steps, args.warmup, args.device, comp)
            if not args.no_memory:
                r["ours"]["peak_mib"] = peak_memory(shape, dtype, "ours", args.device)
                r["hf"]["peak_mib"] = peak_memory(shape, dtype, "hf", args.device)
            mem = (f"{r['ours'].get('peak_mib', float('nan')):9.0f} {r['hf'].get('peak_mib', float('nan')):8.0f}")
            print(f"{shape_name:8s} {dtype:5s} {'layers' if comp else 'no':7s} {r['ours']['median_s']:10.3f} {r['hf']['median_s']:9.3f} "
                  f"{r['ratio_median']:6.2f} {r['ours']['min_s']:9.3f} {r['hf']['min_s']:8.3f} {mem}", flush=True)
            results.append(r)
            if args.json:  # after every row: a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({
                    "machine": machine, "torch": torch.__version__, "transformers": _hf_version(),
                    "allocator": allocator, "load_average_1m": [load_start, _load()], "results": results}, indent=1))


if __name__ == "__main__":
    main()
