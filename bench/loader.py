"""Data-loading speed: our StreamingLoader beside a plain int32 memmap and a plain webdataset pipeline, one run.

A synthetic token dataset (N sequences of 1089 tokens, default TokenLayout, uint16 .npy fields in tar shards of
1000) is written to a temp dir, plus the same tokens as one int32 memmap file (CogView's original format).
Each reader delivers batches of 32 as int64 torch tensors, in random order, with 0, 1 and 2 DataLoader workers:

  ours     StreamingLoader (shuffle buffer 1000, full batch dict: tokens/labels/position_ids/weights/masks/keys)
  memmap   random batches of rows gathered from np.memmap(int32) -> tokens/labels (map-style, batch per item)
  wds      webdataset.WebDataset(shards).shuffle(1000).decode() (.npy) .to_tuple(tokens) .batched(32) -> tokens/labels
  pipe     ours, with dataset.json naming each shard as `pipe:cat PATH` (the remote-shard path: webdataset's
           opener, spooled, strict tar reader), as object storage would be read with `pipe:aws s3 cp ... -`

Runs are interleaved (rep 1: every reader/worker setting, rep 2: ...); timing starts at the first batch (worker
start-up excluded) and covers one epoch. We print min and median samples/s over repeats (higher is better).
Then `cogview preprocess` images/s at 256 px with a CogView-default-shaped VQ-VAE (random init: speed only), in one
process (0 and 2 decoding workers) and as 2 torchrun ranks (one torch thread each; rate = images / slowest part).

    python bench/loader.py                       # ~4-5 minutes on 2 CPU cores
    python bench/loader.py --samples 4000 --repeats 1 --preprocess-images 16   # smoke run
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # fixed thread count for the loader part (before torch loads)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterable, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_utils.loader import build_loader  # noqa: E402
from data_utils.writer import TokenRecord, write_token_dataset  # noqa: E402
from tokenization.layout import TokenLayout  # noqa: E402

SEQ_LEN = 1089
BATCH = 32
SHUFFLE = 1000


def make_data(root: str, n: int, seed: int = 0) -> tuple[str, str]:
    """Write n CogView-shaped sequences as token shards and as an int32 memmap; returns (shard dir, memmap path)."""
    layout = TokenLayout()
    rng = np.random.default_rng(seed)
    cmd = layout.command
    mm_path = os.path.join(root, "tokens.int32")
    mm = np.lib.format.open_memmap(mm_path, mode="w+", dtype=np.int32, shape=(n, SEQ_LEN))

    def records() -> Iterator[TokenRecord]:
        for i in range(n):
            text_len = int(rng.integers(5, 40))
            text = rng.integers(layout.text_offset, layout.command_offset, text_len)
            codes = rng.integers(0, layout.num_image_tokens, 1024)
            seq = np.concatenate([[cmd("ROI1")], text, [cmd("BASE"), cmd("BOI1")], codes, [cmd("EOI1")]])
            seq = np.concatenate([seq, np.full(SEQ_LEN - len(seq), layout.pad_id)]).astype(np.int64)
            mm[i] = seq
            yield TokenRecord(f"s{i:07d}", seq, np.arange(SEQ_LEN), f"caption {i}", {"i": i})

    shards = os.path.join(root, "shards")
    write_token_dataset(shards, records(), layout=layout, seq_len=SEQ_LEN, samples_per_shard=1000)
    mm.flush()
    del mm
    return shards, mm_path


def ours(shards: str, workers: int) -> Iterable[dict]:
    """Our loader, one epoch."""
    return build_loader(shards, 0, 1, batch_size=BATCH, num_workers=workers, num_epochs=1, shuffle_buffer=SHUFFLE)


class _MemmapBatches(Dataset):
    """Item i = batch i of a seeded random permutation of the rows (CogView's original int32 file)."""

    def __init__(self, path: str, seed: int = 0) -> None:
        self.path = path
        n = np.load(path, mmap_mode="r").shape[0]
        self.order = np.random.default_rng(seed).permutation(n)
        self.mm = None

    def __len__(self) -> int:
        return len(self.order) // BATCH

    def __getitem__(self, i: int) -> dict:
        if self.mm is None:  # open lazily in each worker
            self.mm = np.load(self.path, mmap_mode="r")
        rows = np.asarray(self.mm[np.sort(self.order[i * BATCH : (i + 1) * BATCH])], dtype=np.int64)  # [b, s]
        return {"tokens": torch.from_numpy(np.ascontiguousarray(rows[:, :-1])),
                "labels": torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))}


