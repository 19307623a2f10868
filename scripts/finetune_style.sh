#!/usr/bin/env bash
# Fine-tune a text-to-image checkpoint for one or more styles (the paper's recipe: ~1,000 images per style,
# caption "An image of {style} style"), mixed with the general data so the model keeps its other abilities.
# Make the style data first, with the checkpoint's tokenizers (one sub-folder per style, e.g. styles/oil_painting/):
#   cogview preprocess styles/ --style-from-folders --caption-template "An image of {style} style" \
#       --text-tokenizer SP.model --image-tokenizer VQVAE_DIR --seq-len 1089 --out shards/styles
# (or: cogview preprocess sketches/ --style sketch ... for a single caption-free folder)
#
# Knobs (environment variables):
#   STYLE_DATA     style shards (from the command above)                               [required]
#   GENERAL_DATA   the general text-to-image shards to mix in (empty: style data only)  []
#   STYLE_WEIGHT   mixing weight of the style data against the general data's 1        [1]
#   FINETUNE_FROM  text-to-image checkpoint (same tp as TP; else `cogview convert --target-tp`) [required]
#   SAVE           checkpoint + metrics directory                                      [checkpoints/style]
#   PRESET         the preset FINETUNE_FROM was trained with                           [small]
#   NPROC, TP, DS_CONFIG   as in scripts/pretrain_single_node.sh
#   ITERS          optimizer steps                                                     [2000]
#   LR             learning rate (about a tenth of pretraining's)                      [3e-5]
#   EXTRA          more pretrain_gpt2.py flags (e.g. --max-position-embeddings for a bigger grid)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STYLE_DATA:?set STYLE_DATA to shards made by cogview preprocess --style NAME or --style-from-folders}"
: "${FINETUNE_FROM:?set FINETUNE_FROM to a text-to-image checkpoint}"
SAVE="${SAVE:-checkpoints/style}"
TP="${TP:-1}"
if [ -n "${GENERAL_DATA:-}" ]; then
  DATA_FLAGS=(--train-data "$GENERAL_DATA,$STYLE_DATA" --data-weights "1,${STYLE_WEIGHT:-1}")
else
  DATA_FLAGS=(--train-data "$STYLE_DATA")
fi
source scripts/lib/launch.sh
launcher module
exec "${LAUNCH[@]}" finetune.style \
  --preset "${PRESET:-small}" --tensor-parallel-size "$TP" \
  --finetune-from "$FINETUNE_FROM" "${DATA_FLAGS[@]}" --train-iters "${ITERS:-2000}" --lr "${LR:-3e-5}" \
  --deepspeed --deepspeed_config "$DS_CONFIG" \
  --save "$SAVE" --load "$SAVE" --save-interval 500 --log-interval 10 \
  ${EXTRA:-}
