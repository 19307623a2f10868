"""Run a function on N spawned CPU processes joined by gloo on 127.0.0.1, failing fast."""
from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(fn: Callable[..., Any], rank: int, world: int, store: str, args: tuple, errors: Any) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        fn(rank, world, *args)
        dist.barrier()
    except BaseException:  # report every failure, including assertion errors, to the parent
        errors.put((rank, traceback.format_exc()))
        raise SystemExit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 180.0) -> None:
    """Call fn(rank, world_size, *args) in world_size processes; raise on the first failure or timeout."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_worker, args=(fn, r, world_size, store, args, errors), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        failure: str | None = None
        while any(p.is_alive() for p in procs):
            try:
                rank, tb = errors.get(timeout=0.2)
                failure = f"rank {rank} failed:\n{tb}"
                break
            except queue.Empty:
                pass
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout:.0f} s"
                break
        if failure is None:
            try:
                rank, tb = errors.get(timeout=0.5)
                failure = f"rank {rank} failed:\n{tb}"
            except queue.Empty:
                pass
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=10)
        codes = [p.exitcode for p in procs]
        if failure is None and any(c != 0 for c in codes):
            failure = f"exit codes {codes}"
        if failure:
            raise AssertionError(f"distributed run of {fn.__name__} (world {world_size}): {failure}")
