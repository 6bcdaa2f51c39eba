#!/usr/bin/env bash
# Drill 4: the bad-input battery, one row of docs/reliability.md per case: every CLI refuses each
# bad input with one clear `error:` line and a non-zero exit, and modifies nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python -m pytest tests/test_bad_inputs.py -v "$@"
