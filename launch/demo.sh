#!/usr/bin/env bash
# The main job: the WARM experiment on the embedded default (synthetic TL;DR world), installing
# what it needs into ./.venv first. Writes runs/demo/{report.md,metrics.json,plots/}; a rerun
# resumes. Extra arguments are passed on (e.g. --gin.SCALE="'tiny'" for the smoke scale).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
OUT="${WARM_JAX_OUTPUT_DIR:-$ROOT/runs/demo}"
exec python -m warm_jax.experiment --gin_file=gin/experiments/warm_synthetic_tldr.gin \
  --output_dir="$OUT" "$@"
