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

from megatron_cogview.allocator import loaded_allocator, reexec_with_tcmalloc  # noqa: E402

__all__ = ["loaded_allocator", "use_fair_allocator"]


def use_fair_allocator() -> str:
    """Re-exec under tcmalloc if available and not yet loaded (BENCH_ALLOCATOR=system or COGVIEW_ALLOCATOR=system
    opt out); return the allocator's name."""
    if os.environ.get("BENCH_ALLOCATOR") != "system":
        reexec_with_tcmalloc()  # returns only when nothing is to be done
    return loaded_allocator()
