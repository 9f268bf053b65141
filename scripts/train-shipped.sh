#!/usr/bin/env bash
# Retrains the model that ships with detris (models/detris-synth.safetensors)
# on CPU, from nothing, reproducibly (fixed seeds):
#   stage 0: a synthetic referring data set (detris data synth, seed 7:
#            8000 pictures of 224 px, 52 701 training sentences);
#   stage 1: the whole narrow DETRIS at input 168 from random weights (backbones
#            included: there are no pretrained DINOv2/CLIP weights for this
#            narrow shape); 12 epochs at 3e-4, divided by 10 after epochs 8 and 11;
#   (the official parameter-efficient recipe can run on top: --checkpoint
#    stage1/best.safetensors without --train-backbones; the shipped file is stage 1);
#   export : f16 weights with the vocabulary pruned to the synthetic words.
# Usage: scripts/train-shipped.sh [WORK_DIR]   (about 1 h 55 min of one core, see the README)
# One intra-op thread: at these widths (64-96) a second thread gains only 1.25x
# and a busy machine's spinning OpenMP threads cost more than that; f32, since
# bf16 is slower than f32 at these widths (docs/bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$ROOT/runs/shipped}"
D() { "$ROOT/scripts/run.sh" "$@"; }
mkdir -p "$WORK"
D data synth --out "$WORK/data" --seed 7 --images 8000 --size 224 > "$WORK/data.json"
D train --random-init --config "$ROOT/models/detris-synth.config.json" --train-backbones \
    --data "$WORK/data" --dataset synth --epochs 12 --milestones 8,11 --lr 3e-4 --batch-size 16 \
    --seed 7 --val-limit 300 --workers 1 --threads 1 --device cpu --save-every 200 --out "$WORK/stage1"
D export --checkpoint "$WORK/stage1/best.safetensors" --f16 --prune-vocab "$WORK/data" --out "$ROOT/models/detris-synth.safetensors"
# Evaluation on a test split drawn from seeds the training never saw.
D data synth --out "$WORK/heldout" --seed 99 --test-seed 12345 --images 1000 --size 224 > "$WORK/heldout.json"
D eval --data "$WORK/heldout" --dataset synth --split test --threads 1 --json "$WORK/heldout-eval.json"
