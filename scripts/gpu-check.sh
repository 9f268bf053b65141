#!/usr/bin/env bash
# The GPU checks of one device session, in one go (device time is scarce):
# parity on the GPU, the example segmented in f32 and bf16, then
# `detris bench` on CUDA (inference and training, DETRIS-B then DETRIS-L).
#
# Prepare on the build machine:  scripts/gpu-check.sh --prepare
#   (builds with --features cuda; puts the stripped binaries and the tiny
#   fixtures in .carry/, which is git-ignored and travels with `carry`)
# Run on the GPU machine:        scripts/gpu-check.sh [SECTION ...]
#   sections: parity segment bench-b bench-l (default: all), or bench-b1
#   (batch 1 only, two rounds), bench-l-train (DETRIS-L training only) and
#   train-amp (DETRIS-B training, f32 against bf16 and f16 autocast)
#   (needs a CUDA build of libtorch 2.11: PyPI torch's site-packages; writes
#   logs into $OUT, or /tmp/detris-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
C=.carry

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    source scripts/setup.sh
    cargo build --release --features cuda
    test_bin=$(cargo test --release --features cuda --test forward_parity --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forward_parity" and m.get("executable"):
        print(m["executable"])')
    rm -rf $C && mkdir -p $C/fixtures/tiny
    strip -o $C/detris target/release/detris
    strip -o $C/forward_parity "$test_bin"
    cp ../shared/fixtures/tiny/{config.json,io.safetensors,state_dict.safetensors} $C/fixtures/tiny/
    du -sh $C
    exit 0
fi

OUT=${OUT:-/tmp/detris-gpu}
mkdir -p "$OUT"
SP=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH=$SP/torch/lib:$SP/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export DETRIS_NO_PROGRESS=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
if ldd $C/detris | grep "not found"; then echo "libraries missing"; exit 1; fi

sections=${*:-parity segment bench-b bench-l}
want() { [[ " $sections " == *" $1 "* ]]; }

if want parity; then
echo "== parity on CUDA (tiny official model, f64/f32 every lever; bf16/f16 relative error)"
DETRIS_TEST_DEVICE=cuda DETRIS_FIXTURE_DIR=$C/fixtures timeout 100 $C/forward_parity --test-threads 1 --nocapture \
    >"$OUT/parity.log" 2>&1
echo "parity rc=$?"
grep -E "worst|relative|test result|panicked" "$OUT/parity.log"

fi

if want segment; then
echo "== segment the example on CUDA, f32 and bf16"
for p in f32 bf16; do
    timeout 60 $C/detris segment --device cuda --precision $p --image models/example.png \
        --text "the shape left of the big square" --text "the big square" --out /tmp/seg-$p >/tmp/seg-$p.log 2>&1
    echo "segment $p rc=$?"; tail -4 /tmp/seg-$p.log
done
python3 - <<'PY'
import glob, numpy as np
from PIL import Image
for f in sorted(glob.glob("/tmp/seg-f32/*mask*.png")):
    g = f.replace("/tmp/seg-f32/", "/tmp/seg-bf16/")
    a, b = np.array(Image.open(f)) > 0, np.array(Image.open(g)) > 0
    print(f"{f.split('/')[-1]}: f32 {a.sum()} px, bf16 {b.sum()} px, IoU {(a & b).sum() / max((a | b).sum(), 1):.4f}")
PY

fi

if want bench-b; then
echo "== bench DETRIS-B"
timeout 250 $C/detris bench --device cuda --variant detris-b --sentences 1,4,16 --batch 1,16 --train \
    --warmup 3 --runs 10 --rounds 1 --json "$OUT/bench-b.json" 2>"$OUT/bench-b.err" | tee "$OUT/bench-b.txt"
echo "bench-b rc=$?"; grep -B1 "s/pass" "$OUT/bench-b.err" | tail -40 >"$OUT/bench-b.cases"; tail -3 "$OUT/bench-b.err"
fi

if want bench-l; then
echo "== bench DETRIS-L"
timeout 240 $C/detris bench --device cuda --variant detris-l --sentences 1 --batch 1,16 --precision f32,bf16 \
    --levers false --train --warmup 3 --runs 10 --rounds 1 --json "$OUT/bench-l.json" 2>"$OUT/bench-l.err" | tee "$OUT/bench-l.txt"
echo "bench-l rc=$?"; tail -3 "$OUT/bench-l.err"
fi

if want bench-b1; then
echo "== bench DETRIS-B, batch 1"
timeout 200 $C/detris bench --device cuda --variant detris-b --sentences 1 --batch 1 \
    --warmup 3 --runs 20 --rounds 2 2>"$OUT/bench-b1.err" | tee "$OUT/bench-b1.txt"
echo "bench-b1 rc=$?"; tail -3 "$OUT/bench-b1.err"
fi

if want bench-l-train; then
echo "== bench DETRIS-L, training"
timeout 200 $C/detris bench --device cuda --variant detris-l --infer false --train --precision bf16 \
    --warmup 3 --runs 10 --rounds 1 2>"$OUT/bench-lt.err" | tee "$OUT/bench-lt.txt"
echo "bench-l-train rc=$?"; tail -3 "$OUT/bench-lt.err"
fi

if want train-amp; then
echo "== bench DETRIS-B, training: plain f32 against bf16 and f16 autocast"
timeout 150 $C/detris bench --device cuda --variant detris-b --infer false --train --precision bf16,f16 \
    --warmup 3 --runs 10 --rounds 1 2>"$OUT/bench-amp.err" | tee "$OUT/bench-amp.txt"
echo "train-amp rc=$?"; tail -3 "$OUT/bench-amp.err"
fi
