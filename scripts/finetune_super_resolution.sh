#!/usr/bin/env bash
# Fine-tune a text-to-image checkpoint into a super-resolution model (the paper's shape: 16x16 low-res codes ->
# 32x32 high-res codes of 256 px images, VQ-VAE downsample 8). Make the data first, with the same tokenizers:
#   cogview preprocess --task superres --image-size 256 --seq-len 1352 --text-tokenizer SP.model \
#       --image-tokenizer VQVAE_DIR --out shards/superres INPUTS...
# (1352 = 64 text tokens + 256 + 1024 codes + 8 commands; positions restart at [ROI2], so the model keeps the
#  text-to-image position table: the longer segment, [ROI2] [BASE] [BOI2] + 1024 codes + [EOI2], needs 1028.)
#
# Knobs (environment variables):
#   DATA           superres shards (comma-separated)                                   [required]
#   FINETUNE_FROM  text-to-image checkpoint (same tp as TP; else `cogview convert --target-tp`) [required]
#   SAVE           checkpoint + metrics directory                                      [checkpoints/superres]
#   PRESET         the preset FINETUNE_FROM was trained with                           [small]
#   NPROC, TP, DS_CONFIG   as in scripts/pretrain_single_node.sh
#   ITERS          optimizer steps                                                     [20000]
#   LR             learning rate                                                       [1e-4]
#   TXT_SCALE      loss weight of text labels                                          [0]
#   LOW_SCALE      loss weight of low-res codes (and the commands before [BOI2])      [0]
#   EXTRA          more pretrain_gpt2.py flags
# The loss is on the high-res codes (weight 1) unless TXT_SCALE / LOW_SCALE say otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to shards made by cogview preprocess --task superres}"
: "${FINETUNE_FROM:?set FINETUNE_FROM to a text-to-image checkpoint}"
SAVE="${SAVE:-checkpoints/superres}"
TP="${TP:-1}"
source scripts/lib/launch.sh
launcher module
exec "${LAUNCH[@]}" finetune.super_resolution \
  --preset "${PRESET:-small}" --tensor-parallel-size "$TP" \
  --finetune-from "$FINETUNE_FROM" --train-data "$DATA" --train-iters "${ITERS:-20000}" --lr "${LR:-1e-4}" \
  --txt-loss-scale "${TXT_SCALE:-0}" --low-res-loss-scale "${LOW_SCALE:-0}" \
  --deepspeed --deepspeed_config "$DS_CONFIG" \
  --save "$SAVE" --load "$SAVE" --save-interval 1000 --log-interval 10 \
  ${EXTRA:-}
