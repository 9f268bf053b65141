#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 10), one after
# the other, from its committed seeds (fuzz/seeds/<target>) plus what earlier
# runs found (fuzz/corpus/<target>, not committed).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Exits 0 when no target found anything, non-zero on the first crash, panic,
# timeout (an input taking over 10 s) or out-of-memory (over 2 GB); the
# input that did it is saved under fuzz/artifacts/<target>/ and the command
# to reproduce it is printed.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer and
# AddressSanitizer need nightly features: on a stable toolchain this sets
# RUSTC_BOOTSTRAP=1. Build output goes to $CARGO_TARGET_DIR (default
# fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET="${1:-10}"
shift || true
ALL_TARGETS=(pickle checkpoint torchscript safetensors image tokenizer refer_refs refer_instances coco_mask http_segment manifest)
TARGETS=("${@:-${ALL_TARGETS[@]}}")

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The file readers take paths: each target writes its input to a scratch file
# under $TMPDIR, which lives in memory when /dev/shm is there.
SCRATCH="$(mktemp -d -p /dev/shm detris-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
export TMPDIR="$SCRATCH"

# The tokenizer refuses texts over 4 KiB; let it see some.
max_len() {
    case "$1" in
        tokenizer) echo "-max_len=8192" ;;
        *) ;;
    esac
}

cargo fuzz build --release --debug-assertions

status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "== $target: ${SECONDS_PER_TARGET}s"
    log="$SCRATCH/$target.log"
    # -fork/-jobs are not used: one process, so that CI's 2 cores stay usable.
    if cargo fuzz run --release --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        $(max_len "$target") >"$log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs' "$log" | tr '\n' ' '
        echo
    else
        status=1
        tail -n 60 "$log"
        echo "== $target FAILED: the input is in fuzz/artifacts/$target/; reproduce with"
        echo "   RUSTC_BOOTSTRAP=1 cargo fuzz run $target fuzz/artifacts/$target/<file>"
        break
    fi
done
exit "$status"
