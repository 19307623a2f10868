"""Fine-tune the image-to-text (caption) model used by post-selection and captioning.

It reads the SAME text-to-image shards as pre-training and reorders every sequence on the fly (in the loader,
before collate),
`[ROI1] text [BASE] [BOI1] image [EOI1]` -> `[BASE] [BOI1] image [EOI1] [ROI1] text`, so post-selection
works from the data a user already has. Typically started from the text-to-image checkpoint:

    python -m megatron_cogview.finetune.caption_model --finetune-from ckpt/t2i --train-data shards/t2i \\
        --save ckpt/caption --train-iters 2000 [any pretrain_gpt2.py flag]
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import numpy as np

from data_utils.shards import TokenSample
from megatron_cogview.commands.pretrain import Task
from megatron_cogview.commands.pretrain import main as pretrain_main
from tokenization.layout import TokenLayout
from tokenization.templates import image_to_text
from tokenization.unified import split_sequence

# Defaults of this task (flags given on the command line win).
PRESET_FLAGS = ("--txt-loss-scale", "1.0", "--warmup", "0.05")


def to_image_to_text(seq: np.ndarray, layout: TokenLayout) -> tuple[np.ndarray, np.ndarray]:
    """One stored text-to-image sequence [s] rewritten as image-then-text (same length): tokens, position ids."""
    parts = split_sequence(layout, seq)
    text = np.concatenate([p.raw(layout) for p in parts if p.kind == "text"] or [np.zeros(0, np.int64)])
    codes = np.concatenate([p.raw(layout) for p in parts if p.kind == "image"] or [np.zeros(0, np.int64)])
    out = image_to_text(layout, codes, text.tolist(), len(seq))
    return out.tokens, out.position_ids


def image_to_text_sample(sample: TokenSample, layout: TokenLayout) -> TokenSample:
    """The loader's per-sample transform: the image-to-text version of one text-to-image sample."""
    tokens, positions = to_image_to_text(sample.tokens, layout)
    return dataclasses.replace(sample, tokens=tokens, position_ids=positions)


def main(argv: Sequence[str] | None = None) -> int:
    """pretrain_gpt2.py with this task's defaults and the image-to-text reordering of the data."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in PRESET_FLAGS[::2] if a not in argv]
    defaults = [x for flag in flags for x in (flag, PRESET_FLAGS[PRESET_FLAGS.index(flag) + 1])]
    return pretrain_main(defaults + argv, Task(sample_transform=image_to_text_sample))


if __name__ == "__main__":
    sys.exit(main())
