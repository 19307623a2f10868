#!/usr/bin/env bash
# Fine-tune a text-to-image checkpoint onto a domain with a bigger image grid (the paper's fashion model:
# 32x32 -> 50x50 codes with the same VQ-VAE, i.e. 256 -> 400 px at downsample 8). Make the data first, with
# the checkpoint's tokenizers, at the bigger image size and a longer sequence (64 text + 2500 codes + 4 commands
# + 1 label = 2569):
#   cogview preprocess fashion.jsonl --image-size 400 --seq-len 2569 \
#       --text-tokenizer SP.model --image-tokenizer VQVAE_DIR --out shards/fashion
# The position table grows on load from FINETUNE_FROM's 1088 rows to POSITIONS (= SEQ_LEN - 1): the text rows are
# kept and the 50x50 image rows start as a bilinear interpolation of the 32x32 ones (the log says so).
# Long sequences cost memory: consider --checkpoint-activations and a small micro batch.
#
# Knobs (environment variables):
#   DATA           fashion shards                                                      [required]
#   FINETUNE_FROM  text-to-image checkpoint (same tp as TP; else `cogview convert --target-tp`) [required]
#   POSITIONS      position-table rows of the fine-tuned model (the data's seq_len - 1) [2568]
#   SAVE           checkpoint + metrics directory                                      [checkpoints/fashion]
#   PRESET         the preset FINETUNE_FROM was trained with                           [small]
#   NPROC, TP, DS_CONFIG   as in scripts/pretrain_single_node.sh
#   ITERS          optimizer steps                                                     [5000]
#   LR             learning rate                                                       [5e-5]
#   EXTRA          more pretrain_gpt2.py flags
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to shards made by cogview preprocess at the bigger --image-size}"
: "${FINETUNE_FROM:?set FINETUNE_FROM to a text-to-image checkpoint}"
SAVE="${SAVE:-checkpoints/fashion}"
TP="${TP:-1}"
source scripts/lib/launch.sh
launcher module
exec "${LAUNCH[@]}" finetune.style \
  --preset "${PRESET:-small}" --tensor-parallel-size "$TP" --max-position-embeddings "${POSITIONS:-2568}" \
  --finetune-from "$FINETUNE_FROM" --train-data "$DATA" --train-iters "${ITERS:-5000}" --lr "${LR:-5e-5}" \
  --txt-loss-scale "${TXT_SCALE:-1}" \
  --deepspeed --deepspeed_config "$DS_CONFIG" \
  --save "$SAVE" --load "$SAVE" --save-interval 500 --log-interval 10 \
  ${EXTRA:-}
