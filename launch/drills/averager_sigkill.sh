#!/usr/bin/env bash
# Drill 2: SIGKILL the averager 10 times while it writes; no output looks complete, inputs
# unchanged.
# Details and the recorded result: docs/reliability.md. Extra arguments go to
# averager_sigkill.py (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python launch/drills/averager_sigkill.py "$@"
