#!/usr/bin/env bash
# High-resolution images from prompts in one command: text-to-image, post-selection (optional), then magnify
# the kept samples with a super-resolution model (g x g codes -> 2g x 2g: 256 px -> 512 px in the paper's shape).
# Knobs: LOAD (text-to-image checkpoint), SR (super-resolution checkpoint), PROMPTS [required];
#        CAPTION_MODEL (post-selection; empty = off) [], NUM (samples per prompt) [8], KEEP (best kept) [1],
#        OUT [samples_sr], TOPK [200], TEMP [1.0], SEED [1234], ORDER (raster|centre|cogview) [raster], EXTRA
# To super-resolve existing images instead: cogview generate super-resolution --load SR --prompt TEXT IMAGES...
set -euo pipefail
: "${LOAD:?set LOAD}" "${SR:?set SR to a super-resolution checkpoint}" "${PROMPTS:?set PROMPTS}"
SELECT=()
if [ -n "${CAPTION_MODEL:-}" ]; then SELECT=(--caption-model "$CAPTION_MODEL" --keep "${KEEP:-1}"); fi
exec "${COGVIEW:-cogview}" generate text2image --load "$LOAD" --prompts "$PROMPTS" --super-resolution "$SR" \
  --sr-order "${ORDER:-raster}" "${SELECT[@]}" --out "${OUT:-samples_sr}" --num-samples "${NUM:-8}" \
  --top-k "${TOPK:-200}" --temperature "${TEMP:-1.0}" --seed "${SEED:-1234}" ${EXTRA:-}
