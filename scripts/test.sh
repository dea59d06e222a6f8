#!/usr/bin/env bash
# The whole test suite, on a fresh machine: install and start what the tests need (Docker,
# docker-registry, git, Chromium, base images, a local Kubernetes v1.20.2 built from Debian's
# sources: scripts/real-parts.sh), then format check, clippy, the JSON API against openapi.yaml
# with schemathesis, every test, and then the fault drill. Under CI=true a missing real part fails the test that needs
# it instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is needed (rustup)" >&2; exit 1; }
bash scripts/real-parts.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked --quiet -- -D warnings
echo "== the JSON API against openapi.yaml (schemathesis)"
cargo build --locked --quiet
bash scripts/api-check.sh
echo "== cargo test"
log=$(mktemp)
# The suite first; then the fault drill (tests/faults), which restarts dockerd, fills a disk and
# stops a registry: its own binary, one test at a time, after everything else.
cargo test --locked --lib --bins --test suite 2>&1 | tee "$log"
echo "== the fault drill"
cargo test --locked --test faults -- --test-threads 1 2>&1 | tee -a "$log"
# One closing line for the whole run, summed over the test binaries.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