def memmap(path: str, workers: int) -> Iterable[dict]:
    """Plain memmap reader through a DataLoader (batch per item)."""
    return DataLoader(_MemmapBatches(path), batch_size=None, shuffle=False, num_workers=workers,
                      prefetch_factor=2 if workers else None)


def piped(shards: str) -> str:
    """A dataset.json (in a sibling folder) that lists the same shards as `pipe:cat PATH` URLs."""
    from data_utils.shards import Manifest, ShardInfo

    m = Manifest.load(shards)
    m.shards = [ShardInfo(f"pipe:cat {p}", s.samples) for p, s in zip(m.shard_paths(), m.shards)]
    out = shards.rstrip("/") + "_pipe"
    os.makedirs(out, exist_ok=True)
    m.save(out)
    return out


def _wds_batch(sample: tuple) -> dict:
    tokens = torch.from_numpy(np.asarray(sample[0], dtype=np.int64))  # [b, s]
    return {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


def plain_wds(shards: str, workers: int) -> Iterable[dict]:
    """A plain webdataset pipeline with .npy decoding."""
    import webdataset as wds

    urls = sorted(str(p) for p in Path(shards).glob("*.tar"))
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(SHUFFLE).decode()
          .to_tuple("tokens.npy").batched(BATCH, partial=True).map(_wds_batch))
    return DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)


def time_epoch(loader: Iterable[dict]) -> tuple[float, int]:
    """Samples/s from the first batch to the end of one epoch, and the samples counted."""
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for batch in it:
        n += int(batch["tokens"].shape[0])
    return n / (time.perf_counter() - start), n


def bench_loaders(shards: str, mm_path: str, repeats: int, workers: list[int]) -> dict:
    """Interleaved repeats of every (reader, workers); min/median samples/s."""
    pipe_shards = piped(shards)
    readers: dict[str, Callable[[int], Iterable[dict]]] = {
        "ours": lambda w: ours(shards, w), "memmap_int32": lambda w: memmap(mm_path, w),
        "webdataset_npy": lambda w: plain_wds(shards, w), "ours_pipe_cat": lambda w: ours(pipe_shards, w),
    }
    runs: dict[str, list[float]] = {f"{r}/{w}": [] for r in readers for w in workers}
    for rep in range(repeats):
        for name, make in readers.items():
            for w in workers:
                rate, n = time_epoch(make(w))
                runs[f"{name}/{w}"].append(rate)
                print(f"  rep {rep}: {name:15s} workers={w}: {rate:9.0f} samples/s ({n} samples)", flush=True)
    out = {}
    for key, rates in runs.items():
        name, w = key.split("/")
        out.setdefault(name, {})[w] = {"min": round(min(rates)), "median": round(statistics.median(rates)),
                                       "runs": [round(r) for r in rates]}
    return out


