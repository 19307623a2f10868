"""Batches for the training loop: shifted tokens/labels and position ids (loss weights are the objective's,
megatron_cogview/training/objective.py, computed on the device from the labels)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .shards import TokenSample


def collate(samples: Sequence[TokenSample]) -> dict[str, object]:
    """Stack samples into the batch dict: tokens/labels/position_ids int64 [b, s-1], and the sample keys."""
    seq = np.stack([s.tokens for s in samples])  # [b, s]
    pos = np.stack([s.position_ids for s in samples])  # [b, s]
    return {
        "tokens": torch.from_numpy(np.ascontiguousarray(seq[:, :-1])),
        "labels": torch.from_numpy(np.ascontiguousarray(seq[:, 1:])),
        "position_ids": torch.from_numpy(np.ascontiguousarray(pos[:, :-1])),
        "keys": [s.key for s in samples],
    }
