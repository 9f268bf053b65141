#!/usr/bin/env bash
# Runs every test of detris (the README's test command; .ci/run calls it).
# Installs libtorch on first use (scripts/setup.sh), then one release build
# serves both the tests and the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --release --workspace "$@"
