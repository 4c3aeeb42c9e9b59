#!/usr/bin/env bash
# The bundled model's backbone trained further on a lent GPU, in one device call (issue #20: a better
# backbone is what its remaining quality targets need).
#
#   bash scripts/gpu_backbone.sh prepare   # here: writes .gpu/ (the corpus plan, espeak-ng's Debian
#                                          # packages) and .whl/ (the service's and the corpus's wheels)
#   run (device tool), carry [".gpu", ".whl"], timeout ~420:
#       bash scripts/gpu_backbone.sh train  # there: speaks the corpus on all cores from the plan, continues
#                                           # masks/backbone on the GPU, writes $OUT/backbone.tgz and the logs
#   tar -xzf <files_at>/backbone.tgz -C masks   # here, if its dev CER beats the shipped one's (pretrain.txt)
#   rm -r masks/registry/*.s3mask && make bundle   # then relearn every mask and language model (61 min, 2 cores)
#
# The GPU image has Python 3.12 with torch, transformers and numpy but neither espeak-ng nor the service's
# packages, and no network: espeak-ng travels as Debian packages unpacked under /tmp (with a stub for its
# sound-output library, which writing WAV files never calls), the Python packages as wheels. Only the
# training and held-out-voice dev utterances of the five backbone languages are spoken there: the same
# sentences, voices, speeds, pitches and degradations as `s3router data synth` gives here, sample for sample.
set -euo pipefail
cd "$(dirname "$0")/.."
LANGS=${LANGS:-en,fr,de,es,it}
DEBS=(espeak-ng libespeak-ng1 espeak-ng-data libsonic0)

prepare() {
  mkdir -p .gpu/debs
  .venv/bin/s3router data synth --langs "$LANGS" --train 3000 --dev 100 --test 100 --write-plan .gpu/plan-all.jsonl
  # the backbone trains on `train` and is judged on `dev_unheard`: nothing else is spoken there
  .venv/bin/python -c "import json, sys
keep = [line for line in open('.gpu/plan-all.jsonl') if json.loads(line)['split'] in ('train', 'dev_unheard')]
open('.gpu/plan.jsonl', 'w').writelines(keep)
print(len(keep), 'utterances planned for the GPU machine', file=sys.stderr)"
  rm .gpu/plan-all.jsonl
  (cd .gpu/debs && apt-get download "${DEBS[@]}")
  bash scripts/gpu_wheels.sh train
  du -sh .gpu .whl
}

# espeak-ng from .gpu/debs under $1, on PATH; the sound library it links is a stub (the plan writes WAV files).
unpack_espeak() {
  local root=$1 lib
  for deb in .gpu/debs/*.deb; do dpkg -x "$deb" "$root"; done
  lib=$(dirname "$(find "$root" -name 'libespeak-ng.so.1' | head -1)")
  printf '%s\n' 'void *create_audio_device_object(const char *d, const char *a, const char *n) { return 0; }' \
    'int audio_object_open(void *o, int f, unsigned r, unsigned char c) { return -1; }' \
    'void audio_object_close(void *o) {}' 'void audio_object_destroy(void *o) {}' \
    'int audio_object_write(void *o, const void *d, unsigned long n) { return -1; }' \
    'int audio_object_drain(void *o) { return 0; }' 'int audio_object_flush(void *o) { return 0; }' \
    'const char *audio_object_strerror(void *o, int e) { return "no sound output"; }' \
    | gcc -shared -fPIC -x c -o "$lib/libpcaudio.so.0" -
  export PATH=$root/usr/bin:$PATH LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export ESPEAK_DATA_PATH=$lib  # espeak-ng reads $ESPEAK_DATA_PATH/espeak-ng-data
}

train() {
  local out=${OUT:-/tmp/s3r-gpu} work=${WORK:-/tmp/s3r-backbone} python=${PYTHON:-python3}
  local seconds=${TRAIN_S:-240} device=${DEVICE:-cuda} plan=${PLAN:-.gpu/plan.jsonl}
  mkdir -p "$out" "$work"
  export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
      .whl/*.whl && export PYTHONPATH=$PYTHONPATH:$work/site
    "$python" -m pip install -q --no-deps --no-build-isolation --no-index . # the CLI reads its version from it
  fi
  unpack_espeak "$work/espeak"
  echo "espeak-ng: $(command -v espeak-ng), $(espeak-ng --version)" | tee "$out/synth.txt"
  SECONDS=0
  "$python" -m service.cli data synth --out "$work/corpus" --plan "$plan" --workers "$(nproc)" --quiet \
    2>&1 | tee -a "$out/synth.txt"
  echo "spoken in ${SECONDS} s" | tee -a "$out/synth.txt"
  # ${PRETRAIN_ARGS} may add or override flags, e.g. "--batch-size 64 --lr 1e-3"
  # shellcheck disable=SC2086
  "$python" -m service.cli bundle pretrain --corpus "$work/corpus" --langs "$LANGS" --out "$work/backbone" \
    --work-dir "$work/run" --init-from masks/backbone --device "$device" --batch-size 32 --lr 8e-4 \
    --warmup 200 --eval-every 500 --dev-per-lang 40 --dev-split dev_unheard --max-seconds "$seconds" \
    --seed 3 --quiet ${PRETRAIN_ARGS:-} 2>&1 | tee "$out/pretrain.txt"
  # every evaluation (the command prints the last three): greedy CER on the held-out voices, to compare with
  # the shipped backbone's (docs/bundled-model.md: 0.230 for v8, 40 utterances per language, pooled)
  "$python" -c "import json, sys, torch
for entry in torch.load(sys.argv[1], weights_only=False)['history']:
    print(json.dumps({key: entry[key] for key in ('step', 'cer', 'wer', 'loss', 'seconds')}))" \
    "$work/run/pretrain.pt" | tee -a "$out/pretrain.txt"
  tar -C "$work" -czf "$out/backbone.tgz" backbone
  echo "done in ${SECONDS} s: $out/backbone.tgz" | tee -a "$out/pretrain.txt"
}

case ${1:-} in
  prepare) prepare ;;
  train) train ;;
  *) echo "usage: bash scripts/gpu_backbone.sh prepare|train" >&2; exit 2 ;;
esac
