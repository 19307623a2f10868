"""Preprocessing split into parts: which part this process is (launcher / SLURM / flags), and joining manifests.

A part is a disjoint, deterministic share of the input files (input i goes to part i % num_parts), so parts never
read the same tar. Each part writes its own shards (PREFIX-pPPPPP-NNNNNN.tar) and a part manifest under
OUT/.parts/; dataset.json is written once every part's manifest is there (by whichever part finishes last, by rank
0 of a launcher, or by `cogview data-merge`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .errors import DataError
from .remote import expand, is_url
from .shards import MANIFEST_NAME, Manifest, ShardInfo

PARTS_DIR = ".parts"


@dataclass(frozen=True)
class Part:
    """This process's share: part `index` of `count`; `launched` when a launcher set it; `local_rank` for --device."""

    index: int = 0
    count: int = 1
    launched: bool = False
    local_rank: int | None = None


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise DataError(f"environment variable {name}={value!r} is not an integer; fix the launcher settings") from None


def resolve_part(num_parts: int | None, part: int | None, env: Mapping[str, str] = os.environ) -> Part:
    """--num-parts/--part if given, else torchrun's / deepspeed's RANK+WORLD_SIZE, else SLURM_PROCID+SLURM_NTASKS."""
    local = _int_env(env, "LOCAL_RANK")
    local = _int_env(env, "SLURM_LOCALID") if local is None else local
    if num_parts is not None or part is not None:
        if num_parts is None or part is None:
            raise DataError("pass --num-parts and --part together (e.g. --num-parts 8 --part 3)")
        found = Part(part, num_parts, False, local)
    elif _int_env(env, "WORLD_SIZE") is not None:
        found = Part(_int_env(env, "RANK") or 0, _int_env(env, "WORLD_SIZE") or 1, True, local)
    elif _int_env(env, "SLURM_NTASKS") is not None and _int_env(env, "SLURM_PROCID") is not None:
        found = Part(_int_env(env, "SLURM_PROCID") or 0, _int_env(env, "SLURM_NTASKS") or 1, True, local)
    else:
        return Part(0, 1, False, local)
    if found.count < 1 or not 0 <= found.index < found.count:
        raise DataError(f"part {found.index} of {found.count} is out of range; use 0 <= --part < --num-parts")
    return found


def part_device(device: str, part: Part) -> str:
    """`cuda` becomes `cuda:LOCAL_RANK` under a launcher, so each rank encodes on its own GPU."""
    return f"cuda:{part.local_rank}" if device == "cuda" and part.local_rank is not None else device


def share(units: Sequence[str], part: Part) -> list[str]:
    """The input files of one part: every num_parts-th, starting at its index (deterministic, disjoint)."""
    return list(units[part.index :: part.count])


def part_prefix(prefix: str, part: Part) -> str:
    """Shard name prefix of a part (unchanged for a single part)."""
    return prefix if part.count == 1 else f"{prefix}-p{part.index:05d}"


def part_file(out: str, part: Part) -> str:
    """Where a finished part's manifest is kept."""
    return os.path.join(out, PARTS_DIR, f"part-{part.index:05d}-of-{part.count:05d}.json")


def other_splits(out: str, count: int, progress_dir: str) -> list[str]:
    """Traces in `out` of a run split into another number of parts (mixing them would overwrite shards)."""
    found = []
    for folder in (os.path.join(out, PARTS_DIR), os.path.join(out, progress_dir)):
        names = os.listdir(folder) if os.path.isdir(folder) else []
        found += [os.path.join(folder, n) for n in names
                  if "-of-" in n and not n.removesuffix(".json").endswith(f"-of-{count:05d}")]
    if count > 1 and os.path.exists(os.path.join(out, progress_dir, "settings.json")):
        found.append(os.path.join(out, progress_dir, "settings.json"))  # an unfinished single-process run
    return found


