"""Validate a GPU node in one command (about 8 minutes on one H100/H200); `--tiny` runs every stage on CPU.

Stages (each prints one JSON line and one human line; `--skip a,b` or `--only a,b` choose them):
  env        torch / DeepSpeed / CUDA versions, GPU name, measured bf16 GEMM TFLOP/s and copy GB/s
  kernels    SDPA backend per phase (training, prefill, decode); fused LM loss vs an fp64 reference in fp16
             and bf16 beside the unfused path; dropout + activation checkpointing == no checkpointing
  launcher   `deepspeed --num_gpus 1 pretrain_gpt2.py` with the paper's fp16 ZeRO-1 JSON: trains, saves, resumes
  mfu        24 layers x 2560 (the 4B width), bf16, SDPA, ZeRO-1, seq 1088, with and without activation
             checkpointing: tokens/s, TFLOP/s and MFU as the trainer logs them
  generate   4B-shaped model with random weights (meta-device build, initialised on the GPU), bf16,
             1024 image tokens at batch 1 and 8: seconds per image and tokens/s, eager and with CUDA graphs
  fp16       the paper's stability claim: 48 x 256 in fp16 with dynamic loss scaling, Pre-LN + plain attention
             vs Sandwich-LN + PB-relax: skipped steps, loss scale, largest activation
  tp         tp=2 over gloo with both processes on one device vs tp=1: equal losses

    python bench/gpu_validate.py                      # on a GPU node; results in bench/results/gpu_validate.jsonl
    python bench/gpu_validate.py --tiny --out /tmp/v  # CPU smoke run of every stage (what CI runs)
Exit status: 0 when every stage that ran is ok, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import gpu_checks as checks  # noqa: E402  (bench/ is on sys.path when run as a script)
from data_utils.tiny_dataset import make_tiny_dataset  # noqa: E402

STAGES = ("env", "kernels", "launcher", "mfu", "generate", "fp16", "tp")
CONFIGS = ROOT / "scripts" / "ds_configs"


class Run:
    """Where a validation run works and how big it is."""

    def __init__(self, work: Path, tiny: bool) -> None:
        self.work, self.tiny = work, tiny
        self.sizes = checks.Sizes.tiny() if tiny else checks.Sizes()
        self._data: dict[tuple[int, int], str] = {}

    def data(self, grid: int = 16, max_text: int = 6) -> str:
        """A tiny learnable token dataset with `grid` image codes per sample (made once per shape)."""
        if (grid, max_text) not in self._data:
            self._data[(grid, max_text)] = make_tiny_dataset(str(self.work / f"data_{grid}"), n=256, grid=grid,
                                                             max_text=max_text)
        return self._data[(grid, max_text)]

    def ds_config(self, name: str, **optimizer_params: float) -> str:
        """A DeepSpeed JSON of scripts/ds_configs, with optimizer params replaced (written to the work folder)."""
        cfg = json.loads((CONFIGS / name).read_text())
        cfg["optimizer"]["params"].update(optimizer_params)
        path = self.work / f"{Path(name).stem}_{len(list(self.work.glob('*.json')))}.json"
        path.write_text(json.dumps(cfg))
        return str(path)

    def precision_config(self) -> str:
        """The paper's fp16 ZeRO-1 JSON on GPU; its bf16 twin on CPU (DeepSpeed's CPU accelerator has no fp16)."""
        return "bf16_zero1.json" if self.tiny else "cogview_fp16_zero1.json"

    def train(self, save: Path, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
        """One `deepspeed --num_gpus 1 pretrain_gpt2.py` run."""
        launcher = str(Path(sys.executable).with_name("deepspeed"))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.tiny:
            env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", GLOO_SOCKET_IFNAME="lo")
        cmd = [launcher, "--num_gpus", "1", "--master_port", str(_free_port()), str(ROOT / "pretrain_gpt2.py"),
               "--deepspeed", "--save", str(save), "--log-interval", "1", *args]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(save: Path) -> list[dict[str, Any]]:
    path = save / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == "train"]


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return " | ".join(lines[-3:])[-600:]


# ---- 3. the real launcher --------------------------------------------------------------------------
def launcher(run: Run) -> dict[str, Any]:
    """Trains 6 steps in two launches (exit and save at 3, resume to 6) with the paper's JSON."""
    save = run.work / "launcher"
    common = ["--preset", "tiny", "--train-data", run.data(), "--train-iters", "6", "--save-interval", "3",
              "--deepspeed_config", str(CONFIGS / run.precision_config())]
    first = run.train(save, [*common, "--exit-interval", "3"])
    second = run.train(save, [*common, "--load", str(save)])
    recs = _metrics(save)
    its = [r["iteration"] for r in recs]
    ok = first.returncode == 0 and second.returncode == 0 and its == [1, 2, 3, 4, 5, 6]
    out: dict[str, Any] = {"config": run.precision_config(), "iterations": its,
                           "losses": [round(r["loss"], 4) for r in recs], "ok": ok}
    if not ok:
        out["error"] = _tail(first if first.returncode else second)
    return out


