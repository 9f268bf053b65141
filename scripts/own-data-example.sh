#!/usr/bin/env bash
# The README's "Train on your own data" example, end to end on a CPU in a few
# minutes: a data set in a domain the shipped model never saw, given as one's
# own data is (manifests of photos, sentences and mask PNGs), checked, the
# shipped model measured on it, fine-tuned from the manifests, measured again,
# and the fine-tuned file used by `segment` with no other file.
# The domain: the synthetic scenes restyled as photos (`data synth --style
# photo`: non-square JPEGs, textured backgrounds, colour cast, uneven light,
# blur, noise). Replace step 1 by your own manifests to tune on your data.
# Usage: scripts/own-data-example.sh [WORK_DIR]
#   IMAGES, SIZE, EPOCHS (environment) make it larger: the README's figures
#   come from the defaults and from IMAGES=1000 SIZE=168.
# One intra-op thread: on a busy 2-core machine OpenMP's spinning threads can
# make a step far slower with 2 threads than with 1 (see train-shipped.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$ROOT/runs/own-data}"
SHIPPED="$ROOT/models/detris-synth.safetensors"
D() { "$ROOT/scripts/run.sh" "$@"; }
CPU=(--device cpu --threads 1)
mkdir -p "$WORK"

# 1. The data: train/val/test manifests in $WORK/data (photos in images/, masks in masks/).
#    The test split has its own seed, so it shares no photo with train and val.
D data synth --manifest-out "$WORK/data" --style photo --seed 7 --test-seed 12345 \
    --images "${IMAGES:-400}" --size "${SIZE:-112}" > "$WORK/data.json"

# 2. Check it: counts, bad lines, photo sizes, mask areas, words outside the
#    shipped model's 42-token vocabulary, photos shared between train and val.
D data check "$WORK/data/train.jsonl"
D data check "$WORK/data/test.jsonl"

# 3. Before: the shipped model on the held-out test manifest.
D eval --manifest "$WORK/data/test.jsonl" --checkpoint "$SHIPPED" "${CPU[@]}" --json "$WORK/before.json"

# 4. Fine-tune the shipped model from the manifests (the official recipe: only the
#    adapters, neck, decoder and projector train; the backbones stay frozen).
D train --checkpoint "$SHIPPED" --manifest "$WORK/data/train.jsonl" --val-manifest "$WORK/data/val.jsonl" \
    --epochs "${EPOCHS:-4}" --lr 1.5e-4 --batch-size 16 --seed 7 --workers 1 "${CPU[@]}" --out "$WORK/run"

# 5. After: the fine-tuned file on the same test manifest.
D eval --manifest "$WORK/data/test.jsonl" --checkpoint "$WORK/run/best.safetensors" "${CPU[@]}" \
    --json "$WORK/after.json"

# 6. Use it: segment the first test photo with its first sentence.
FIRST=$(head -n 1 "$WORK/data/test.jsonl")
PHOTO=$(sed -E 's/.*"image":"([^"]*)".*/\1/' <<<"$FIRST")
SENTENCE=$(sed -E 's/.*"sentences":\["([^"]*)".*/\1/' <<<"$FIRST")
D segment --checkpoint "$WORK/run/best.safetensors" --image "$WORK/data/$PHOTO" --text "$SENTENCE" \
    "${CPU[@]}" --out "$WORK/segment"
echo "before: $WORK/before.json  after: $WORK/after.json  masks: $WORK/segment"
