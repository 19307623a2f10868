"""Attention masks (True = may attend)."""
from __future__ import annotations

import torch


def causal_mask(q_len: int, kv_len: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [q_len, kv_len]: query i (at absolute position kv_len - q_len + i) sees keys <= its position."""
    kv_len = q_len if kv_len is None else kv_len
    if kv_len < q_len:
        raise ValueError(f"kv_len={kv_len} must be >= q_len={q_len}")
    offset = kv_len - q_len
    q = torch.arange(q_len, device=device).unsqueeze(1) + offset
    k = torch.arange(kv_len, device=device).unsqueeze(0)
    return k <= q

