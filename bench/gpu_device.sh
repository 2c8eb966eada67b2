#!/usr/bin/env bash
# The GPU figures in one go, on a lent GPU machine (no network; its python3 holds PyTorch).
#
#   bash bench/gpu_device.sh prepare   # here, once: the wheels that machine lacks, in .whl/
#   bash bench/gpu_device.sh run       # there (carry .whl): CUDA tests, then the benchmark
#
# `run` writes the results and the log under $OUT (the device tool brings them back), or
# under bench/results when $OUT is not set. Budget: about 6 minutes on an H100 or H200.
set -euo pipefail
cd "$(dirname "$0")/.."

# What `import headrace` and the benchmark need beyond that machine's image (its package
# list: /work/.library/device/KINDS.md), for its Python 3.12.
WHEELS=(msgspec==0.23.0 cachetools==7.3.3)

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls .whl
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1
    out="${OUT:-bench/results}"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -m pytest -q -p no:cacheprovider tests/unit/models/test_pytorch.py 2>&1 |
        tee "$out/gpu-tests.log"
    day="$(date -u +%F)"
    python3 -m bench.gpu_inference --profile --out "$out/gpu_inference-$day.json" 2>&1 |
        tee "$out/gpu_inference-$day.log"
    ;;
*)
    echo "usage: bash bench/gpu_device.sh prepare|run" >&2
    exit 2
    ;;
esac
