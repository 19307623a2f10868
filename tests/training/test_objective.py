"""megatron_cogview/training/objective.py against closed-form references written out here, label by label.

The reference is the weighting the loader applied before the objective existed (float32 per label: [PAD] 0,
text txt_loss_scale, image codes and other commands 1), and the loop's normalisation and logged text/image
split; the objective's weights, loss and log sums must equal it bit for bit, through the model's fused loss.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_cogview.config import model_preset
from megatron_cogview.model import CogViewModel
from megatron_cogview.parallel import ParallelState
from megatron_cogview.training.objective import Objective
from tokenization.layout import TokenLayout

LAYOUT = TokenLayout(num_image_tokens=64, num_text_tokens=40)


def _kind(i: int) -> str:
    if i == LAYOUT.pad_id:
        return "pad"
    if 64 <= i < 104:
        return "text"
    return "image" if 0 <= i < 64 else "command"


def reference_weight(label: int, txt: float, low: float = 1.0, after_target: bool = False) -> np.float32:
    """The weight of one label, written out from the rules."""
    kind = _kind(label)
    if kind == "pad":
        return np.float32(0.0)
    if after_target:
        return np.float32(1.0)
    return np.float32(txt) if kind == "text" else np.float32(low)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, every label kind: text, commands ([ROI1], [BASE], [BOI1], [EOI1]), codes, then [PAD]."""
    c = LAYOUT.command
    rows = [
        [c("ROI1"), 64, 70, 103, c("BASE"), c("BOI1"), 0, 5, 63, 17, c("EOI1"), LAYOUT.pad_id, LAYOUT.pad_id],
        [c("ROI1"), 99, c("BASE"), c("BOI1"), 1, 2, 3, 4, c("EOI1"), LAYOUT.pad_id, LAYOUT.pad_id, LAYOUT.pad_id,
         LAYOUT.pad_id],
    ]
    seq = torch.tensor(rows, dtype=torch.int64)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


@pytest.mark.parametrize("txt", [0.0, 0.5, 1.0, 0.1])
def test_weights_loss_and_log_sums_equal_the_reference(txt: float) -> None:
    tokens, labels = _batch()
    objective = Objective.from_layout(LAYOUT, txt)
    ref = torch.from_numpy(np.array([[reference_weight(int(x), txt) for x in row] for row in labels]))
    weights = objective.weights(tokens, labels)
    assert weights.dtype == torch.float32 and torch.equal(weights, ref)
    kinds = [[_kind(int(x)) for x in row] for row in labels]
    assert {k for row in kinds for k in row} == {"pad", "text", "image", "command"}
    assert weights[labels == LAYOUT.command("EOI1")].tolist() == [1.0, 1.0]  # commands count on the image side

    torch.manual_seed(0)
    model = CogViewModel(model_preset("tiny", vocab_size=LAYOUT.vocab_size), ParallelState.single())
    positions = torch.arange(tokens.size(1)).expand_as(tokens)
    out = model(tokens, positions, labels=labels, loss_weights=weights)
    old = model(tokens, positions, labels=labels, loss_weights=ref)
    assert torch.equal(out.total, old.total) and torch.equal(out.per_token, old.per_token)
    ref_loss = old.total / ref.float().sum().clamp_min(1e-8)
    assert torch.equal(objective.normalise(out.total, weights), ref_loss)
    text = torch.tensor([[k == "text" for k in row] for row in kinds]) & (ref > 0)
    image = torch.tensor([[k in ("image", "command") for k in row] for row in kinds]) & (ref > 0)
    ce = old.per_token.detach()
    ref_sums = torch.stack([old.total.float(), ref.sum(), (ce * text).sum(), text.sum().float(), (ce * image).sum(),
                            image.sum().float()])
    assert torch.equal(objective.log_sums(out.total, out.per_token, labels, weights), ref_sums)
    assert int(ref_sums[3]) == (4 if txt > 0 else 0) and int(ref_sums[5]) == 14


def test_padding_only_batch_divides_by_the_floor() -> None:
    labels = torch.full((1, 4), LAYOUT.pad_id)
    weights = Objective.from_layout(LAYOUT, 1.0).weights(labels, labels)
    assert weights.sum() == 0 and Objective.normalise(torch.tensor(0.0), weights) == 0


@pytest.mark.parametrize("txt,low", [(0.0, 0.0), (0.25, 0.5), (1.0, 1.0)])
def test_target_token_weighs_the_target_segment_one(txt: float, low: float) -> None:
    """Super-resolution: labels from the first [BOI2] input on weigh 1, text and the rest before it txt / low."""
    c = LAYOUT.command
    seq = torch.tensor([[c("ROI1"), 64, 65, c("BASE"), c("BOI1"), 1, 2, c("EOI1"), c("ROI2"), c("BASE"), c("BOI2"),
                         10, 11, 12, c("EOI2"), LAYOUT.pad_id, LAYOUT.pad_id]])
    tokens, labels = seq[:, :-1], seq[:, 1:]
    boi2 = int((tokens[0] == c("BOI2")).nonzero()[0])
    objective = Objective.from_layout(LAYOUT, txt, context_scale=low, target_token=c("BOI2"))
    ref = [reference_weight(int(x), txt, low, after_target=i >= boi2) for i, x in enumerate(labels[0])]
    assert torch.equal(objective.weights(tokens, labels), torch.from_numpy(np.array([ref])))
    assert objective.weights(tokens, labels)[0, boi2:].tolist() == [1.0] * 4 + [0.0, 0.0]  # 3 codes, [EOI2], pads


def test_logged_losses_read_the_named_slots() -> None:
    from megatron_cogview.training.objective import LogSlot, logged_losses

    sums = torch.zeros(len(LogSlot), dtype=torch.float64)
    sums[LogSlot.WEIGHTED_LOSS], sums[LogSlot.WEIGHT] = 6.0, 4.0
    sums[LogSlot.TEXT_CE], sums[LogSlot.TEXT_COUNT] = 3.0, 2.0
    assert [int(s) for s in LogSlot] == list(range(6))  # log_sums stacks the values in this order
    losses = logged_losses(sums)
    assert losses["loss"] == 1.5 and losses["text_loss"] == 1.5
    assert losses["image_loss"] is None  # no image label counted
    from megatron_cogview.training.logger import _loss

    assert _loss(losses["image_loss"]) == "n/a" and _loss(losses["loss"]) == "1.5000"
