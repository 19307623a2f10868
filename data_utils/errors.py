"""Errors a user of data_utils can cause (bad input, mismatched data, missing shards)."""
from __future__ import annotations

from megatron_cogview.errors import UserError


class DataError(UserError):
    """A data problem the user can fix; the message names the problem and the fix in one line."""
