"""Fine-tune the image-to-text (caption) model used by post-selection and captioning.

It reads the SAME text-to-image shards as pre-training and reorders every sequence on the fly,
`[ROI1] text [BASE] [BOI1] image [EOI1]` -> `[BASE] [BOI1] image [EOI1] [ROI1] text`, so post-selection
works from the data a user already has. Typically started from the text-to-image checkpoint:

    python -m finetune.caption_model --finetune-from ckpt/t2i --train-data shards/t2i --save ckpt/caption \\
        --train-iters 2000 [any pretrain_gpt2.py flag]
"""
from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from data_utils.batch import collate
from data_utils.shards import TokenSample
from megatron_cogview.commands.pretrain import main as pretrain_main
from tokenization.layout import TokenLayout
from tokenization.templates import image_to_text
from tokenization.unified import split_sequence

# Defaults of this task (flags given on the command line win).
PRESET_FLAGS = ("--txt-loss-scale", "1.0", "--warmup", "0.05")


def to_image_to_text(seq: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """One stored text-to-image sequence [s] rewritten as image-then-text (same length)."""
    parts = split_sequence(layout, seq)
    text = np.concatenate([p.raw(layout) for p in parts if p.kind == "text"] or [np.zeros(0, np.int64)])
    codes = np.concatenate([p.raw(layout) for p in parts if p.kind == "image"] or [np.zeros(0, np.int64)])
    out = image_to_text(layout, codes, text.tolist(), len(seq))
    return out.tokens, out.position_ids


class ImageToTextSource:
    """Wraps a batch source of text-to-image batches; yields the image-to-text version of each batch."""

    def __init__(self, source: Any, layout: TokenLayout, txt_loss_scale: float = 1.0) -> None:
        self.source, self.layout, self.txt_loss_scale = source, layout, txt_loss_scale

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.source:
            seq = torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=1).numpy()  # [b, s]
            samples = []
            for key, row in zip(batch["keys"], seq):
                tokens, positions = to_image_to_text(row, self.layout)
                samples.append(TokenSample(key, tokens, positions, "", {}))
            yield collate(samples, self.layout, self.txt_loss_scale)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


def main(argv: Sequence[str] | None = None) -> int:
    """pretrain_gpt2.py with this task's defaults and the image-to-text reordering of the data."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in PRESET_FLAGS[::2] if a not in argv]
    defaults = [x for flag in flags for x in (flag, PRESET_FLAGS[PRESET_FLAGS.index(flag) + 1])]
    scale = float(argv[argv.index("--txt-loss-scale") + 1]) if "--txt-loss-scale" in argv else 1.0
    return pretrain_main(defaults + argv, lambda src, layout: ImageToTextSource(src, layout, scale))


if __name__ == "__main__":
    sys.exit(main())
