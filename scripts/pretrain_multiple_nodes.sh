#!/usr/bin/env bash
# Pre-train CogView on several GPU nodes with DeepSpeed's launcher (ssh to the hosts of a hostfile).
#
# Knobs (environment variables):
#   HOSTFILE    DeepSpeed hostfile: one "hostname slots=N" line per node               [hostfile]
#   DATA        dataset folder(s) on a filesystem every node sees                     [required]
#   SAVE        shared checkpoint directory                                           [checkpoints/run]
#   PRESET      model preset                                                          [cogview-4b]
#   TP          tensor-parallel size (within a node is fastest)                       [1]
#   DS_CONFIG   DeepSpeed JSON                          [scripts/ds_configs/cogview_fp16_zero1.json]
#   ITERS       optimizer steps                                                       [144000]
#   MASTER_PORT rendezvous port                                                       [29500]
#   EXTRA       more pretrain_gpt2.py flags (e.g. "--checkpoint-activations --num-workers 4")
# The paper's run: cogview-4b, 512 V100s, global batch 6144, lr 3e-4, 2% warm-up, cosine to 0.1x,
# fp16 with dynamic loss scaling, ZeRO-1, activation checkpointing: set EXTRA="--global-batch-size 6144
# --checkpoint-activations" and a DS_CONFIG without train_micro_batch_size conflicts.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a folder made by cogview preprocess}"
HOSTFILE="${HOSTFILE:-hostfile}"
[ -f "$HOSTFILE" ] || { echo "error: hostfile '$HOSTFILE' not found (one 'host slots=N' line per node)" >&2; exit 2; }
exec deepspeed --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" pretrain_gpt2.py \
  --preset "${PRESET:-cogview-4b}" --tensor-parallel-size "${TP:-1}" \
  --train-data "$DATA" --train-iters "${ITERS:-144000}" \
  --deepspeed --deepspeed_config "${DS_CONFIG:-scripts/ds_configs/cogview_fp16_zero1.json}" \
  --save "${SAVE:-checkpoints/run}" --load "${SAVE:-checkpoints/run}" --save-interval 1000 --log-interval 10 \
  ${EXTRA:-}
