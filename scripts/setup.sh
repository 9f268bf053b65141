#!/usr/bin/env bash
# Installs what detris needs to build and run, idempotently, and prints the
# environment to use. Sourced by the README commands and by .ci/run:
#   source scripts/setup.sh
# libtorch 2.11.0 comes from the PyPI `torch` wheel (the one place it can be
# fetched here) installed with --no-deps into a private folder, plus the two
# CUDA runtime wheels its CPU libraries link against. Nothing is imported from
# Python: tch only links the shared libraries under that folder.
set -u
DETRIS_TORCH_VERSION=2.11.0
DETRIS_HOME="${DETRIS_HOME:-$HOME/.cache/detris}"
DETRIS_TORCH_DIR="${DETRIS_TORCH_DIR:-$DETRIS_HOME/torch-$DETRIS_TORCH_VERSION}"
if [ ! -f "$DETRIS_TORCH_DIR/.complete" ]; then
  echo "detris setup: installing libtorch $DETRIS_TORCH_VERSION (PyPI wheels, ~1.4 GB) into $DETRIS_TORCH_DIR" >&2
  PY=$(command -v python3 || command -v python) || { echo "detris setup: python3 with pip is needed once to fetch the libtorch wheels" >&2; return 1 2>/dev/null || exit 1; }
  rm -rf "$DETRIS_TORCH_DIR.partial"
  "$PY" -m pip install --quiet --no-deps --no-compile --disable-pip-version-check \
      --target "$DETRIS_TORCH_DIR.partial" \
      "torch==$DETRIS_TORCH_VERSION" "nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*" \
    || { echo "detris setup: pip install of torch==$DETRIS_TORCH_VERSION failed" >&2; return 1 2>/dev/null || exit 1; }
  rm -rf "$DETRIS_TORCH_DIR" && mv "$DETRIS_TORCH_DIR.partial" "$DETRIS_TORCH_DIR" && touch "$DETRIS_TORCH_DIR/.complete"
fi
export LIBTORCH="$DETRIS_TORCH_DIR/torch"
export LIBTORCH_BYPASS_VERSION_CHECK=1
# The CUDA runtime libraries that libtorch_cpu.so names in its NEEDED list.
_nv_libs=$(find "$DETRIS_TORCH_DIR/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$LIBTORCH/lib:${_nv_libs}${LD_LIBRARY_PATH:-}"
unset _nv_libs
