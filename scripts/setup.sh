#!/usr/bin/env bash
# Install everything the project needs, from nothing: Debian's ffmpeg, espeak-ng and jemalloc, then
# .venv with config.yaml's pinned requirements, truss's server runtime requirements and the dev tools,
# resolved together (the runtime pins numpy<2, which the model stack must agree with). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TRUSS_VERSION=0.18.35  # 0.18.36 pins a certifi release that some registries lack
start=$SECONDS

step() { printf '\n==> %s\n' "$*" >&2; }

# ffmpeg: torchaudio 2.9 decodes audio through torchcodec, which loads FFmpeg's libraries.
# espeak-ng: tests make reference voice clips with it.
# libjemalloc2: the server's allocator (config.yaml's LD_PRELOAD).
missing=()
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
[ -e /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || missing+=(libjemalloc2)
# iproute2: the slow-client tests bring up loopback in a network namespace of their own.
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q 'pip>=25.1'  # --group needs pip 25.1

step "installing truss $TRUSS_VERSION (its server runtime's requirements come next)"
"${PIP[@]}" install -q "truss==$TRUSS_VERSION"

reqs=$(mktemp -d)
trap 'rm -rf "$reqs"' EXIT
.venv/bin/python - "$reqs" <<'PY'
import sys
from pathlib import Path

import truss
import yaml

out = Path(sys.argv[1])
config = yaml.safe_load(Path("config.yaml").read_text())
(out / "model.txt").write_text("\n".join(config["requirements"]) + "\n")
server = Path(truss.__file__).parent / "templates" / "server" / "requirements.txt"
# Drop its "-i" line so the user's own index configuration applies.
lines = [l for l in server.read_text().splitlines() if not l.startswith("-i")]
(out / "server.txt").write_text("\n".join(lines) + "\n")
PY

step "installing the model stack (torch, coqui-tts, ...) and the server runtime"
"${PIP[@]}" install -q "truss==$TRUSS_VERSION" -r "$reqs/model.txt" -r "$reqs/server.txt"

# Apart, and with the model stack's numpy held: livekit-agents (dev) needs watchfiles>=1.0, which truss
# 0.18.35 declares <0.20 for `truss watch` alone; resolved together, the two could not be installed.
step "installing the dev tools (pytest, LiveKit's Baseten plugin, ...)"
"${PIP[@]}" install -q --group dev "numpy==$(.venv/bin/python -c 'import numpy; print(numpy.__version__)')"

step "checking imports"
.venv/bin/python -c "import torch, torchaudio, torchcodec, TTS, truss, fastapi, uvicorn; print('torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| coqui-tts', __import__('importlib.metadata').metadata.version('coqui-tts'), '| truss', truss.__version__)"
echo "setup done in $((SECONDS - start)) s" >&2
