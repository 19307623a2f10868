"""Checkpoint conversion speed and peak memory: our streaming reshard/export beside a naive load-everything peer.

A synthetic tp=2 checkpoint of a ~1B-parameter CogView shape (hidden 2048, 16 heads, 18 layers, vocab 58,240;
fp32 by default, ~4.1 GB) is written straight from random tensors (no model build), then each conversion runs
in a fresh subprocess that reports wall time and VmHWM (peak resident set, file-backed mmap pages included)
from /proc/self/status. GB/s = bytes of model weights converted / wall seconds (the verify-by-reload pass
included). Files live under --workdir and are deleted afterwards. The page cache is warm (inputs were just
written); we do not drop caches on a shared machine.

    python bench/convert.py                                   # full size, fp32
    python bench/convert.py --layers 2 --repeat 1 --json /tmp/x.json   # quick smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_cogview.checkpoint.layout import (  # noqa: E402
    CheckpointMeta,
    model_states_file,
    write_meta,
    write_trackers,
)
from megatron_cogview.checkpoint.reshard import expected_shapes  # noqa: E402
from megatron_cogview.config import ModelConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def vm_hwm_mib() -> float:
    """Peak resident set of this process (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_synthetic(config: ModelConfig, tp: int, dtype: torch.dtype, save: Path) -> int:
    """A tp checkpoint of random weights in the training layout; returns total bytes of weights."""
    shapes = expected_shapes(config, tp)
    meta = CheckpointMeta(model=config.to_dict(), tensor_parallel_size=tp, iteration=1)
    total = 0
    g = torch.Generator().manual_seed(0)
    for rank in range(tp):
        module = {k: torch.empty(s, dtype=torch.float32).uniform_(-0.05, 0.05, generator=g).to(dtype)
                  for k, (s, _) in shapes.items()}
        total += sum(t.nbytes for t in module.values())
        path = model_states_file(save, 1, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"module": module, "iteration": 1, "cogview": meta.to_dict()}, path)
        del module
    write_meta(save, 1, meta)
    write_trackers(save, 1)
    return total


def naive_reshard(load: Path, save: Path, target_tp: int) -> None:
    """The peer: torch.load every shard whole, unshard each tensor to its master, shard again, save."""
    from megatron_cogview.checkpoint.layout import read_meta
    from megatron_cogview.checkpoint.reshard import split_rules
    from megatron_cogview.parallel import shard, unshard

    it, meta = read_meta(load)
    inputs = [torch.load(model_states_file(load, it, r), weights_only=True)["module"]
              for r in range(meta.tensor_parallel_size)]
    rules = split_rules(meta.model_config())
    full = {}
    for name in inputs[0]:
        rule = rules[name]
        full[name] = unshard([i[name] for i in inputs], rule.dim, rule.stride) if rule.sharded else inputs[0][name]
    del inputs
    for rank in range(target_tp):
        module = {}
        for name, t in full.items():
            rule = rules[name]
            module[name] = shard(t, rule.dim, target_tp, rank, rule.stride) if rule.sharded else t
        path = model_states_file(save, it, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"module": module, "iteration": it}, path)


def worker(mode: str, load: str, save: str, tp: int) -> None:
    """Run one conversion in this (fresh) process and print a JSON line."""
    torch.set_num_threads(1)
    from megatron_cogview.checkpoint.convert import reshard
    from megatron_cogview.checkpoint.export import export_safetensors
    from megatron_cogview.checkpoint.source import open_source

    base = vm_hwm_mib()
    quiet = lambda _m: None  # noqa: E731
    t0 = time.perf_counter()
    if mode == "ours":
        reshard(open_source(load, log=quiet), save, tp, log=quiet)
    elif mode == "export":
        export_safetensors(open_source(load, log=quiet), save, log=quiet)
    else:
        naive_reshard(Path(load), Path(save), tp)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "vm_hwm_mib": vm_hwm_mib(), "baseline_hwm_mib": base}))


def run_worker(mode: str, load: Path, save: Path, tp: int) -> dict:
    """One conversion in a subprocess; its output directory is removed afterwards."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", mode, str(load), str(save), str(tp)],
                         check=True, capture_output=True, text=True, env=env)
    shutil.rmtree(save, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", nargs=4, metavar=("MODE", "LOAD", "SAVE", "TP"), help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--repeat", type=int, default=2, help="runs of each case (interleaved); min and median quoted")
    p.add_argument("--workdir", default=None, help="where the synthetic checkpoints go (default: a temp dir)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "convert_cpu.json"))
    args = p.parse_args()
    if args.worker:
        mode, load, save, tp = args.worker
        worker(mode, load, save, int(tp))
        return
    config = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                         vocab_size=58240, max_position_embeddings=1089)
    work = Path(tempfile.mkdtemp(prefix="cogview-convert-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        nbytes = write_synthetic(config, 2, DTYPES[args.dtype], work / "tp2")
        write_s = time.perf_counter() - t0
        params = nbytes // DTYPES[args.dtype].itemsize
        cases = [("ours: reshard tp 2 -> 4", "ours", 4), ("naive peer: reshard tp 2 -> 4", "naive", 4),
                 ("ours: reshard tp 2 -> 1", "ours", 1), ("ours: export safetensors (tp 2 -> 1 file)", "export", 1)]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
        for _ in range(args.repeat):
            for name, mode, tp in cases:
                runs[name].append(run_worker(mode, work / "tp2", work / "out", tp))
        rows = []
        for name, _, _ in cases:
            secs = [r["seconds"] for r in runs[name]]
            rows.append({
                "case": name, "seconds_min": min(secs), "seconds_median": statistics.median(secs),
                "gb_per_s_best": nbytes / 1e9 / min(secs),
                "peak_rss_mib_max": max(r["vm_hwm_mib"] for r in runs[name]),
                "baseline_rss_mib": runs[name][0]["baseline_hwm_mib"],
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": 1},
        "model": {**config.to_dict(), "parameters": params, "dtype": args.dtype, "bytes": nbytes,
                  "largest_tensor_mib": max(torch.Size(s).numel() for s, _ in expected_shapes(config, 1).values())
                  * DTYPES[args.dtype].itemsize / 2**20,
                  "input_shard_mib": nbytes / 2 / 2**20},
        "synthetic_write_seconds": write_s, "repeat": args.repeat, "results": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"{params / 1e9:.2f}B parameters, {args.dtype}, {nbytes / 1e9:.2f} GB; input shard "
          f"{result['model']['input_shard_mib']:.0f} MiB, largest tensor {result['model']['largest_tensor_mib']:.0f} MiB")
    print(f"{'case':44s} {'min s':>7s} {'med s':>7s} {'GB/s':>6s} {'peak RSS MiB':>13s} {'(import)':>9s}")
    for r in rows:
        print(f"{r['case']:44s} {r['seconds_min']:7.1f} {r['seconds_median']:7.1f} {r['gb_per_s_best']:6.2f} "
              f"{r['peak_rss_mib_max']:13.0f} {r['baseline_rss_mib']:9.0f}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
