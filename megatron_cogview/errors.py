"""The shared leaf every package may import: the user-error base class and the one 'user error -> exit 2' wrapper.

Standard library only (tests/test_import_layers.py checks it), so importing it never pulls in torch or a layer.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
    """A mistake the user can fix (bad flag, file, data or checkpoint); the message names the problem and the fix."""


# Missing or unreadable paths the user named are user errors too (one line, not a traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
)


def exit_on_user_error(prog: str | Callable[[], str], body: Callable[[], int | None]) -> int:
    """Run body; a user error prints `PROG: error: MESSAGE` on one line to stderr and gives exit status 2."""
    try:
        return int(body() or 0)
    except USER_ERRORS as e:
        print(f"{prog() if callable(prog) else prog}: error: {e}", file=sys.stderr)
        return 2
