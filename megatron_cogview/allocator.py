"""tcmalloc for CPU training: glibc's malloc is slow with training's many large, short-lived tensors.

On a 2-core VM the demo's training step runs faster with tcmalloc preloaded (README, "The laptop demo"), and any
benchmark that puts our code beside a peer in one process must give both the same allocator (bench/allocator.py).
tcmalloc cannot be loaded into a running process, so it reaches a program through LD_PRELOAD: `with_tcmalloc`
adds it to a child process's environment, `reexec_with_tcmalloc` restarts the current command under it. Both use
the system library (Debian/Ubuntu: `apt-get install libtcmalloc-minimal4`) when there is one and do nothing
otherwise; COGVIEW_ALLOCATOR=system keeps glibc's malloc. Standard library only: every layer may import this.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

CANDIDATES: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
OPT_OUT = "COGVIEW_ALLOCATOR"  # "system": never preload tcmalloc
_REEXEC_GUARD = "COGVIEW_ALLOCATOR_REEXEC"  # set in the restarted process: restart at most once


def find_tcmalloc(candidates: tuple[str, ...] | None = None) -> str | None:
    """Path of the first existing library of `candidates` (default CANDIDATES), or None."""
    return next((p for p in (CANDIDATES if candidates is None else candidates) if Path(p).is_file()), None)


def loaded_allocator() -> str:
    """Which allocator this process runs with: 'tcmalloc (<path>)', 'jemalloc (<path>)' or 'glibc malloc'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    libs = sorted({line.split()[-1] for line in maps.splitlines() if "tcmalloc" in line or "jemalloc" in line})
    return f"{'tcmalloc' if any('tcmalloc' in lib for lib in libs) else 'jemalloc'} ({libs[0]})" if libs else "glibc malloc"


def with_tcmalloc(env: Mapping[str, str], candidates: tuple[str, ...] | None = None) -> dict[str, str]:
    """A copy of `env` whose LD_PRELOAD starts with tcmalloc, when the system has it and env does not opt out."""
    out = dict(env)
    lib = find_tcmalloc(candidates)
    if lib is None or out.get(OPT_OUT) == "system":
        return out
    preload = out.get("LD_PRELOAD", "").split()
    if lib not in preload:
        out["LD_PRELOAD"] = " ".join([lib, *preload])
    return out


def reexec_with_tcmalloc() -> None:
    """Restart this command (same interpreter, same arguments) with tcmalloc preloaded; returns without doing
    anything when tcmalloc is already loaded or absent, on opt-out, or when this process is such a restart."""
    if os.environ.get(_REEXEC_GUARD) or loaded_allocator() != "glibc malloc":
        return
    env = with_tcmalloc(os.environ)
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return
    env[_REEXEC_GUARD] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
