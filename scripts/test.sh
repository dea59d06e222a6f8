#!/usr/bin/env bash
# The whole test suite, on a fresh machine: install and start what the tests need (Docker,
# docker-registry, git, base images: scripts/real-parts.sh), then format check, clippy, and
# every test. Under CI=true a missing real part fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is needed (rustup)" >&2; exit 1; }
bash scripts/real-parts.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked --quiet -- -D warnings
echo "== cargo test"
cargo test --locked
