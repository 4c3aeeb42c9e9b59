#!/usr/bin/env bash
# One prepared device check (for a session lent a GPU): GPU tests + benchmarks, results under $OUT.
# Usage on the device machine: bash bench/gpu_check.sh   (torch/triton come from the machine's image)
set -uo pipefail
OUT=${OUT:-/tmp/s3r-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps -e . >/dev/null 2>&1 || true
python3 -m pip install -q safetensors transformers pytest >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pytest -q tests/test_kernels.py tests/test_router.py 2>&1 | tee "$OUT/tests.txt" | tail -5
python3 -m bench.bench_kernels --device cuda --dtype float16 2>&1 | tee "$OUT/bench_kernels_fp16.txt"
python3 -m bench.bench_kernels --device cuda --dtype float32 --repeats 20 2>&1 | tee "$OUT/bench_kernels_fp32.txt"
python3 -m bench.bench_forward --device cuda --kernel triton --repeats 10 2>&1 | tee "$OUT/bench_forward.txt"
