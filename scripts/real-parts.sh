#!/usr/bin/env bash
# Installs and starts the real parts deploybot's tests and demo use, on a fresh Debian machine:
# the Docker engine (Debian's docker.io, dockerd started if not running), Debian's
# docker-registry and htpasswd (the tests start their own registries on random ports), git,
# Debian's Chromium with playwright-core (the browser test),
# the local base images (scripts/build-base-images.sh; nothing can be pulled here, and a
# second run on the same machine finds them built), and a real single-node Kubernetes v1.20.2
# built from Debian's sources (scripts/k8s/build.sh: ~6 min once, cached by version under
# ~/.cache/deploybot) and started on 127.0.0.1 (scripts/k8s/cluster-up.sh, ~18 s; idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v git >/dev/null || need+=(git)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# The demo (DEPLOYBOT_PARTS=demo) needs no browser.
browser=true; [ "${DEPLOYBOT_PARTS:-all}" = demo ] && browser=false
if $browser; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
fi
for tool in jq patch make gcc; do command -v $tool >/dev/null || need+=($tool); done
# The Kubernetes build fetches Debian's source package; the pause image is a static C binary.
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -yq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd (log: /tmp/dockerd.log)"
  (setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log; echo "dockerd did not start" >&2; exit 1; }
fi

if $browser; then
  echo "== playwright-core for the browser test (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== base images"
bash scripts/build-base-images.sh golang node static builder

echo "== Kubernetes v1.20.2 (built once from Debian's sources, then started)"
bash scripts/k8s/build.sh > /tmp/deploybot-k8s-build.log 2>&1 || { tail -30 /tmp/deploybot-k8s-build.log; exit 1; }
k8s=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}
if ! curl -sf --cacert "$k8s/run/certs/apiserver.crt" https://127.0.0.1:16443/healthz >/dev/null 2>&1; then
  # Not answering: whatever a previous run left (a rebooted machine's stale pids and state) goes.
  bash scripts/k8s/cluster-down.sh >/dev/null 2>&1 || true
fi
bash scripts/k8s/cluster-up.sh | sed 's/^/   /'
