#!/usr/bin/env bash
# The embedded default over seeds, every finding with its 95% interval across seeds:
#   bash launch/seeds.sh [--seeds=0,1,2] [--output_dir=runs/seeds] [--gin.NAME=VALUE ...]
# Resumable (finished seeds are skipped, an interrupted one resumes stage by stage); writes
# OUTPUT/{report.md,metrics.json} and one experiment per seed in OUTPUT/seed_<k>.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
OUT="${WARM_JAX_OUTPUT_DIR:-$ROOT/runs/seeds}"
args=("$@")
for a in "$@"; do [[ "$a" == --output_dir=* ]] && OUT=""; done
exec python -m warm_jax.seeds --gin_file=gin/experiments/warm_synthetic_tldr.gin \
  ${OUT:+--output_dir="$OUT"} "${args[@]}"
