"""The one exception type for mistakes a user of the tokenizers can make."""

from __future__ import annotations

from megatron_cogview.errors import UserError


class TokenizationError(UserError):
    """A user error (missing file, bad argument, incompatible sizes): one line naming the problem and the fix."""
