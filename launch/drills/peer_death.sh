#!/usr/bin/env bash
# Drill 5: one process of a two-process jax.distributed run dies; the other exits with a clear
# error within 60 s (three scenarios).
# Details and the recorded result: docs/reliability.md. Extra arguments go to
# peer_death.py (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python launch/drills/peer_death.py "$@"
