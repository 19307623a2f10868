"""Progress bars that only appear when stderr is an interactive terminal."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr, disabled unless stderr is a TTY (or `enabled` forces it)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, file=sys.stderr, dynamic_ncols=True)
