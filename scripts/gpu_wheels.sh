#!/usr/bin/env bash
# Wheels of the service's packages that a GPU machine's image lacks (it has torch, triton, transformers,
# httpx, numpy, scipy, numba, scikit-learn), for bench/gpu_check.sh's start-up step: Python 3.12, x86-64,
# versions from the committed locks. `train` adds what `s3router data synth` needs to degrade the training
# audio (audiomentations and its libraries), for scripts/gpu_backbone.sh.
# Usage: bash scripts/gpu_wheels.sh [train]   (writes .whl/, which git ignores; carry it to the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv python-multipart redis soundfile
  cffi pycparser silero-vad uvicorn typing-inspection annotated-types opentelemetry-api)
lock=requirements-serve.lock
if [[ ${1:-} == train ]]; then
  packages+=(audiomentations librosa audioread decorator pooch platformdirs soxr numpy-minmax numpy-rms python-stretch
    pyroomacoustics fast-mp3-augment)
  lock=requirements.lock  # the full lock: the serving one leaves the training packages out
fi
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -E "^$name==" "$lock" | head -1 | sed 's/ .*//')
  [[ -n $pin ]] || { echo "$name is not in $lock" >&2; exit 1; }
  pins+=("$pin")
done
python=$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
