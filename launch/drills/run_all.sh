#!/usr/bin/env bash
# Every reliability drill in turn (docs/reliability.md); stops at the first that fails.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for drill in sigkill_resume averager_sigkill disk_full bad_inputs peer_death pipeline_sigkill; do
  echo "=== $drill" >&2
  bash "$DIR/$drill.sh"
done
