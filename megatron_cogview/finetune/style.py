"""Fine-tune a pretrained text-to-image CogView for a style or a domain (the paper's style and fashion recipes).

It is pretrain_gpt2.py with fine-tuning defaults: a low learning rate (3e-5, about a tenth of a typical
pretraining lr), a short warm-up (1%), 2,000 steps, a small text-loss weight (0.1: the captions of a
style set are all alike, so predicting them teaches little) and a refusal to start from random weights.
Flags given on the command line win. Data: the style set from `cogview preprocess --style NAME` (or
`--style-from-folders`), mixed with the general data so the model keeps its other abilities:

    cogview preprocess styles/ --style-from-folders --caption-template "An image of {style} style" \\
        --text-tokenizer tok/sp.model --image-tokenizer tok/vqvae --out shards/styles --seq-len 83
    python -m megatron_cogview.finetune.style --finetune-from ckpt/t2i --train-data shards/general,shards/styles \\
        --data-weights 1,1 --save ckpt/styles [any pretrain_gpt2.py flag]

A bigger image grid (fashion: 50x50 codes instead of 32x32) needs only data made at the bigger
--image-size and a larger --max-position-embeddings: the position table grows on load (see README).
"""
from __future__ import annotations

import sys
from typing import Sequence

from megatron_cogview.commands.pretrain import main as pretrain_main

# Defaults of this recipe (flags given on the command line win).
PRESET_FLAGS = ("--lr", "3e-5", "--warmup", "0.01", "--train-iters", "2000", "--txt-loss-scale", "0.1")


def style_argv(argv: Sequence[str]) -> list[str]:
    """argv with the recipe's defaults put first for every flag the user did not give."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    pairs = list(zip(PRESET_FLAGS[::2], PRESET_FLAGS[1::2]))
    return [x for flag, value in pairs if flag not in given for x in (flag, value)] + list(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """pretrain_gpt2.py with this recipe's defaults; starting from random weights is refused."""
    args = style_argv(list(sys.argv[1:] if argv is None else argv))
    if not any(a.split("=", 1)[0] in ("--finetune-from", "--load") for a in args):
        print("finetune.style: error: style fine-tuning starts from a pretrained model; pass --finetune-from CKPT "
              "(or --load SAVE to resume a fine-tuning run)", file=sys.stderr)
        return 2
    return pretrain_main(args)


if __name__ == "__main__":
    sys.exit(main())
