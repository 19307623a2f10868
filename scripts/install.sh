#!/usr/bin/env bash
# Create .venv (if missing) and install megatron-cogview into it.
#   bash scripts/install.sh        -> the library and its CLI
#   bash scripts/install.sh dev    -> plus test tools
#   bash scripts/install.sh bench  -> plus benchmark peers (transformers)
#   bash scripts/install.sh eval   -> plus torch-fidelity's FID Inception-v3 (for `cogview evaluate`)
# torch==2.13.0 is installed first when torch is missing, so the CPU wheel is used
# instead of a multi-GB CUDA build being pulled in by the `torch>=2.1` requirement.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
EXTRA="${1:-}"
if [ -n "$EXTRA" ]; then
  "$VPY" -m pip install -q -e ".[$EXTRA]"
  if [ "$EXTRA" = eval ] || [ "$EXTRA" = dev ]; then
    # FID Inception-v3 for `cogview evaluate`; --no-deps: its torchvision requirement would replace torch
    "$VPY" -m pip install -q --no-deps "torch-fidelity>=0.4,<0.5"
  fi
else
  "$VPY" -m pip install -q -e .
fi
