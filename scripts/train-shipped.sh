#!/usr/bin/env bash
# Retrains the model that ships with detris (models/detris-synth.safetensors)
# on CPU, from nothing, reproducibly (fixed seeds):
#   stage 0: a synthetic referring data set (detris data synth, seed 7);
#   stage 1: the whole narrow DETRIS from random weights (backbones included:
#            there are no pretrained DINOv2/CLIP weights for this narrow shape);
#   stage 2: the official parameter-efficient recipe on top (backbones frozen,
#            adapters + neck + decoder + projector train);
#   export : f16 weights with the vocabulary pruned to the synthetic words.
# Usage: scripts/train-shipped.sh [WORK_DIR]   (about an hour on 2 cores)
# One intra-op thread: on a busy 2-core machine OpenMP's spinning threads made
# a step 10x slower with 2 threads than with 1 (measured).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$ROOT/runs/shipped}"
D() { "$ROOT/scripts/run.sh" "$@"; }
mkdir -p "$WORK"
D data synth --out "$WORK/data" --seed 7 --images 4000 --size 168 > "$WORK/data.json"
D train --random-init --config "$ROOT/models/detris-synth.config.json" --train-backbones \
    --data "$WORK/data" --dataset synth --epochs 4 --milestones 3 --lr 3e-4 --batch-size 16 \
    --seed 7 --val-limit 300 --workers 1 --threads 1 --device cpu --save-every 100 --out "$WORK/stage1"
D train --checkpoint "$WORK/stage1/best.safetensors" \
    --data "$WORK/data" --dataset synth --epochs 1 --milestones 1 --lr 1e-4 --batch-size 16 \
    --seed 8 --val-limit 300 --workers 1 --threads 1 --device cpu --save-every 100 --out "$WORK/stage2"
D export --checkpoint "$WORK/stage2/best.safetensors" --f16 --prune-vocab "$WORK/data" --out "$ROOT/models/detris-synth.safetensors"
