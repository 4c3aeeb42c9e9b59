#!/usr/bin/env bash
# One prepared device check (for a session lent a GPU): GPU tests + benchmarks, results under $OUT.
# Usage on the device machine: bash bench/gpu_check.sh   (torch/triton/transformers come from the machine's image;
# nothing here needs the service's packages). Steps run in order of value, each with its own time limit; together
# at most 580 s (one device call). The Triton kernel is autotuned, so every tile config compiles once.
set -uo pipefail
OUT=${OUT:-/tmp/s3r-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
# 1. The Triton kernel (every tile config, and the autotuned path) and the router against the reference on the GPU;
#    the CPU backend's tests compile a C++ extension and are skipped here
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_router.py -k "not cpu" 2>&1 \
  | tee "$OUT/tests.txt" | tail -5
# 2. (a) per kernel, fp16: eager (queued launches) and CUDA-graph replays (kernels alone)
timeout 70 python3 -m bench.bench_kernels --device cuda --dtype float16 --graph 2>&1 | tee "$OUT/bench_kernels_fp16.txt"
# 3. Start-up tuning in its own empty cache (a new machine), then again from that cache (a restart)
cache=$(mktemp -d)
{ TRITON_CACHE_DIR=$cache timeout 75 python3 -m bench.bench_tuning --dtype float16
  TRITON_CACHE_DIR=$cache timeout 30 python3 -m bench.bench_tuning --dtype float16; } 2>&1 | tee "$OUT/tune.txt" | grep -v "^  "
# 4. (b, c) whole backbone in fp16 (how a GPU serves) and float32, then (a) in float32
timeout 65 python3 -m bench.bench_forward --device cuda --kernel triton --dtype float16 --repeats 10 --graph 2>&1 \
  | tee "$OUT/bench_forward.txt"
# 5. Many masks: 1/8/32 distinct masks in batches of 8 and 32, memory per mask up to 1,000, loads, a Zipf LRU
timeout 90 python3 -m bench.bench_masks --device cuda --requests 2000 2>&1 | tee "$OUT/bench_masks.txt"
timeout 45 python3 -m bench.bench_kernels --device cuda --dtype float32 --graph --repeats 20 2>&1 \
  | tee "$OUT/bench_kernels_fp32.txt"
