#!/usr/bin/env bash
# Validate a GPU node in one command (about 8 minutes on one H100/H200); see bench/gpu_validate.py --help.
#   bash bench/gpu_validate.sh                 # every stage, results appended to bench/results/gpu_validate.jsonl
#   bash bench/gpu_validate.sh --skip fp16,mfu # fewer stages
#   bash bench/gpu_validate.sh --tiny          # CPU smoke run (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" bench/gpu_validate.py "$@"
