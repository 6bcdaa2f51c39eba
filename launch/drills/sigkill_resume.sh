#!/usr/bin/env bash
# Drill 1: SIGKILL a reward-model training at 10 random steps; every resume ends bit-identical
# to an uninterrupted run and every checkpoint on disk stays readable.
# Details and the recorded result: docs/reliability.md. Extra arguments go to
# sigkill_resume.py (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python launch/drills/sigkill_resume.py "$@"
