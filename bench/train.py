"""Training-step overhead and memory: our DeepSpeed pretrain step vs a bare PyTorch loop, ZeRO 0/1/2 at
dp=2, and tp=2 vs tp=1 step time. Everything runs in spawned gloo processes on this machine.

    python bench/train.py                     # all three parts, writes bench/results/train_cpu.json
    python bench/train.py --parts overhead --steps 10

Overhead: the same demo-size model (4 layers x 128, vocab 512, sequences of 80) and the same batches,
stepped alternately by (a) our Trainer.train_step on the DeepSpeed engine and (b) a bare loop
(forward, backward, torch AdamW step). Tokens/s are medians; the ratio is ours/bare step time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from allocator import use_fair_allocator  # noqa: E402  (bench/ is on sys.path when run as a script)

VOCAB, SEQ, BATCH = 512, 80, 64


def _init(rank: int, world: int, store: str, threads: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      DS_ACCELERATOR="cpu", GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))


def _batches(n: int, batch: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(0, VOCAB - 64, (batch, SEQ + 1), generator=g)
        out.append({"tokens": seq[:, :-1].contiguous(), "labels": seq[:, 1:].contiguous(),
                    "position_ids": torch.arange(SEQ).expand(batch, SEQ).contiguous(),
                    "keys": [f"k{i}" for i in range(batch)]})
    return out


class _ListSource:
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        while True:
            yield from self.batches

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _engine(zero: int, tp: int, batch: int):  # type: ignore[no-untyped-def]
    from megatron_cogview.checkpoint.layout import CheckpointMeta
    from megatron_cogview.config import TrainConfig, model_preset
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.engine import build_ds_config, create_engine
    from megatron_cogview.training.loop import Trainer
    from megatron_cogview.training.objective import Objective

    state = ParallelState.build(tp)
    cfg = model_preset("demo", vocab_size=VOCAB, max_position_embeddings=SEQ)
    train = TrainConfig(train_iters=10**6, micro_batch_size=batch, lr=1e-3, zero_stage=zero, log_interval=10**6)
    model = CogViewModel(cfg, state)
    engine, _ = create_engine(model, state, train, build_ds_config(train))
    source = _ListSource(_batches(4, batch, seed=state.dp_rank)) if state.tp_rank == 0 else None
    meta = CheckpointMeta(model=cfg.to_dict(), tensor_parallel_size=tp)
    objective = Objective(text_start=VOCAB, text_end=VOCAB, pad_id=VOCAB)  # no text, no padding: every weight 1
    return Trainer(engine=engine, model=model, state=state, train=train, meta=meta, source=source,
                   objective=objective), cfg


def _overhead(rank: int, world: int, store: str, steps: int, queue) -> None:  # type: ignore[no-untyped-def]
    _init(rank, world, store, 2)
    from megatron_cogview.model import CogViewModel
    from megatron_cogview.parallel import ParallelState
    from megatron_cogview.training.engine import param_groups
    from megatron_cogview.training.loop import StopSignal, Window

    trainer, cfg = _engine(0, 1, BATCH)
    bare = CogViewModel(cfg, ParallelState.single()).train()
    opt = torch.optim.AdamW(param_groups(bare, 0.04), lr=1e-3, betas=(0.9, 0.95))
    batches = _batches(4, BATCH)

    def bare_step(b: dict) -> None:
        weights = torch.ones(b["labels"].shape)
        out = bare.lm_loss(b["tokens"], b["labels"], weights, b["position_ids"])
        (out.total / weights.sum()).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    window, stop = Window(), StopSignal()
    ours, plain = [], []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        trainer.train_step(window, stop)
        t1 = time.perf_counter()
        bare_step(batches[i % 4])
        t2 = time.perf_counter()
        if i >= 2:
            ours.append(t1 - t0)
            plain.append(t2 - t1)
    tok = BATCH * SEQ
    queue.put({"ours_ms": 1000 * statistics.median(ours), "bare_ms": 1000 * statistics.median(plain),
               "ours_min_ms": 1000 * min(ours), "bare_min_ms": 1000 * min(plain),
               "ours_tokens_per_s": tok / statistics.median(ours), "bare_tokens_per_s": tok / statistics.median(plain),
               "overhead": statistics.median(ours) / statistics.median(plain) - 1})


def _optimizer_bytes(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(Adam moment bytes, fp32 master-partition bytes) held by this rank."""
    opt = engine.optimizer
    base = getattr(opt, "optimizer", opt)
    moments = 0
    for st in base.state.values():
        moments += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    master = sum(t.numel() * t.element_size() for t in (getattr(opt, "single_partition_of_fp32_groups", None) or []))
    return moments, master


