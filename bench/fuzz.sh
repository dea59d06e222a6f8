#!/usr/bin/env bash
# Fuzzes every parser of outside input (the property tests in src/fuzz.rs: signature headers,
# GitHub and GitLab payloads, form bodies, .deploybot.toml, the configuration file, Dockerfiles,
# ref patterns, refs/shas/delivery ids) for as many minutes as asked: round after round with
# PROPTEST_CASES cases per property and a fresh seed each round. A failure stops it; proptest
# has then saved the case in tests/fuzz/regressions.txt (commit it, and add it as a named case
# to the parser's own tests).
#
#   bash bench/fuzz.sh [MINUTES]      (default 10; CASES=N cases per property and round)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
cases=${CASES:-5000}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo test --locked --lib --no-run --quiet
properties=$(cargo test --locked --lib --quiet fuzz:: -- --list 2>/dev/null | grep -c ': test$')
deadline=$(($(date +%s) + minutes * 60))
rounds=0
started=$(date +%s)
while [ "$(date +%s)" -lt "$deadline" ]; do
    rounds=$((rounds + 1))
    if ! PROPTEST_CASES=$cases cargo test --locked --lib --quiet fuzz:: >"$log" 2>&1; then
        grep -E "minimal failing input|panicked|Test failed" "$log" | head -20
        echo "fuzz: FAILED in round $rounds; the case is saved in tests/fuzz/regressions.txt" >&2
        exit 1
    fi
done
elapsed=$(($(date +%s) - started))
echo "fuzz: $rounds rounds x $properties properties x $cases cases = $((rounds * properties * cases)) inputs in ${elapsed} s, no failure"
