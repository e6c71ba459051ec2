#!/usr/bin/env bash
# Download, here (with the package registry), the wheels that the GPU machine's image lacks, for its
# Python (3.12, x86-64 manylinux), into .whl/ (git-ignored). The versions are
# this project's own (the venv's); the machine brings torch, torchaudio, transformers, numpy, scipy,
# numba, librosa's other needs and PyYAML (/work/.library/device/KINDS.md lists its packages).
# Then `make gpu-check` there installs them without network (scripts/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# What coqui-tts and the engine import (model/service.py's tree) that the image lacks (num2words's docopt
# has no wheel and only its command line uses it).
NAMES="coqui-tts coqpit-config coqui-tts-trainer anyascii inflect typeguard more-itertools jaraco.functools num2words pysbd ko-speech-tools
monotonic-alignment-search librosa audioread pooch soundfile decorator soxr av pydantic pydantic-core
annotated-types typing-inspection"
pins=()
for name in $NAMES; do
  version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [ -n "$version" ] || { echo "not in the venv: $name" >&2; exit 1; }
  pins+=("$name==$version")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done
for pin in "${pins[@]}"; do  # one at a time: a pure-Python sdist-only package would stop them all
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$pin" || echo "no wheel for $pin (py3.12, manylinux x86-64)" >&2
done
du -sh .whl
