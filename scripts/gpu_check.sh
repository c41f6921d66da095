#!/usr/bin/env bash
# One GPU check, under 8 minutes on a bare machine (issue: GPU speed). Usage:
#   bash scripts/gpu_check.sh [cuda|cpu] [--quick]
# Installs what it needs into .venv-gpu from the package registry (torch's Linux wheel on PyPI is
# the CUDA build), then prints: the device parity tests (fixtures, official/fp32 and fast), the
# warm benchmark matrix on the full-size random checkpoints (median of 20 after warm-up, peak
# memory), person-frames/s of the clip job, and a cold start to the ready line.
# `cpu --quick` is the dry run on a machine without a GPU (one config each, 1 repeat).
# The fixtures come from $SAM3D_SHARED (default ../shared, or ./shared when carried there).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${1:-cuda}
QUICK=${2:-}
if [ -z "${SAM3D_SHARED:-}" ]; then
  if [ -d shared/fixtures ]; then export SAM3D_SHARED=$PWD/shared; else export SAM3D_SHARED=$(cd .. && pwd)/shared; fi
fi
[ -d "$SAM3D_SHARED/fixtures/parity" ] || { echo "gpu_check: no fixtures at $SAM3D_SHARED" >&2; exit 2; }
PY=${SAM3D_PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv-gpu
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV" || exit 1
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" || exit 1
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" || exit 1
fi
P="$VENV/bin/python"
export SAM3D_BODY_CACHE=${SAM3D_BODY_CACHE:-$PWD/.cache-gpu} HF_HUB_OFFLINE=1
echo "== machine"; "$P" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0); print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB")
PY
echo "== device parity (fixtures)"
SAM3D_TEST_DEVICE=$DEVICE "$P" -m pytest -q -s -p no:cacheprovider tests/device tests/hardening/test_hardening_oom.py 2>&1 | tail -15
REPEAT=20; VARIANTS="dinov3 vith"; MODES="body full"; PERSONS="1 3"; PRECISIONS="official fast"; FRAMES=60
if [ "$QUICK" = "--quick" ]; then REPEAT=1; VARIANTS=dinov3; MODES=body; PERSONS=1; PRECISIONS=fast; FRAMES=2; fi
echo "== warm benchmarks (median of $REPEAT)"
for v in $VARIANTS; do for m in $MODES; do for n in $PERSONS; do for prec in $PRECISIONS; do
  echo "-- $v $m persons=$n $prec"
  "$P" -m server bench --random-full "$v" --device "$DEVICE" --mode "$m" --persons "$n" --precision "$prec" \
    --repeat "$REPEAT" 2>/dev/null | grep -E "^(device|total|peak|load)" || echo "bench failed"
done; done; done; done
echo "== clip job, body mode, $FRAMES frames (frames per model pass: 1, the default, 32)"
BATCHES="1 default 32"; [ "$QUICK" = "--quick" ] && BATCHES="default"
for b in $BATCHES; do
  if [ "$b" = default ]; then BF=(); else BF=(--batch-frames "$b"); fi
  "$P" -m server bench --random-full dinov3 --device "$DEVICE" --mode body --video "$FRAMES" "${BF[@]}" 2>/dev/null \
    | grep -E "^(video|peak)" || echo "video bench failed"
done
echo "== cold start to the ready line (tiny fixture checkpoint, weights cached)"
"$P" - "$DEVICE" <<'PY'
import os, sys, time
from addon.protocol.client import ServerProcess
ckpt = os.path.join(os.environ["SAM3D_SHARED"], "fixtures/parity/checkpoints/dinov3_tiny")
for attempt in ("first (fills the cache)", "cached"):
    server = ServerProcess(sys.executable, checkpoint=ckpt, device=sys.argv[1], ready_timeout=300)
    t0 = time.perf_counter(); server.start(); seconds = time.perf_counter() - t0; server.stop()
    print(f"cold start {attempt}: {seconds:.2f} s")
PY
