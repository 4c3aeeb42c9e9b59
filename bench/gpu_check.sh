#!/usr/bin/env bash
# One prepared device check (for a session lent a GPU): GPU tests + benchmarks, results under $OUT.
# Usage on the device machine: bash bench/gpu_check.sh. torch/triton/transformers come from the machine's
# image; the service's own packages, which only the start-up step needs, travel as wheels: run
# `bash scripts/gpu_wheels.sh` here first, then carry .whl. Steps run in order of value, each with its own
# time limit, all within TOTAL_S (default 480 s: one device call). The Triton kernel is autotuned, so every
# tile config compiles once: a cold Triton cache costs each step tens of seconds.
set -uo pipefail
OUT=${OUT:-/tmp/s3r-gpu}
TOTAL_S=${TOTAL_S:-480}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
  python3 -m pip install -q --no-deps --no-build-isolation --no-index . # the service reads its version from it
fi
# step LIMIT_S NAME COMMAND...: run COMMAND for at most LIMIT_S (less if TOTAL_S runs out), output added to $OUT/NAME.txt (at most 8 files come back)
step() {
  local limit=$1 name=$2 left=$((TOTAL_S - SECONDS))
  shift 2
  if ((left < 10)); then echo "== $name: skipped, the time budget is spent" | tee -a "$OUT/$name.txt"; return; fi
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit} s, ${SECONDS} s in)"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, triton, transformers
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } \
  > "$OUT/gpu.txt" 2>&1
workers=()
python3 -c "import xdist" 2> /dev/null && workers=(-n 6)
# 1. The Triton kernel (every tile config, and the autotuned path) and the router against the reference on the GPU;
#    the CPU backend's tests compile a C++ extension and are skipped here
step 150 tests python3 -m pytest -q -p no:cacheprovider "${workers[@]}" tests/test_kernels.py tests/test_router.py \
  -k "not cpu"
# 2. (a) per kernel, fp16: eager (queued launches) and CUDA-graph replays (kernels alone)
step 60 bench_kernels_fp16 python3 -m bench.bench_kernels --device cuda --dtype float16 --graph
# 3. Start-up tuning in its own empty cache (a new machine), then again from that cache (a restart)
cache=$(mktemp -d)
step 75 tune env TRITON_CACHE_DIR=$cache python3 -m bench.bench_tuning --dtype float16
step 25 tune env TRITON_CACHE_DIR=$cache python3 -m bench.bench_tuning --dtype float16
# 4. (b, c) whole backbone in fp16 (how a GPU serves)
step 60 bench_forward python3 -m bench.bench_forward --device cuda --kernel triton --dtype float16 --repeats 10 --graph
#    and where the encoder's device time goes (14 ms for 5 s in fp16 on an H200: far above its FLOPs)
step 30 bench_forward python3 -m bench.profile_forward --device cuda --dtype float16 --rows 15
# 5. Many masks: 1/8/32 distinct masks in batches of 8 and 32, memory per mask up to 1,000, loads, a Zipf LRU
step 150 bench_masks python3 -m bench.bench_masks --device cuda --requests 2000
# 6. Time to ready: s3router serve on the bundled model on the GPU, a new machine then a restart
step 80 startup python3 -m bench.bench_startup --runs 2 -- --device cuda --dtype float16
# 7. (a) in float32
step 40 bench_kernels_fp32 python3 -m bench.bench_kernels --device cuda --dtype float32 --graph --repeats 20
echo "== done in ${SECONDS} s"
