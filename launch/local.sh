#!/usr/bin/env bash
# Runs any experiment of gin/experiments/ on this machine (installing into ./.venv first).
#   bash launch/local.sh gin/experiments/ablations/alpha_sweep.gin runs/alpha [--gin.NAME=VALUE ...]
# A rerun with the same output dir resumes (finished stages are skipped). For a GPU, install
# the CUDA build of jax into .venv first (pip install -U "jax[cuda12]"); nothing else changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: bash launch/local.sh GIN_FILE OUTPUT_DIR [--gin.NAME=VALUE ...]" >&2
  exit 2
fi
GIN_FILE="$1"; OUT="$2"; shift 2
[ -f "$ROOT/$GIN_FILE" ] || [ -f "$GIN_FILE" ] || { echo "no such gin file: $GIN_FILE" >&2; exit 2; }
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python -m warm_jax.experiment --gin_file="$GIN_FILE" --output_dir="$OUT" "$@"
