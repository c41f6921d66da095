#!/usr/bin/env bash
# Creates/updates the project environment in .venv (Python 3.11: torch, bpy, the project).
# Idempotent: does nothing when pyproject.toml and this script are unchanged since last time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${SAM3D_PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$c; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.11 is required (Blender 4.2-5.0 and the bpy module use 3.11); set SAM3D_PYTHON" >&2
  exit 1
fi

stamp_src=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp=.venv/.setup-$stamp_src
if [ -f "$stamp" ]; then exit 0; fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: without the pin pip may pull a different build (and GBs of CUDA
# wheels) when another package asks for torch. On GPU machines install the CUDA build of the
# same version beforehand (https://pytorch.org/get-started/locally/); it is kept.
.venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e ".[blender,test,detector]"
rm -f .venv/.setup-*
touch "$stamp"
echo "setup: environment ready in .venv" >&2
