#!/usr/bin/env bash
# The chaos drill, longer: signed pushes (tags and branches, two projects) stream at the real
# binary while kill -9 hits it KILLS times at random moments (restarted each time), then every
# acknowledged delivery, job, tag digest, Deployment and commit status is checked
# (tests/faults/chaos.rs). Needs the real parts (scripts/real-parts.sh).
#
#   bash bench/chaos.sh [KILLS [PUSHES]]      (default 100 kills, 150 pushes)
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-100}
pushes=${2:-150}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
status=0
CI=true CHAOS_KILLS=$kills CHAOS_PUSHES=$pushes \
    cargo test --locked --test faults chaos -- --test-threads 1 --nocapture >"$log" 2>&1 || status=$?
grep -E '^chaos:|panicked|test result' "$log" || tail -20 "$log"
echo "chaos drill: $(($(date +%s) - started)) s"
exit $status
