#!/usr/bin/env bash
# Drill 6: SIGKILL the whole experiment (the tiny preset, stages two at a time) at 5 random
# moments, rerunning after each; the reruns must end with the uninterrupted run's metrics.json.
# Details and the recorded result: docs/reliability.md. Extra arguments go to
# pipeline_sigkill.py (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python launch/drills/pipeline_sigkill.py "$@"
