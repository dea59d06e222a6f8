#!/bin/bash
# Build deploybot's container image (Dockerfile at the repository root) on a machine where no image
# can be pulled: make the base deploybot-local/debian:bookworm with scripts/build-base-images.sh when
# it is missing, build the release binary with cargo, then `docker build` with the legacy builder
# (buildx is not installed) and the repository root as context (.dockerignore keeps only
# target/release/deploybot and config/).
#
# Usage: scripts/build-image.sh [extra docker build arguments...]
# Settings, all optional:
#   BASE   base image (default deploybot-local/debian:bookworm, made here if missing; any other
#          value, e.g. debian:bookworm-slim where a registry is reachable, is used as it is)
#   IMAGE  tag of the result (default deploybot:latest)
#   PREFIX passed on to build-base-images.sh (default deploybot-local)
#   BINARY a deploybot binary already built (e.g. the tests' target/debug/deploybot): copied in,
#          stripped, instead of a release build
# cargo builds into target/ (the Dockerfile copies target/release/deploybot from there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
P=${PREFIX:-deploybot-local}
BASE=${BASE:-$P/debian:bookworm}
IMAGE=${IMAGE:-deploybot:latest}
export DOCKER_BUILDKIT=0   # legacy builder: buildx is not installed

if [ "$BASE" = "$P/debian:bookworm" ] && ! docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "== $BASE is missing: building it (needs root and debootstrap)"
  PREFIX=$P "$here/build-base-images.sh" debian
fi

# The Dockerfile copies target/release/deploybot from the context: cargo must build there.
if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "$(mkdir -p "$CARGO_TARGET_DIR" && cd "$CARGO_TARGET_DIR" && pwd)" != "$repo/target" ]; then
  echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR: unset it, the Dockerfile needs the binary at $repo/target/release/deploybot" >&2
  exit 2
fi
binary=()
if [ -n "${BINARY:-}" ]; then
  echo "== $BINARY, stripped, as the image's binary"
  mkdir -p "$repo/target/image"
  strip -o "$repo/target/image/deploybot" "$BINARY"
  binary=(--build-arg BINARY=target/image/deploybot)
else
  echo "== cargo build --release"
  (cd "$repo" && cargo build --release --locked)
fi

echo "== docker build -t $IMAGE (BASE=$BASE)"
docker build --build-arg "BASE=$BASE" "${binary[@]}" -t "$IMAGE" "$@" "$repo"
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "built $IMAGE, $((size / 1000000)) MB"
