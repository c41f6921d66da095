#!/usr/bin/env bash
# Photo -> rigged character (.blend, optional .fbx), headless. Sets up .venv on first use.
# Usage: bash scripts/run.sh PHOTO --blend OUT.blend [--fbx OUT.fbx] [--checkpoint DIR | --repo HF_ID] ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m addon.cli "$@"
