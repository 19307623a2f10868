"""Telling a lost or hung peer apart from other errors, and showing an error as one short line."""
from __future__ import annotations

import os
import re

import torch.distributed as dist

_C10D = os.path.join("torch", "distributed", "distributed_c10d.py")


def from_collective(e: BaseException) -> bool:
    """True when the error was raised inside a torch.distributed collective (a peer died or hung)."""
    if isinstance(e, dist.DistError):
        return True
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(_C10D):
            return True
        tb = tb.tb_next
    return False


def first_line(e: BaseException) -> str:
    """The first line of an error, without gloo's "[.../pair.cc:537]" source location and boilerplate."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).lstrip(". ")  # "[enforce fail at ...] . unexpected pos"
    return line.split(". This is typically")[0][:200]