# ---- 4. MFU --------------------------------------------------------------------------------------
def mfu(run: Run) -> dict[str, Any]:
    """Throughput of the 4B width at 24 layers in bf16, with and without activation checkpointing."""
    if run.tiny:
        shape, data, iters = ["--preset", "tiny"], run.data(), 6
    else:
        shape, data, iters = ["--preset", "cogview-4b", "--num-layers", "24"], run.data(1024, 59), 20
    out: dict[str, Any] = {"shape": " ".join(shape), "runs": []}
    ok = True
    for ckpt in (False, True):
        save = run.work / f"mfu_{int(ckpt)}"
        proc = run.train(save, [*shape, "--train-data", data, "--train-iters", str(iters), "--attention-kernel", "sdpa",
                                "--deepspeed_config", str(CONFIGS / "bf16_zero1.json"),
                                "--checkpoint-activations" if ckpt else "--no-checkpoint-activations"])
        recs = _metrics(save)[iters // 2:]  # steady state: the second half
        entry: dict[str, Any] = {"checkpoint_activations": ckpt, "returncode": proc.returncode}
        for key in ("tokens_per_s", "tflops", "mfu", "ms_per_step"):
            values = [r[key] for r in recs if r.get(key) is not None]
            if values:
                entry[key] = round(statistics.median(values), 4)
        if proc.returncode != 0 or not recs:
            entry["error"] = _tail(proc)
            ok = False
        out["runs"].append(entry)
    out["ok"] = ok
    return out


# ---- 6. fp16 stability ---------------------------------------------------------------------------
ARMS = {
    "pre-ln+plain": ["--layernorm-order", "pre", "--attention-kernel", "plain", "--pb-relax-layernorm", "none"],
    "sandwich+pb-relax": ["--layernorm-order", "sandwich", "--attention-kernel", "pb-relax", "--pb-relax-layernorm", "all"],
}


def _largest_activation(save: Path, data: str) -> float:
    """Largest |hidden state| over the layer outputs of the saved model on one batch of the training data."""
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.parallel import ParallelState
    from data_utils.tiny_dataset import records

    model, _ = load_model(save, ParallelState.single())
    tokens = torch.stack([torch.as_tensor(r.tokens[:-1], dtype=torch.long) for r in records(8, seed=1)])
    biggest = [0.0]
    hooks = [layer.register_forward_hook(lambda m, i, o: biggest.__setitem__(0, max(biggest[0], float(o.abs().max()))))
             for layer in model.transformer.layers]
    with torch.no_grad():
        model.eval().hidden_states(tokens)
    for h in hooks:
        h.remove()
    return biggest[0]


def fp16_stability(run: Run) -> dict[str, Any]:
    """Deep, narrow model in fp16 with dynamic loss scaling: Pre-LN + plain vs Sandwich-LN + PB-relax."""
    layers, iters = ("4", "6") if run.tiny else ("48", "300")
    config = run.ds_config(run.precision_config(), lr=1e-3)
    out: dict[str, Any] = {"precision": "bf16 (tiny: DeepSpeed's CPU accelerator has no fp16)" if run.tiny else "fp16",
                           "shape": f"{layers} x 256", "arms": {}}
    for arm, flags in ARMS.items():
        save = run.work / f"fp16_{arm}"
        proc = run.train(save, ["--preset", "tiny", "--num-layers", layers, "--hidden-size", "256",
                                "--num-attention-heads", "4", "--train-data", run.data(), "--train-iters", iters,
                                "--save-interval", iters, "--max-consecutive-skips", "100000",
                                "--deepspeed_config", config, *flags])
        recs = _metrics(save)
        entry: dict[str, Any] = {"returncode": proc.returncode, "steps_logged": len(recs)}
        if recs:
            entry.update(skipped_steps=recs[-1]["skipped_steps"], final_loss=round(recs[-1]["loss"], 4),
                         min_loss_scale=min(r["loss_scale"] for r in recs))
        if proc.returncode == 0:
            entry["largest_activation"] = round(_largest_activation(save, run.data()), 2)
        else:
            entry["last_lines"] = _tail(proc)
        out["arms"][arm] = entry
    out["ok"] = out["arms"]["sandwich+pb-relax"]["returncode"] == 0
    return out


# ---- driver ------------------------------------------------------------------------------------
def stage_functions(run: Run) -> dict[str, Callable[[], dict[str, Any]]]:
    s = run.sizes
    return {"env": lambda: checks.environment(s), "kernels": lambda: checks.kernels(s), "launcher": lambda: launcher(run),
            "mfu": lambda: mfu(run), "generate": lambda: checks.generation(s), "fp16": lambda: fp16_stability(run),
            "tp": lambda: checks.tensor_parallel_one_device(s)}


def human(name: str, r: dict[str, Any]) -> str:
    """One readable line per stage."""
    flag = "ok " if r.get("ok") else "FAIL"
    skip = {"stage", "ok", "seconds", "date"}
    body = ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip)
    return f"[{flag}] {name:9s} ({r.get('seconds', 0):.0f} s) {body}"[:1200]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="every stage at toy size on CPU (CI smoke run)")
    p.add_argument("--only", default="", help=f"comma list of stages to run ({','.join(STAGES)})")
    p.add_argument("--skip", default="", help="comma list of stages to skip")
    p.add_argument("--out", default="", help="JSONL file for the results (default: bench/results/gpu_validate.jsonl; "
                                             "--tiny: none)")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed at the end)")
    args = p.parse_args(argv)
    for name in filter(None, (args.only + "," + args.skip).split(",")):
        if name not in STAGES:
            p.error(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if not args.tiny and not torch.cuda.is_available():
        p.error("no CUDA device visible: run on a GPU node, or pass --tiny for the CPU smoke run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [s for s in STAGES if (not args.only or s in args.only.split(",")) and s not in args.skip.split(",")]
    out_path = Path(args.out) if args.out else (None if args.tiny else ROOT / "bench" / "results" / "gpu_validate.jsonl")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(args.work or tmp), args.tiny)
        run.work.mkdir(parents=True, exist_ok=True)
        functions = stage_functions(run)
        for name in chosen:
            t0 = time.perf_counter()
            try:
                result = functions[name]()
            except Exception as e:  # a stage that crashes is a failed check, not the end of the validation
                result = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            result = {"stage": name, **result, "seconds": round(time.perf_counter() - t0, 1),
                      "date": time.strftime("%Y-%m-%d")}
            failures += not result["ok"]
            print(json.dumps(result), flush=True)
            print(human(name, result), flush=True)
            if out_path is not None:
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with out_path.open("a") as f:
                    f.write(json.dumps(result) + "\n")
    print(f"{len(chosen) - failures}/{len(chosen)} stages ok", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
