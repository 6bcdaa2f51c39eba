#!/usr/bin/env bash
# Drill 3: the disk fills up during a checkpoint save and an averager write (a real ENOSPC on a
# small tmpfs when run as root, else RLIMIT_FSIZE): clear error, last good checkpoint intact,
# resume works.
# Details and the recorded result: docs/reliability.md. Extra arguments go to
# disk_full.py (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$ROOT/launch/ensure_venv.sh" test
cd "$ROOT"
exec python launch/drills/disk_full.py "$@"
