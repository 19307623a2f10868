#!/usr/bin/env bash
# Image captioning with an image-to-text checkpoint: prints one JSON line per image.
# Knobs: LOAD [required]; images as arguments; NUM [1], TOPK [0], TEMP [1.0], MAXLEN [32], EXTRA
set -euo pipefail
: "${LOAD:?set LOAD to an image-to-text checkpoint}"
[ "$#" -ge 1 ] || { echo "usage: LOAD=ckpt scripts/image2text.sh IMAGE..." >&2; exit 2; }
exec "${COGVIEW:-cogview}" generate image2text --load "$LOAD" --num-samples "${NUM:-1}" --top-k "${TOPK:-0}" \
  --temperature "${TEMP:-1.0}" --max-len "${MAXLEN:-32}" ${EXTRA:-} "$@"
