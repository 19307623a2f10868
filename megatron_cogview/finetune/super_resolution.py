"""Fine-tune a text-to-image CogView into a super-resolution model.

Data: shards made by `cogview preprocess --task superres`, one sequence per image,
`[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2] high [EOI2]`, where `high` is the image's
g x g code grid and `low` the g/2 x g/2 grid of the same image downsampled 2x, both from the same VQ-VAE.
Position ids restart at [ROI2], so the model keeps the text-to-image position table (g x g high codes
fit where the text-to-image image did) and `--finetune-from` loads its weights as they are.

Loss weights by label: high-res codes and [EOI2] 1; text --txt-loss-scale (default 0); low-res codes
and the structural commands before the high-res codes --low-res-loss-scale (default 0): by default the
model learns only what inference asks of it (the low-res codes and text are always given). Padding
gets position id 0 and weight 0. Typically:

    python -m megatron_cogview.finetune.super_resolution --finetune-from ckpt/t2i --train-data shards/superres \\
        --save ckpt/superres --train-iters 2000 [any pretrain_gpt2.py flag]
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Sequence

import numpy as np

from data_utils.errors import DataError
from data_utils.shards import Manifest, TokenSample, decode_sample
from data_utils.wds import iter_tar
from megatron_cogview.commands.pretrain import Task
from megatron_cogview.commands.pretrain import main as pretrain_main
from megatron_cogview.training.objective import Objective
from tokenization.layout import TokenLayout

# Defaults of this task (flags given on the command line win).
PRESET_FLAGS = ("--txt-loss-scale", "0.0", "--warmup", "0.05")
LOW_FLAG = "--low-res-loss-scale"
DEFAULT_LOW_SCALE = 0.0


def sr_sample(sample: TokenSample, layout: TokenLayout) -> TokenSample:
    """The loader's per-sample transform: checks the sample is super-resolution data and gives padding position 0."""
    if not bool((sample.tokens[:-1] == layout.command("BOI2")).any()):
        raise DataError("a training sequence has no [BOI2]: the data is not super-resolution data; make it with "
                        "`cogview preprocess --task superres`")
    positions = np.where(sample.tokens == layout.pad_id, 0, sample.position_ids)
    return dataclasses.replace(sample, position_ids=positions)


def sr_objective(layout: TokenLayout, txt_loss_scale: float, low_loss_scale: float) -> Objective:
    """Loss weights by segment: labels from [BOI2] on (high-res codes, [EOI2]) 1; before it text txt_loss_scale,
    low-res codes and commands low_loss_scale; padding 0."""
    return Objective.from_layout(layout, txt_loss_scale, context_scale=low_loss_scale,
                                 target_token=layout.command("BOI2"))


def positions_needed(manifest: Manifest) -> int:
    """Position-table rows the data needs: the longer of its two segments (positions restart at [ROI2])."""
    if manifest.task != "superres":
        raise DataError(f"{manifest.root!r} holds {manifest.task} shards; super-resolution needs shards made "
                        "with `cogview preprocess --task superres`")
    layout = TokenLayout.from_dict(manifest.layout)
    for sample in iter_tar(manifest.shard_paths()[0]):
        tokens = decode_sample(sample, manifest.seq_len).tokens
        roi2 = (tokens == layout.command("ROI2")).nonzero()[0]
        eoi2 = (tokens == layout.command("EOI2")).nonzero()[0]
        if roi2.size and eoi2.size:
            second = int(eoi2[0]) - int(roi2[0]) + 1  # [ROI2] [BASE] [BOI2] high [EOI2]
            return max(manifest.seq_len - second, second)
        break
    raise DataError(f"the first sample of {manifest.root!r} has no [ROI2] ... [EOI2] segment; remake the data "
                    "with `cogview preprocess --task superres`")


def sr_task(low_loss_scale: float) -> Task:
    """What this task changes in pre-training: sample check and positions, loss weights, position-table size."""
    return Task(sample_transform=sr_sample, objective=functools.partial(sr_objective, low_loss_scale=low_loss_scale),
                positions_needed=positions_needed)


def _pop_flag(argv: list[str], flag: str, default: float) -> float:
    """Remove `flag VALUE` from argv (this task's own flag) and return its value."""
    if flag not in argv:
        return default
    i = argv.index(flag)
    try:
        value = float(argv[i + 1])
    except (IndexError, ValueError):
        raise DataError(f"{flag} needs a number, e.g. {flag} 0.1") from None
    if value < 0:
        raise DataError(f"{flag} {value} must be >= 0")
    del argv[i : i + 2]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """pretrain_gpt2.py with this task's defaults, loss weights and positions (see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        low = _pop_flag(argv, LOW_FLAG, DEFAULT_LOW_SCALE)
    except DataError as e:
        print(f"finetune.super_resolution: error: {e}", file=sys.stderr)
        return 2
    flags = [a for a in PRESET_FLAGS[::2] if a not in argv]
    defaults = [x for flag in flags for x in (flag, PRESET_FLAGS[PRESET_FLAGS.index(flag) + 1])]
    return pretrain_main(defaults + argv, sr_task(low))


if __name__ == "__main__":
    sys.exit(main())
