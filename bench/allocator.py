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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_cogview.allocator import loaded_allocator, with_tcmalloc  # noqa: E402

__all__ = ["loaded_allocator", "use_fair_allocator"]
_GUARD = "BENCH_ALLOCATOR_REEXEC"


def use_fair_allocator() -> str:
    """Re-exec under tcmalloc if available and not yet loaded (BENCH_ALLOCATOR=system or COGVIEW_ALLOCATOR=system
    opt out); return the allocator's name."""
    current = loaded_allocator()
    if current != "glibc malloc" or os.environ.get("BENCH_ALLOCATOR") == "system" or os.environ.get(_GUARD):
        return current
    env = with_tcmalloc(os.environ)
    if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):
        return current  # no tcmalloc on this system
    env[_GUARD] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return current  # not reached
