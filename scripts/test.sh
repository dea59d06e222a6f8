#!/usr/bin/env bash
# The whole test suite, on a fresh machine: install what the tests need, then format check,
# clippy, and every test. Under CI=true a missing real part fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo is needed (rustup)" >&2; exit 1; }
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq curl openssl
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked --quiet -- -D warnings
echo "== cargo test"
cargo test --locked
