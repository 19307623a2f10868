"""The one exception type for mistakes a user of the tokenizers can make."""

from __future__ import annotations


class TokenizationError(ValueError):
    """A user error (missing file, bad argument, incompatible sizes): one line naming the problem and the fix."""
