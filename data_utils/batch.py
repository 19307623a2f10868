"""Batches for the training loop: shifted tokens/labels, position ids and per-label loss weights."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tokenization.layout import TokenLayout

from .shards import TokenSample


def loss_weights(labels: np.ndarray, layout: TokenLayout, txt_loss_scale: float = 1.0) -> np.ndarray:
    """float32 weights by LABEL type: 0 for [PAD], txt_loss_scale for text, 1 for image codes and other commands."""
    # Command labels other than [PAD] ([BOI1], [EOI1], [ROI2], ...) mark sequence structure and count on the
    # image side (weight 1): the model must learn where an image starts and ends whatever the text weight is.
    return _loss_weights(labels, layout.is_text(labels), layout.pad_id, txt_loss_scale)


def _loss_weights(labels: np.ndarray, is_text: np.ndarray, pad_id: int, txt_loss_scale: float) -> np.ndarray:
    """loss_weights given the text mask of the labels."""
    weights = np.where(is_text, np.float32(txt_loss_scale), np.float32(1.0))  # float32
    weights[labels == pad_id] = 0.0
    return weights


def collate(samples: Sequence[TokenSample], layout: TokenLayout, txt_loss_scale: float = 1.0) -> dict[str, object]:
    """Stack samples into the batch dict: tokens/labels/position_ids int64 [b, s-1], weights, masks, keys."""
    seq = np.stack([s.tokens for s in samples])  # [b, s]
    pos = np.stack([s.position_ids for s in samples])  # [b, s]
    labels = np.ascontiguousarray(seq[:, 1:])  # [b, s-1]
    is_text = np.asarray(layout.is_text(labels), dtype=bool)  # [b, s-1]
    return {
        "tokens": torch.from_numpy(np.ascontiguousarray(seq[:, :-1])),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(np.ascontiguousarray(pos[:, :-1])),
        "loss_weights": torch.from_numpy(_loss_weights(labels, is_text, layout.pad_id, txt_loss_scale)),
        "text_label_mask": torch.from_numpy(is_text),
        "keys": [s.key for s in samples],
    }