def write_part(out: str, part: Part, manifest: Manifest) -> None:
    """Record a finished part (atomically)."""
    path = part_file(out, part)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.to_dict(), f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def read_parts(out: str, count: int) -> list[Manifest] | None:
    """The manifests of all `count` parts in `out`, or None while some are missing."""
    paths = [part_file(out, Part(i, count)) for i in range(count)]
    if not all(os.path.exists(p) for p in paths):
        return None
    manifests = [Manifest.load(p) for p in paths]
    for m in manifests:
        m.root = os.path.abspath(out)  # a part's shards are named relative to the output folder
    return manifests


def join(manifests: Sequence[Manifest], out: str) -> Manifest:
    """One manifest listing every shard of `manifests` (paths relative to `out`, URLs as they are), stats summed."""
    first = manifests[0]
    shards: list[ShardInfo] = []
    for m in manifests:
        first.check_same_tokens(m)
        if (m.task, m.dtype) != (first.task, first.dtype):
            raise DataError(f"datasets {first.root} and {m.root} hold different tasks or dtypes; join like with like")
        for location, shard in zip(m.shard_paths(), m.shards):
            name = location if is_url(location) else os.path.relpath(location, os.path.abspath(out))
            shards.append(ShardInfo(name, shard.samples))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"shard {dup} is listed twice; join each dataset (or part) once")
    stats: dict = {}
    for m in manifests:
        for k, v in m.stats.items():
            if isinstance(v, (int, float)):
                stats[k] = max(stats.get(k, 0), v) if k == "seconds" else stats.get(k, 0) + v
    settings = first.settings if all(m.settings == first.settings for m in manifests) else \
        {"joined": [m.settings for m in manifests]}
    return Manifest(first.task, first.seq_len, first.dtype, first.layout, first.layout_fingerprint,
                    first.text_tokenizer_fingerprint, first.image_tokenizer_fingerprint, shards, stats, settings, os.path.abspath(out))


def finish_parts(out: str, count: int, wait: bool, log: Callable[[str], None], poll: float = 2.0) -> Manifest | None:
    """Write dataset.json once every part is done; with `wait`, poll until they are (rank 0 of a launcher)."""
    announced = False
    while True:
        manifests = read_parts(out, count)
        if manifests is not None:
            manifest = join(manifests, out)
            manifest.save(out)
            return manifest
        if not wait:
            return None
        if not announced:
            log(f"waiting for the other parts of {out} to finish (dataset.json is written when all {count} are done)")
            announced = True
        time.sleep(poll)


def merge(out: str, datasets: Sequence[str], shard_urls: str | None, log: Callable[[str], None]) -> Manifest:
    """`cogview data-merge`: join datasets (or the parts in OUT/.parts) into OUT/dataset.json, optionally by URL."""
    if datasets:
        manifests = [Manifest.load(d) for d in datasets]
    else:
        found = sorted(os.listdir(os.path.join(out, PARTS_DIR))) if os.path.isdir(os.path.join(out, PARTS_DIR)) else []
        found = [f for f in found if f.endswith(".json")]
        if not found:
            raise DataError(f"{out} has no finished parts in {PARTS_DIR}/; pass the dataset folders to merge")
        count = int(found[0].rsplit("-of-", 1)[1].split(".")[0])
        manifests = read_parts(out, count) or []
        if not manifests:
            missing = [i for i in range(count) if not os.path.exists(part_file(out, Part(i, count)))]
            raise DataError(f"parts {missing} of {count} in {out} are not finished; re-run them (they resume)")
    os.makedirs(out, exist_ok=True)
    manifest = join(manifests, out)
    if shard_urls is not None:
        urls = expand(shard_urls)
        if len(urls) != len(manifest.shards):
            raise DataError(f"--shard-urls expands to {len(urls)} location(s) but the data has "
                            f"{len(manifest.shards)} shard(s); give one URL per shard, in the order of the joined "
                            "dataset.json (each dataset's or part's shards in turn)")
        manifest.shards = [ShardInfo(u, s.samples) for u, s in zip(urls, manifest.shards)]
    manifest.save(out)
    log(f"data-merge: {manifest.num_samples} samples in {len(manifest.shards)} shard(s) -> "
        f"{os.path.join(out, MANIFEST_NAME)}")
    return manifest
