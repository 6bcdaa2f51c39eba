#!/usr/bin/env bash
# Installs what the tests need into ./.venv and runs the test suite (CPU, 8 simulated devices
# for the sharding tests; see tests/conftest.py), with the hf extra (torch CPU, transformers) for the
# Hugging Face parity tests. Extra arguments go to pytest (`-m "not slow"`: the quick pass).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test,hf
cd "$ROOT"
exec python -m pytest tests -q "$@"
