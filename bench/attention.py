"""Sparse (three-region) vs dense causal attention on this machine: step time and peak memory.

One attention call of a 4B-shaped layer slice (heads of 64 dims) at sequence 1089 (32x32 grid), 2,600 (50x50)
and 4,096, batch 1, fp32:
  dense        torch SDPA, is_causal (flash kernel where available)
  sparse-sdpa  the sparse kernel's SDPA backend (dense [s, s] additive bias), forward + backward
  sparse-flex  the sparse kernel's FlexAttention backend (compiled, no [s, s] tensor); forward only on CPU,
               since this torch has no FlexAttention backward there
Each measurement runs in a fresh subprocess (peak RSS above the process's baseline), alternating arms;
min and median of --repeat runs. Results go to bench/results/attention_cpu.json.

    python bench/attention.py                 # 1089, 2600, 4096 (a few minutes on 2 cores)
    python bench/attention.py --seq 1089      # one length
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("dense", "sparse-sdpa", "sparse-flex")


def measure(arm: str, seq: int, heads: int, threads: int) -> dict[str, float]:
    """Run one arm once in this process: seconds of the measured call and peak RSS growth in MiB."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from megatron_cogview.config import model_preset
    from megatron_cogview.model.sparse import sample_pattern, sparse_attention

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    grad = arm != "sparse-flex"
    q, k, v = (torch.randn(1, heads, seq, 64, generator=g, requires_grad=grad) for _ in range(3))
    cfg = model_preset("cogview-4b", attention_kernel="sparse", sparse_backend="flex" if arm == "sparse-flex" else "sdpa",
                       attention_dropout=0.0, max_position_embeddings=max(seq + 1, 1089))
    tokens = torch.randint(0, 8192, (1, seq), generator=g)
    tokens[:, :64] = 9000  # a 64-token text prefix
    pattern = sample_pattern(tokens, cfg, g)

    def call() -> None:
        if arm == "dense":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = sparse_attention(q, k, v, pattern)
        if grad:
            out.sum().backward()

    call()  # warm-up (and the compile, for flex)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    call()
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sec, "peak_mib_after_warmup": (peak - base) / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, nargs="*", default=[1089, 2600, 4096])
    p.add_argument("--heads", type=int, default=8, help="heads of 64 dims (a tp shard of the 4B model's 40)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", nargs=2, metavar=("ARM", "SEQ"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.heads, args.threads)))
        return 0
    results = []
    for seq in args.seq:
        runs: dict[str, list[dict[str, float]]] = {a: [] for a in ARMS}
        for _ in range(args.repeat):
            for arm in ARMS:  # alternate arms, one fresh process per measurement
                out = subprocess.run([sys.executable, __file__, "--one", arm, str(seq), "--heads", str(args.heads),
                                      "--threads", str(args.threads)], capture_output=True, text=True, cwd=ROOT)
                if out.returncode != 0:
                    raise SystemExit(f"{arm} at {seq} failed: {out.stderr.strip().splitlines()[-1]}")
                runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for arm, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            entry = {"seq": seq, "arm": arm, "min_s": round(min(secs), 4), "median_s": round(statistics.median(secs), 4),
                     "peak_mib": round(max(r["peak_mib_after_warmup"] for r in rs), 1),
                     "pass": "forward" if arm == "sparse-flex" else "forward+backward"}
            results.append(entry)
            print(f"seq {seq:5d}  {arm:12s} {entry['pass']:17s} median {entry['median_s']:.3f} s  "
                  f"min {entry['min_s']:.3f} s  peak +{entry['peak_mib']:.0f} MiB", flush=True)
    out_path = ROOT / "bench" / "results" / "attention_cpu.json"
    out_path.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": args.threads,
                                    "heads": args.heads, "results": results}, indent=1))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
