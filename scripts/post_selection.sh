#!/usr/bin/env bash
# Text-to-image with post-selection: sample NUM images per prompt, rerank them by Caption Loss under an
# image-to-text model (the same network fine-tuned on image-then-text sequences), keep the best KEEP.
# Knobs: LOAD, CAPTION_MODEL, PROMPTS [required]; OUT [samples_ranked], NUM [60 as in the paper], KEEP [1],
#        TOPK [200], TEMP [1.0], SEED [1234], EXTRA
set -euo pipefail
: "${LOAD:?set LOAD}" "${CAPTION_MODEL:?set CAPTION_MODEL to an image-to-text checkpoint}" "${PROMPTS:?set PROMPTS}"
exec "${COGVIEW:-cogview}" generate text2image --load "$LOAD" --caption-model "$CAPTION_MODEL" --prompts "$PROMPTS" \
  --out "${OUT:-samples_ranked}" --num-samples "${NUM:-60}" --keep "${KEEP:-1}" --top-k "${TOPK:-200}" \
  --temperature "${TEMP:-1.0}" --seed "${SEED:-1234}" ${EXTRA:-}
