#!/usr/bin/env bash
# The M reward-model members as M independent jobs (the pod-sweep way; the experiment driver's
# default trains them in one vmapped program instead, with the same results per seed).
#
#   bash launch/sweep_members.sh --members 6 [--parallel 2] [--print] -- TRAIN_ARGS...
#
# TRAIN_ARGS are `python -m warm_jax.train` arguments of one member WITHOUT --gin.MEMBER_INDEX,
# e.g. --gin_file=gin/models/small.gin --gin_file=gin/rm.gin --gin.DATA_DIR="'runs/d'" \
#      --gin.SFT_DIR="'runs/sft'" --gin.PROBE_DIR="'runs/probe'" --gin.MEMBERS_DIR="'runs/m'"
#   --print      print one command per member (feed them to your scheduler) and exit
#   --parallel K run K members at a time on this machine (default 1)
# Under a SLURM array job (sbatch --array=0-5) or with MEMBER_INDEX set, only that member runs.
# Member i's hyper-parameters are drawn from (SEED, i): every job needs only its index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MEMBERS="" PARALLEL=1 PRINT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --members) MEMBERS="$2"; shift 2 ;;
    --parallel) PARALLEL="$2"; shift 2 ;;
    --print) PRINT=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (expected --members N [--parallel K] [--print] -- TRAIN_ARGS)" >&2; exit 2 ;;
  esac
done
if ! [[ "$MEMBERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "--members must be a positive integer (got '${MEMBERS}')" >&2; exit 2
fi
if ! [[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]]; then
  echo "--parallel must be a positive integer (got '${PARALLEL}')" >&2; exit 2
fi
for arg in "$@"; do
  case "$arg" in --gin.MEMBER_INDEX=*) echo "do not pass --gin.MEMBER_INDEX: the launcher sets it" >&2; exit 2 ;; esac
done
[ $# -gt 0 ] || { echo "no TRAIN_ARGS after --" >&2; exit 2; }
PY="${PYTHON:-python}"
command_for() {  # member index -> the command, shell-quoted
  printf '%q ' "$PY" -m warm_jax.train "$@" "--gin.MEMBER_INDEX=$MEMBER"
}
INDEX="${MEMBER_INDEX:-${SLURM_ARRAY_TASK_ID:-}}"
if [ "$PRINT" = 1 ]; then
  for ((MEMBER = 0; MEMBER < MEMBERS; MEMBER++)); do command_for "$@"; echo; done
  exit 0
fi
cd "$ROOT"
if [ -n "$INDEX" ]; then
  [ "$INDEX" -lt "$MEMBERS" ] || { echo "member index $INDEX >= --members $MEMBERS" >&2; exit 2; }
  exec "$PY" -m warm_jax.train "$@" "--gin.MEMBER_INDEX=$INDEX"
fi
status=0
pids=()
for ((MEMBER = 0; MEMBER < MEMBERS; MEMBER++)); do
  echo "[sweep] member $MEMBER/$MEMBERS" >&2
  "$PY" -m warm_jax.train "$@" "--gin.MEMBER_INDEX=$MEMBER" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$PARALLEL" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || echo "[sweep] some members failed; rerun the same command: finished members are skipped, the others resume" >&2
exit "$status"
