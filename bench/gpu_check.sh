#!/usr/bin/env bash
# One prepared device check (for a session lent a GPU): GPU tests + benchmarks, results under $OUT.
# Usage on the device machine: bash bench/gpu_check.sh   (torch/triton/transformers come from the machine's image;
# nothing here needs the service's packages). About 2 minutes on an H100; each step has its own time limit.
set -uo pipefail
OUT=${OUT:-/tmp/s3r-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# The Triton kernel against the reference on the GPU (the CPU backend's tests compile a C++ extension: skipped here)
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_router.py -k "not cpu" 2>&1 \
  | tee "$OUT/tests.txt" | tail -5
timeout 90 python3 -m bench.bench_kernels --device cuda --dtype float16 2>&1 | tee "$OUT/bench_kernels_fp16.txt"
timeout 90 python3 -m bench.bench_kernels --device cuda --dtype float32 --repeats 20 2>&1 | tee "$OUT/bench_kernels_fp32.txt"
timeout 120 python3 -m bench.bench_forward --device cuda --kernel triton --repeats 10 2>&1 | tee "$OUT/bench_forward.txt"
