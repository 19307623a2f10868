#!/usr/bin/env bash
# Text-to-image from a trained checkpoint.
# Knobs: LOAD (checkpoint dir) [required], PROMPTS (file, one prompt per line or id<TAB>text) [required],
#        OUT [samples], NUM (samples per prompt) [8], TOPK [200], TEMP [1.0], SEED [1234], EXTRA (more flags)
set -euo pipefail
: "${LOAD:?set LOAD to a checkpoint directory}" "${PROMPTS:?set PROMPTS to a prompt file}"
exec "${COGVIEW:-cogview}" generate text2image --load "$LOAD" --prompts "$PROMPTS" --out "${OUT:-samples}" \
  --num-samples "${NUM:-8}" --top-k "${TOPK:-200}" --temperature "${TEMP:-1.0}" --seed "${SEED:-1234}" ${EXTRA:-}
