#!/usr/bin/env bash
# Rebuild the bundled default model from scratch (resumable: rerun after a stop and it continues).
#   1. synthesize the corpus with espeak-ng            -> data/corpus   (not committed)
#   2. pretrain the tiny backbone (character CTC)       -> masks/backbone
#   3. learn masks on the frozen backbone                -> masks/registry (en fr de es it pt speaker language)
#   4. evaluate every mask on the held-out test sets     -> masks/QUALITY.json
set -euo pipefail
cd "$(dirname "$0")/.."
S3R=${S3R:-.venv/bin/s3router}
CORPUS=${CORPUS:-data/corpus}
RUNS=${RUNS:-runs}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}
MASK_STEPS=${MASK_STEPS:-200}
CLS_STEPS=${CLS_STEPS:-300}
LANGS="en fr de es it"
HELD_OUT="pt"
start=$(date +%s)

"$S3R" data synth --out "$CORPUS" --langs en,fr,de,es,it,pt --train 3000 --dev 100 --test 100 --quiet

if [ ! -f masks/backbone/model.safetensors ]; then
  "$S3R" bundle pretrain --corpus "$CORPUS" --langs en,fr,de,es,it --out masks/backbone \
    --work-dir "$RUNS/pretrain" --steps "$PRETRAIN_STEPS" --quiet
fi

train_mask() {  # name kind train dev steps
  if [ -f "masks/registry/$1.s3mask" ]; then echo "mask $1: done"; return; fi
  "$S3R" train --backbone masks/backbone --registry masks/registry --offline --quiet --resume \
    --name "$1" --kind "$2" --train "$3" --dev "$4" --steps "$5" --eval-every 100 --work-dir "$RUNS/mask-$1"
}
for lang in $LANGS $HELD_OUT; do
  train_mask "$lang" ctc "$CORPUS/${lang}_train.jsonl" "$CORPUS/${lang}_dev.jsonl" "$MASK_STEPS"
done
train_mask speaker classify "$CORPUS/speaker_train.jsonl" "$CORPUS/speaker_dev.jsonl" "$CLS_STEPS"
train_mask language classify "$CORPUS/language_train.jsonl" "$CORPUS/language_dev.jsonl" "$CLS_STEPS"

{
  echo "{"
  first=1
  for mask in $LANGS $HELD_OUT speaker language; do
    case $mask in speaker|language) manifest="$CORPUS/${mask}_test.jsonl" ;; *) manifest="$CORPUS/${mask}_test.jsonl" ;; esac
    result=$("$S3R" eval --backbone masks/backbone --registry masks/registry --offline --mask "$mask" --manifest "$manifest")
    [ $first = 1 ] || echo ","
    first=0
    printf '"%s": %s' "$mask" "$result"
  done
  echo "}"
} > masks/QUALITY.json
# The paper's comparison on this data: weight finetuning vs mask finetuning, held-out language, same data/steps.
if [ ! -f "$RUNS/finetune-$HELD_OUT/config.json" ]; then
  "$S3R" finetune --backbone masks/backbone --offline --quiet --train "$CORPUS/${HELD_OUT}_train.jsonl" \
    --dev "$CORPUS/${HELD_OUT}_dev.jsonl" --steps "$MASK_STEPS" --eval-every 100 --out "$RUNS/finetune-$HELD_OUT"
fi
"$S3R" eval --checkpoint "$RUNS/finetune-$HELD_OUT" --manifest "$CORPUS/${HELD_OUT}_test.jsonl" > "masks/FINETUNE_${HELD_OUT}.json"
echo "bundle built in $(( ($(date +%s) - start) / 60 )) minutes"
du -sh masks
