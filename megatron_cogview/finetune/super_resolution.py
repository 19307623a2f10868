"""Fine-tune a text-to-image CogView into a super-resolution model.

Data: shards made by `cogview preprocess --task superres`, one sequence per image,
`[ROI1] text [BASE] [BOI1] low [EOI1] [ROI2] [BASE] [BOI2] high [EOI2]`, where `high` is the image's
g x g code grid and `low` the g/2 x g/2 grid of the same image downsampled 2x, both from the same VQ-VAE.
Position ids restart at [ROI2], so the model keeps the text-to-image position table (g x g high codes
fit where the text-to-image image did) and `--finetune-from` loads its weights as they are.

Loss weights by label: high-res codes and [EOI2] 1; text --txt-loss-scale (default 0); low-res codes
and the structural commands before the high-res codes --low-res-loss-scale (default 0): by default the
model learns only what inference asks of it (the low-res codes and text are always given). Padding
gets position id 0 and weight 0.

--caption-noise P (default 0, CogView's recipe): each training sequence's caption is, with probability P,
swapped for another caption of the training data (drawn from the first shard's, fixed per sample key and
--seed, so a resumed run sees the same data). Such a sequence's low-res codes still describe its
high-res codes, so the model learns that the low-res image wins when the caption disagrees with it: a
magnification keeps what the source shows rather than redrawing it as the caption says. Validation
keeps the true captions. Typically:

    python -m megatron_cogview.finetune.super_resolution --finetune-from ckpt/t2i --train-data shards/superres \\
        --save ckpt/superres --train-iters 2000 [any pretrain_gpt2.py flag]
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import zlib
from typing import Sequence

import numpy as np

from data_utils.errors import DataError
from data_utils.shards import Manifest, TokenSample, decode_sample
from data_utils.wds import iter_tar
from megatron_cogview.commands.pretrain import Task
from megatron_cogview.commands.pretrain import main as pretrain_main
from megatron_cogview.training.objective import Objective
from tokenization.layout import TokenLayout
from tokenization.templates import super_resolution

# Defaults of this task (flags given on the command line win).
PRESET_FLAGS = ("--txt-loss-scale", "0.0", "--warmup", "0.05")
LOW_FLAG = "--low-res-loss-scale"
DEFAULT_LOW_SCALE = 0.0
NOISE_FLAG = "--caption-noise"
DEFAULT_CAPTION_NOISE = 0.0
CAPTION_POOL = 4096  # captions read from the first training shard for --caption-noise
_SALT_NOISE = 0x5EED_C0DE  # keeps the noise stream apart from the loader's seeded streams


def sr_sample(sample: TokenSample, layout: TokenLayout) -> TokenSample:
    """The loader's per-sample transform: checks the sample is super-resolution data and gives padding position 0."""
    if not bool((sample.tokens[:-1] == layout.command("BOI2")).any()):
        raise DataError("a training sequence has no [BOI2]: the data is not super-resolution data; make it with "
                        "`cogview preprocess --task superres`")
    positions = np.where(sample.tokens == layout.pad_id, 0, sample.position_ids)
    return dataclasses.replace(sample, position_ids=positions)


def sr_parts(tokens: np.ndarray, layout: TokenLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (SentencePiece ids, low-res codes, high-res codes) of a stored super-resolution sequence."""
    def first(command: str) -> int:
        hits = (tokens == layout.command(command)).nonzero()[0]
        if not hits.size:
            raise DataError(f"a super-resolution sequence has no [{command}]; remake the data with "
                            "`cogview preprocess --task superres`")
        return int(hits[0])

    return (tokens[1 : first("BASE")] - layout.text_offset, tokens[first("BOI1") + 1 : first("EOI1")] - layout.image_offset,
            tokens[first("BOI2") + 1 : first("EOI2")] - layout.image_offset)


@dataclasses.dataclass(frozen=True)
class CaptionNoise:
    """The training transform of --caption-noise: sr_sample, with the caption swapped for one of `captions`
    with probability `probability` (decided and drawn per sample key and seed)."""

    probability: float
    captions: tuple[tuple[int, ...], ...]
    seed: int

    def __call__(self, sample: TokenSample, layout: TokenLayout) -> TokenSample:
        rng = np.random.default_rng([self.seed, _SALT_NOISE, zlib.crc32(sample.key.encode())])
        if self.captions and rng.random() < self.probability:
            _, low, high = sr_parts(sample.tokens, layout)
            text = self.captions[int(rng.integers(len(self.captions)))]
            built = super_resolution(layout, text, low, high, len(sample.tokens))  # a longer caption is cut to fit
            sample = dataclasses.replace(sample, tokens=built.tokens, position_ids=built.position_ids)
        return sr_sample(sample, layout)


def caption_noise(probability: float, manifest: Manifest, seed: int) -> CaptionNoise:
    """A CaptionNoise drawing from the captions of the first CAPTION_POOL sequences of the first shard."""
    layout = TokenLayout.from_dict(manifest.layout)
    captions: list[tuple[int, ...]] = []
    if probability > 0:
        for raw in iter_tar(manifest.shard_paths()[0]):
            captions.append(tuple(int(t) for t in sr_parts(decode_sample(raw, manifest.seq_len).tokens, layout)[0]))
            if len(captions) == CAPTION_POOL:
                break
    return CaptionNoise(probability, tuple(captions), seed)


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


def sr_task(low_loss_scale: float, noise: float = DEFAULT_CAPTION_NOISE) -> Task:
    """What this task changes in pre-training: sample check and positions, loss weights, position-table size, and
    the training captions' noise."""
    return Task(sample_transform=sr_sample, objective=functools.partial(sr_objective, low_loss_scale=low_loss_scale),
                positions_needed=positions_needed,
                train_transform=functools.partial(caption_noise, noise) if noise > 0 else None)


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
        noise = _pop_flag(argv, NOISE_FLAG, DEFAULT_CAPTION_NOISE)
        if noise > 1:
            raise DataError(f"{NOISE_FLAG} {noise} is a probability: give a number in [0, 1]")
    except DataError as e:
        print(f"finetune.super_resolution: error: {e}", file=sys.stderr)
        return 2
    flags = [a for a in PRESET_FLAGS[::2] if a not in argv]
    defaults = [x for flag in flags for x in (flag, PRESET_FLAGS[PRESET_FLAGS.index(flag) + 1])]
    return pretrain_main(defaults + argv, sr_task(low, noise))


if __name__ == "__main__":
    sys.exit(main())