def _zero(rank: int, world: int, store: str, zero: int, steps: int, queue) -> None:  # type: ignore[no-untyped-def]
    _init(rank, world, store, 1)
    from megatron_cogview.training.loop import StopSignal, Window

    trainer, _ = _engine(zero, 1, BATCH // 2)
    window, stop = Window(), StopSignal()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(window, stop)
        times.append(time.perf_counter() - t0)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    moments, master = _optimizer_bytes(trainer.engine)
    queue.put({"rank": rank, "zero": zero, "optimizer_mib": moments / 2**20, "fp32_master_mib": master / 2**20,
               "peak_rss_mib": hwm, "step_ms": 1000 * statistics.median(times[1:] or times)})


def _tp(rank: int, world: int, store: str, tp: int, steps: int, queue) -> None:  # type: ignore[no-untyped-def]
    _init(rank, world, store, 2 // world)
    from megatron_cogview.training.loop import StopSignal, Window

    trainer, _ = _engine(0, tp, BATCH)
    window, stop = Window(), StopSignal()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(window, stop)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({"tp": tp, "step_ms": 1000 * statistics.median(times[1:]), "min_ms": 1000 * min(times[1:])})


def _spawn(fn, world: int, *args) -> list[dict]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=fn, args=(r, world, os.path.join(tmp, "store"), *args, queue)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=900)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{fn.__name__} failed: exit codes {[p.exitcode for p in procs]}")
    out = []
    while not queue.empty():
        out.append(queue.get())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="overhead,zero,tp")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "train_cpu.json"))
    args = ap.parse_args()
    allocator = use_fair_allocator()
    print(f"allocator (both sides, inherited by spawned ranks): {allocator}; load {os.getloadavg()[0]:.1f}")
    parts = args.parts.split(",")
    res: dict = {"machine": f"{os.cpu_count()}-core CPU, gloo, DeepSpeed CPU accelerator", "torch": torch.__version__,
                 "allocator": allocator, "model": f"demo preset (4x128, 4 heads), vocab {VOCAB}, seq {SEQ}, batch {BATCH}"}
    if "overhead" in parts:
        r = _spawn(_overhead, 1, args.steps)[0]
        res["overhead"] = r
        print(f"pretrain step (DeepSpeed engine): {r['ours_ms']:.1f} ms ({r['ours_tokens_per_s']:.0f} tok/s); bare "
              f"PyTorch loop: {r['bare_ms']:.1f} ms ({r['bare_tokens_per_s']:.0f} tok/s); overhead {100 * r['overhead']:+.1f}%")
    if "zero" in parts:
        rows = []
        for zero in (0, 1, 2):
            ranks = _spawn(_zero, 2, zero, max(3, args.steps // 4))
            rows.append(max(ranks, key=lambda x: x["optimizer_mib"]))
        base = rows[0]["optimizer_mib"]
        for r in rows:
            r["optimizer_vs_zero0"] = r["optimizer_mib"] / base
            print(f"ZeRO-{r['zero']} dp=2: Adam state/rank {r['optimizer_mib']:.2f} MiB "
                  f"({r['optimizer_vs_zero0']:.2f}x ZeRO-0), fp32 master partition {r['fp32_master_mib']:.2f} MiB, peak RSS {r['peak_rss_mib']:.0f} MiB, step {r['step_ms']:.0f} ms")
        res["zero_dp2"] = rows
    if "tp" in parts:
        t1 = _spawn(_tp, 1, 1, max(3, args.steps // 2))[0]
        t2 = _spawn(_tp, 2, 2, max(3, args.steps // 2))[0]
        res["tp"] = {"tp1": t1, "tp2": t2, "ratio_tp2_over_tp1": t2["step_ms"] / t1["step_ms"]}
        print(f"tp=1 (1 proc x 2 threads): {t1['step_ms']:.1f} ms/step; tp=2 (2 procs x 1 thread): "
              f"{t2['step_ms']:.1f} ms/step; ratio {t2['step_ms'] / t1['step_ms']:.2f}")
    Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