def bench_preprocess(root: str, images: int, workers: list[int], threads: int) -> dict:
    """`cogview preprocess` images/s at 256 px (random-init default VQ-VAE, tiny SentencePiece)."""
    from data_utils.synth import write_synth
    from tokenization.text import train_text_tokenizer
    from tokenization.vqvae.config import VQVAEConfig
    from tokenization.vqvae.model import VQVAE
    from tokenization.vqvae.serialization import save_pretrained

    synth = os.path.join(root, "synth")
    write_synth(synth, images, image_size=256, seed=0, num_heldout=0)
    sp = train_text_tokenizer([os.path.join(synth, "captions.jsonl")], os.path.join(root, "sp"), 64,
                              caption_column="caption")
    torch.manual_seed(0)
    config = VQVAEConfig()  # CogView default shape: 256 px, 8x downsampling -> 32x32 codes of 8192
    save_pretrained(VQVAE(config), os.path.join(root, "vq"))
    cli = str(Path(sys.executable).with_name("cogview"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out: dict = {"images": images, "torch_threads": threads, "vqvae": config.to_dict(), "workers": {}}
    for w in workers:
        dst = os.path.join(root, f"pre{w}")
        cmd = [cli, "preprocess", os.path.join(synth, "captions.jsonl"), "--text-tokenizer", str(sp),
               "--image-tokenizer", os.path.join(root, "vq"), "--out", dst, "--workers", str(w),
               "--batch-size", "32", "--samples-per-shard", "64"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        stats = json.loads(Path(dst, "dataset.json").read_text())["stats"]
        rate = stats["written"] / stats["seconds"]
        out["workers"][str(w)] = {"images_per_s": round(rate, 2), "seconds": stats["seconds"],
                                  "wall_with_startup_s": round(wall, 2), "written": stats["written"]}
        print(f"  preprocess workers={w}: {rate:.2f} images/s ({stats['written']} images, {stats['seconds']} s)",
              flush=True)
    dst = os.path.join(root, "pre_ranks2")  # two launcher ranks, each its share of the input files
    lists = _split_jsonl(os.path.join(synth, "captions.jsonl"), 8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "megatron_cogview.cli", "preprocess", *lists, "--text-tokenizer", str(sp), "--image-tokenizer",
           os.path.join(root, "vq"), "--out", dst, "--batch-size", "32", "--samples-per-shard", "64"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stats = json.loads(Path(dst, "dataset.json").read_text())["stats"]
    rate = stats["written"] / stats["seconds"]
    out["ranks2"] = {"images_per_s": round(rate, 2), "per_rank_images_per_s": round(rate / 2, 2),
                     "slowest_part_seconds": stats["seconds"], "wall_with_startup_s": round(wall, 2),
                     "written": stats["written"]}
    print(f"  preprocess 2 ranks: {rate:.2f} images/s ({rate / 2:.2f} per rank)", flush=True)
    return out


def _split_jsonl(path: str, parts: int) -> list[str]:
    """The lines of a JSONL file dealt into `parts` files beside it (the units ranks split)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    out = []
    for i in range(parts):
        part = Path(path).with_name(f"part{i}.jsonl")
        part.write_text("".join(lines[i::parts]), encoding="utf-8")
        out.append(str(part))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--preprocess-images", type=int, default=64, help="0 skips the preprocessing part")
    p.add_argument("--preprocess-threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "loader_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    workers = [int(w) for w in args.workers.split(",")]
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]},
        "setup": {"samples": args.samples, "seq_len": SEQ_LEN, "batch_size": BATCH, "shuffle_buffer": SHUFFLE,
                  "repeats": args.repeats, "samples_per_shard": 1000, "timing": "first batch to end of epoch"},
    }
    with tempfile.TemporaryDirectory(prefix="cogview-bench-") as root:
        start = time.perf_counter()
        shards, mm_path = make_data(root, args.samples)
        print(f"data: {args.samples} x {SEQ_LEN} tokens written in {time.perf_counter() - start:.1f} s", flush=True)
        result["loaders_samples_per_s"] = bench_loaders(shards, mm_path, args.repeats, workers)
        if args.preprocess_images:
            result["preprocess_256px"] = bench_preprocess(root, args.preprocess_images, [0, 2],
                                                          args.preprocess_threads)
    print("\nsamples/s (min / median over repeats; higher is better)")
    print(f"{'reader':16s}" + "".join(f"{'workers=' + str(w):>22s}" for w in workers))
    for name, by_w in result["loaders_samples_per_s"].items():
        print(f"{name:16s}" + "".join(f"{by_w[str(w)]['min']:>12d} / {by_w[str(w)]['median']:<7d}" for w in workers))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
