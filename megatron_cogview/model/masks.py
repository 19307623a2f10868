"""Attention masks, position ids and modality logit masks (True = may attend / allowed)."""
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


def prefix_mask(prefix_len: torch.Tensor | int, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [b, 1, s, s] (or [s, s]): bidirectional inside the first prefix_len tokens, causal after."""
    base = causal_mask(seq_len, device=device)
    k = torch.arange(seq_len, device=device)
    if isinstance(prefix_len, int):
        return base | (k < prefix_len).unsqueeze(0)
    in_prefix = k.unsqueeze(0) < prefix_len.to(device).view(-1, 1)  # [b, s] key inside its row's prefix
    return (base.unsqueeze(0) | in_prefix.unsqueeze(1)).unsqueeze(1)


def position_ids(tokens: torch.Tensor, restart_token: int | None = None, offset: int = 0) -> torch.Tensor:
    """Long [b, s]: 0, 1, 2, ... restarting at 0 at each `restart_token` (e.g. [ROI2] in super-resolution)."""
    b, s = tokens.shape
    pos = torch.arange(offset, offset + s, device=tokens.device).expand(b, s)
    if restart_token is None:
        return pos.contiguous()
    idx = torch.arange(s, device=tokens.device).expand(b, s)
    starts = torch.where(tokens == restart_token, idx, torch.zeros_like(idx))
    last_start = torch.cummax(starts, dim=1).values  # index of the latest restart token so far (0 if none)
    return torch.where(last_start > 0, idx - last_start, pos)


def id_range_mask(vocab_size: int, ranges: list[tuple[int, int]], device: torch.device | str | None = None) -> torch.Tensor:
    """Bool [vocab_size]: True for ids inside any [start, end) range (e.g. image codes inside [BOI]..[EOI])."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    for start, end in ranges:
        if not 0 <= start <= end <= vocab_size:
            raise ValueError(f"id range [{start}, {end}) is outside the vocabulary of {vocab_size}")
        allowed[start:end] = True
    return allowed
