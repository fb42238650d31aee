#!/usr/bin/env bash
# "Segment everything" timed on this machine (not part of the tests): the official Python
# generator (bench/amg_reference.py, the baseline), websam's CLI on the CPU and on the GPU
# (lavapipe without one), and the package in headless Chromium (bench/everything.mjs: the CPU
# path with 1 and 2 threads, WebGPU on SwiftShader with a small grid), on the trained MobileSAM and
# www/samples/chelsea.png. Needs `./build.sh build` and a Python with torch and segment-anything
# (BENCH_PYTHON, default target/golden-venv/bin/python).
#   bash bench/everything.sh [grids, default "32,16"] [lavapipe grids, default "16"] [SwiftShader grid, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
GRIDS=${1:-32,16}
GPU_GRIDS=${2:-16}
WEBGPU_GRID=${3:-2}
PY=${BENCH_PYTHON:-target/golden-venv/bin/python}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$PWD/target/xdg-runtime} XDG_CACHE_HOME=${XDG_CACHE_HOME:-$PWD/target/xdg-cache}
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== the official generator (PyTorch on the CPU)"
"$PY" bench/amg_reference.py --grids "$GRIDS"
for n in ${GRIDS//,/ }; do
  echo "== websam CLI, cpu, ${n}x${n}"
  target/release/websam everything --weights models/mobile_sam.pt --image www/samples/chelsea.png \
    --out /tmp/websam-everything.json --points-per-side "$n" --backend cpu 2>&1 | grep masks
done
for n in ${GPU_GRIDS//,/ }; do
  echo "== websam CLI, gpu, ${n}x${n}"
  target/release/websam everything --weights models/mobile_sam.pt --image www/samples/chelsea.png \
    --out /tmp/websam-everything.json --points-per-side "$n" --backend gpu 2>&1 | grep -E "masks|backend"
done
echo "== the package in headless Chromium"
node bench/everything.mjs "$GRIDS" "$WEBGPU_GRID"
