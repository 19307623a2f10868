"""The training objective in one place: per-label loss weights, their normalisation, and the text/image split
of the logged loss.

Batches carry only tokens, labels and position ids; the weights are derived here, on the batch's device, from
the labels and the id ranges of the token layout. By label:

- [PAD]: 0 (never learned);
- text pieces: `txt_loss_scale`;
- image codes and the other command tokens ([BOI1], [EOI1], [ROI2], ...): 1 (`context_scale`). The commands
  mark sequence structure and count on the image side: the model must learn where an image starts and ends
  whatever the text weight is.

A task may name a `target_token` (super-resolution: [BOI2]): labels from the first such input token on weigh 1
(the part inference asks for), and the rules above (with `context_scale` for non-text labels) apply only
before it. The loss of a micro-batch is the weighted sum of per-label cross-entropies divided by the sum of
the weights; the logged text and image losses are unweighted means over the labels of each kind that count.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import torch

MIN_WEIGHT_SUM = 1e-8  # a batch of padding only divides by this instead of 0


class LogSlot(IntEnum):
    """The slots of the vector Objective.log_sums returns (summed over steps and ranks until a log line)."""

    WEIGHTED_LOSS = 0  # sum of weight x cross-entropy
    WEIGHT = 1  # sum of the weights
    TEXT_CE = 2  # cross-entropy sum over the counted text labels
    TEXT_COUNT = 3
    IMAGE_CE = 4  # cross-entropy sum over the other counted labels
    IMAGE_COUNT = 5


def logged_losses(sums: torch.Tensor) -> dict[str, float | None]:
    """loss, text_loss and image_loss of summed log_sums vectors (host tensor). None where no label of that kind
    counted (e.g. text at weight 0 in super-resolution): the log line says n/a, not a nan that reads as divergence."""
    def mean(total: LogSlot, count: LogSlot) -> float | None:
        return float(sums[total] / sums[count]) if sums[count] > 0 else None
    return {"loss": mean(LogSlot.WEIGHTED_LOSS, LogSlot.WEIGHT), "text_loss": mean(LogSlot.TEXT_CE, LogSlot.TEXT_COUNT),
            "image_loss": mean(LogSlot.IMAGE_CE, LogSlot.IMAGE_COUNT)}


class LabelRanges(Protocol):
    """The id ranges the objective reads (tokenization.layout.TokenLayout has them)."""

    @property
    def text_offset(self) -> int: ...
    @property
    def command_offset(self) -> int: ...
    @property
    def pad_id(self) -> int: ...


@dataclass(frozen=True)
class Objective:
    """Loss weights by label, normalisation and the logged text/image split (see the module doc)."""

    text_start: int  # first text-piece id
    text_end: int  # one past the last text-piece id
    pad_id: int
    txt_loss_scale: float = 1.0
    context_scale: float = 1.0  # weight of image-code and command labels (before target_token, if any)
    target_token: int | None = None  # labels from the first input token with this id on weigh 1

    @classmethod
    def from_layout(cls, layout: LabelRanges, txt_loss_scale: float = 1.0, context_scale: float = 1.0,
                    target_token: int | None = None) -> "Objective":
        """The objective of a token layout."""
        return cls(layout.text_offset, layout.command_offset, layout.pad_id, txt_loss_scale, context_scale,
                   target_token)

    def text_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """bool [b, s-1]: the label is a text piece."""
        return (labels >= self.text_start) & (labels < self.text_end)

    def _target_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """bool [b, s-1]: the label is predicted at or after the row's first target token (a row without one:
        every label; the task's sample transform refuses such rows)."""
        assert self.target_token is not None
        start = (tokens == self.target_token).int().argmax(dim=1, keepdim=True)  # [b, 1]
        return torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0) >= start

    def weights(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float32 [b, s-1] loss weights of the labels (on the labels' device)."""
        is_text = self.text_mask(labels)
        weights = torch.full(labels.shape, self.context_scale, dtype=torch.float32, device=labels.device)
        weights = weights.masked_fill(is_text, self.txt_loss_scale)
        if self.target_token is not None:
            weights = weights.masked_fill(self._target_mask(tokens), 1.0)
        return weights.masked_fill(labels == self.pad_id, 0.0)

    @staticmethod
    def normalise(total: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss: weighted cross-entropy sum / weight sum."""
        return total / weights.float().sum().clamp_min(MIN_WEIGHT_SUM)

    def log_sums(self, total: torch.Tensor, per_token: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        """float32 [len(LogSlot)], one value per LogSlot (a label counts when its weight is > 0; "image" is every
        counted label that is not text)."""
        is_text = self.text_mask(labels)
        counted = weights > 0
        text, image = is_text & counted, ~is_text & counted
        ce = per_token.detach()
        slots = {
            LogSlot.WEIGHTED_LOSS: total.detach().float(), LogSlot.WEIGHT: weights.float().sum(),
            LogSlot.TEXT_CE: (ce * text).sum(), LogSlot.TEXT_COUNT: text.sum().float(),
            LogSlot.IMAGE_CE: (ce * image).sum(), LogSlot.IMAGE_COUNT: image.sum().float(),
        }
        return torch.stack([slots[s] for s in LogSlot])
