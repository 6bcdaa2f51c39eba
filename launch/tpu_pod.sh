#!/usr/bin/env bash
# Runs the same command on every host of a Cloud TPU pod slice (jax.distributed auto-detects the
# TPU topology: no coordinator settings needed), after syncing this checkout and installing.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh \
#       -m warm_jax.experiment --gin_file=gin/experiments/warm_tldr_real.gin \
#       --gin.TLDR_MANUAL_DIR="'/mnt/data/openai_tldr'" --output_dir=gs-fuse/runs/tldr
#
# Env: TPU_NAME, ZONE (required), PROJECT (optional), REMOTE_DIR (default ~/warm-jax),
# DRY_RUN=1 prints the gcloud commands instead of running them. Outputs and data must be on
# storage every host sees (a GCS fuse mount or NFS).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
[ $# -gt 0 ] || { echo "usage: TPU_NAME=... ZONE=... bash launch/tpu_pod.sh -m MODULE ARGS..." >&2; exit 2; }
REMOTE_DIR="${REMOTE_DIR:-~/warm-jax}"
PROJECT_FLAG=()
[ -n "${PROJECT:-}" ] && PROJECT_FLAG=(--project "$PROJECT")
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ARGS="$(printf '%q ' "$@")"
REMOTE="cd $REMOTE_DIR && bash launch/ensure_venv.sh test >/dev/null && .venv/bin/pip install -q -U 'jax[tpu]' && WARM_JAX_DISTRIBUTED=1 .venv/bin/python $ARGS --multihost"
run gcloud compute tpus tpu-vm scp --recurse "${PROJECT_FLAG[@]}" --zone "$ZONE" --worker=all \
  "$ROOT/warm_jax" "$ROOT/gin" "$ROOT/launch" "$ROOT/setup.py" "$ROOT/constraints.txt" \
  "$ROOT/README.md" "$TPU_NAME:$REMOTE_DIR/"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${PROJECT_FLAG[@]}" --zone "$ZONE" --worker=all \
  --command "$REMOTE"
