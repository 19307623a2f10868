#!/usr/bin/env bash
# Build an offline wheelhouse: every runtime dependency of megatron-cogview except torch, as wheels for
# one Python version and platform, so an air-gapped GPU node installs with
#     pip install torch==<its CUDA build>     # from the cluster's own mirror or a copied wheel
#     pip install --no-index --find-links WHEELHOUSE megatron-cogview
#
#   bash scripts/make_wheelhouse.sh [OUT]          (run from an installed checkout: .venv must exist)
# Knobs (environment variables):
#   PYVER       target Python version, e.g. 3.11 or 3.12                         [this venv's]
#   PLATFORM    target pip platform tag                                         [manylinux2014_x86_64]
#   EXTRAS      extras to include, e.g. "eval,tensorboard"                      [none]
# DeepSpeed is published as a source archive only: it is built here into a pure-Python wheel (its C++/CUDA
# ops are compiled on first use on the node, as with a normal pip install). torch is left out on purpose:
# take the CUDA build that matches the node's driver.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-wheelhouse}"
VPY=.venv/bin/python
[ -x "$VPY" ] || { echo "error: .venv is missing; run: bash scripts/install.sh" >&2; exit 2; }
PYVER="${PYVER:-$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
PLATFORM="${PLATFORM:-manylinux2014_x86_64}"
mkdir -p "$OUT"
# 1. the project and DeepSpeed, as wheels built here (both pure Python)
"$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
DS_VERSION="$("$VPY" -c 'from importlib.metadata import version; print(version("deepspeed"))')"
"$VPY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "deepspeed==$DS_VERSION"
# 2. every other requirement (ours, the extras', DeepSpeed's), resolved for the target, binary wheels only
REQS="$("$VPY" - "${EXTRAS:-}" <<'PY'
import re
import sys
from importlib.metadata import requires

extras = {e for e in sys.argv[1].split(",") if e}
def names(dist, with_extras=()):
    out = []
    for r in requires(dist) or []:
        req, _, marker = r.partition(";")
        m = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if m and m.group(1) not in with_extras:
            continue
        out.append(req.strip())
    return out
skip = re.compile(r"^(torch|deepspeed)\b", re.I)
reqs = [r for r in names("megatron-cogview", extras) + names("deepspeed") if not skip.match(r)]
print("\n".join(sorted(set(reqs))))
PY
)"
echo "$REQS" > "$OUT/requirements-offline.txt"
"$VPY" -m pip download -q --only-binary=:all: --python-version "$PYVER" --platform "$PLATFORM" \
  --implementation cp --dest "$OUT" -r "$OUT/requirements-offline.txt"
# 3. drop anything that would pull torch's CUDA stack in by accident
rm -f "$OUT"/torch-*.whl "$OUT"/nvidia_*.whl "$OUT"/triton-*.whl
echo "wheelhouse: $(ls "$OUT"/*.whl | wc -l) wheels in $OUT for Python $PYVER on $PLATFORM (torch not included)"
