#!/usr/bin/env bash
# The main job on the embedded default, installing what it needs into ./.venv first.
# For now: pre-train the small LM on the synthetic TL;DR world (runs/demo/pretrain). Extra
# arguments are passed on (e.g. --gin.TRAIN_STEPS=200).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
OUT="${WARM_JAX_OUTPUT_DIR:-$ROOT/runs/demo}"
exec python -m warm_jax.train --gin_file=gin/models/small.gin --gin_file=gin/pretrain.gin --gin.TRAIN_STEPS=300 \
  --gin.MODEL_DIR="'$OUT/pretrain'" "$@"
