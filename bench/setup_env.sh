#!/usr/bin/env bash
# Creates the benchmark virtualenv bench/.venv: warm-jax (tested versions, `bench` extra) plus
# the peers the benchmarks compare against -- PyTorch (CPU), transformers + TRL (RewardTrainer)
# and mergekit (linear merge). Kept apart from ./.venv so that the peers' dependencies never
# change what the test suite runs with. Idempotent: reinstalls only when an input changed.
#   bash bench/setup_env.sh            # then: bench/.venv/bin/python bench/<name>.py
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "the benchmarks need Python >= 3.11 on PATH" >&2; exit 1; }
VENV="$ROOT/bench/.venv"
# torch pinned exactly: its CPU wheel; an unpinned torch resolves to a multi-GB CUDA build.
PEERS=(torch==2.13.0 transformers trl mergekit safetensors psutil)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
STAMP="$VENV/.warm_jax_bench_installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/constraints.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[warm-jax bench] installing into $VENV (several minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[bench]"
  # The peers in a second step, still under the same constraints: they must not move jax,
  # numpy or protobuf away from the versions warm-jax is tested with.
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "${PEERS[@]}"
  "$VENV/bin/python" -m pip check >&2 || echo "[warm-jax bench] pip check reports conflicts" \
    "(above); the benchmarks only need the imports below to work" >&2
  "$VENV/bin/python" -c 'import jax, torch, transformers, trl, mergekit, safetensors, psutil'
  echo "$WANT" > "$STAMP"
fi
echo "[warm-jax bench] ready: $VENV/bin/python" >&2
