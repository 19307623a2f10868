"""Importing the original CogView release (base, caption and super-resolution models): shape and numerics.

The released files are `<dir>/<iteration>/mp_rank_XX_model_states.pt` with the weights under `module`
(names as ours). What a preset cannot know is read from the files: the position table (the
super-resolution model's is longer than the base model's 1089 rows) and the padded vocabulary. The
original divided every LayerNorm input by max|x| / 8, so imported models get PB-relax LayerNorm on every
LayerNorm with target 8. (We rescale per row, the original by the whole tensor's max: LayerNorm is
scale-invariant, so the two differ only in how eps weighs in, ~1e-6 relative, and ours does not couple
the samples of a batch.)
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from megatron_cogview.checkpoint.layout import CheckpointError, iteration_dir, read_latest
from megatron_cogview.checkpoint.source import Log, _module, load_checkpoint_file, rank_files, stderr_log
from megatron_cogview.config import ModelConfig

TASKS = ("text2image", "image2text", "superres")
"""What an imported model was trained for: base (text-to-image), caption (post-selection) or super-resolution."""
POSITIONS = "transformer.position_embeddings.weight"
WORDS = "word_embeddings.weight"
_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")


def original_config(
    load: str | Path,
    base: ModelConfig,
    *,
    iteration: int | None = None,
    trust_pickle: bool = False,
    log: Log = stderr_log,
) -> ModelConfig:
    """`base` (the --preset/--config shape) with the position-table and vocabulary rows of the release's
    rank files, and the original's PB-relax LayerNorm; a one-line CheckpointError if the files do not fit."""
    it = read_latest(load) if iteration is None else iteration
    files = rank_files(iteration_dir(load, it))
    module = _module(load_checkpoint_file(files[0], trust_pickle=trust_pickle, log=log), files[0])
    missing = [k for k in (WORDS, POSITIONS) if k not in module]
    if missing:
        raise CheckpointError(f"{files[0]} is not a CogView transformer checkpoint (no {missing[0]}); pass the "
                              "directory of cogview-base, cogview-caption or cogview-sr (holding the tracker file)")
    positions, words = module[POSITIONS], module[WORDS]
    layers = len({int(m.group(1)) for k in module if (m := _LAYER.match(k))})
    if positions.dim() != 2 or positions.shape[1] != base.hidden_size or layers != base.num_layers:
        raise CheckpointError(
            f"{files[0]} holds {layers} layers of width {positions.shape[-1]} but the given shape has "
            f"{base.num_layers} x {base.hidden_size}; pass the matching --preset (cogview-4b for the release) or --config"
        )
    return replace(base, max_position_embeddings=int(positions.shape[0]), vocab_size=int(words.shape[0]) * len(files),
                   pb_relax_layernorm="all", pb_relax_ln_target=8.0)
