#!/usr/bin/env bash
# Pre-train CogView on one machine (all its GPUs, or CPU processes when there is no GPU).
#
# Knobs (environment variables):
#   DATA        dataset folder(s) made by `cogview preprocess` (comma-separated)     [required]
#   SAVE        checkpoint + metrics directory                                       [checkpoints/run]
#   PRESET      model preset: tiny, demo, small, base, cogview-4b                    [small]
#   NPROC       processes (GPUs; on CPU, gloo processes)                             [all GPUs, or 1]
#   TP          tensor-parallel size (must divide NPROC, the heads and the vocab)    [1]
#   DS_CONFIG   DeepSpeed JSON (its values win over flag defaults; explicit flags must agree)
#               [scripts/ds_configs/cogview_fp16_zero1.json on GPU, cpu_fp32.json on CPU]
#   ITERS       optimizer steps                                                      [144000]
#   EXTRA       more pretrain_gpt2.py flags, e.g. "--txt-loss-scale 5 --checkpoint-activations"
# Resumes automatically from $SAVE when it holds a checkpoint; SIGTERM saves and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a folder made by cogview preprocess}"
SAVE="${SAVE:-checkpoints/run}"
PRESET="${PRESET:-small}"
TP="${TP:-1}"
ITERS="${ITERS:-144000}"
source scripts/lib/launch.sh
launcher
exec "${LAUNCH[@]}" pretrain_gpt2.py \
  --preset "$PRESET" --tensor-parallel-size "$TP" \
  --train-data "$DATA" --train-iters "$ITERS" \
  --deepspeed --deepspeed_config "$DS_CONFIG" \
  --save "$SAVE" --load "$SAVE" --save-interval 1000 --log-interval 10 \
  ${EXTRA:-}
