#!/usr/bin/env bash
# Runs the detris command line (the README's main command), building it on
# first use; paths are taken relative to where you call it from.
# Example: scripts/run.sh segment --image models/example.png --text "the red circle"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cargo build --release --quiet --bin detris --manifest-path "$ROOT/Cargo.toml"
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/detris" "$@"
