#!/usr/bin/env bash
# All set-up, then the whole test suite and the type check of addon/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/typecheck.sh
.venv/bin/python -m pytest -q "$@"
