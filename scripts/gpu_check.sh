#!/usr/bin/env bash
# `make gpu-check` on the GPU machine: no network, so the wheels carried in .whl/ (scripts/gpu_wheels.sh)
# are installed beside the image's own packages, then scripts/gpu_check.py runs; its JSON and markdown
# go to ${OUT:-gpu-check-out}. Arguments pass through (--device cpu --quick rehearses it on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export COQUI_TOS_AGREED=1 PYTHONUNBUFFERED=1
exec $PY scripts/gpu_check.py --out "${OUT:-gpu-check-out}" "$@"
