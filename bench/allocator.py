"""Fair allocator for benches that run ours beside a peer: re-exec the bench under tcmalloc when the system has it.

glibc's malloc penalises whichever side allocates more (many small tensors, fragmented arenas), so a bench that
compares two implementations in one process must give both the same allocator. `use_fair_allocator()` at the
top of a bench's main() re-executes the same command with LD_PRELOAD of tcmalloc (found in the usual system
places, e.g. Debian's libtcmalloc-minimal4) unless it is already loaded; BENCH_ALLOCATOR=system skips that.
Both sides live in the one process, so they always share whichever allocator it has.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)
_GUARD = "BENCH_ALLOCATOR_REEXEC"


def find_tcmalloc() -> str | None:
    """Path of a system tcmalloc shared library, or None."""
    return next((p for p in CANDIDATES if Path(p).is_file()), None)


def loaded_allocator() -> str:
    """Which allocator this process runs with: 'tcmalloc (<path>)' or 'glibc malloc'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    libs = sorted({line.split()[-1] for line in maps.splitlines() if "tcmalloc" in line or "jemalloc" in line})
    return f"{'tcmalloc' if any('tcmalloc' in lib for lib in libs) else 'jemalloc'} ({libs[0]})" if libs else "glibc malloc"


def use_fair_allocator() -> str:
    """Re-exec under tcmalloc if available and not yet loaded (BENCH_ALLOCATOR=system opts out); return its name."""
    current = loaded_allocator()
    if current != "glibc malloc" or os.environ.get("BENCH_ALLOCATOR") == "system" or os.environ.get(_GUARD):
        return current
    lib = find_tcmalloc()
    if lib is None:
        return current
    preload = " ".join(x for x in (lib, os.environ.get("LD_PRELOAD", "")) if x)
    env = {**os.environ, "LD_PRELOAD": preload, _GUARD: "1"}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return current  # not reached
