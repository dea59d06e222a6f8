#!/usr/bin/env bash
# deploybot's main job on its embedded defaults, end to end, on a fresh machine:
# build the binary, start `deploybot serve` (config/deploybot.toml over the embedded defaults),
# send it a real signed GitHub push (tests/fixtures/github/push.branch.json, a published
# payload), and show what was recorded. The webhook secret is generated for this run and passed
# through the environment only.
#
#   scripts/demo.sh            # PORT=8080 by default; DEPLOYBOT__SERVER__LISTEN overrides it
set -euo pipefail
cd "$(dirname "$0")/.."

port=${PORT:-8080}
export DEPLOYBOT__SERVER__LISTEN=${DEPLOYBOT__SERVER__LISTEN:-127.0.0.1:$port}
export MYEVENTS_WEBHOOK_SECRET=${MYEVENTS_WEBHOOK_SECRET:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}
url="http://$DEPLOYBOT__SERVER__LISTEN"

command -v cargo >/dev/null || { echo "demo: cargo is needed (rustup)" >&2; exit 1; }
command -v curl >/dev/null && command -v openssl >/dev/null || {
  echo "demo: installing curl and openssl" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -yq curl openssl >/dev/null
}

echo "== building deploybot (release)"
cargo build --release --locked --quiet
bin=target/release/deploybot

echo "== checking the configuration"
"$bin" check-config

echo "== starting deploybot serve on $url (log: data/demo.log)"
mkdir -p data
"$bin" serve > data/demo.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$url/readyz" >/dev/null || { cat data/demo.log; exit 1; }

body=tests/fixtures/github/push.branch.json
signature="sha256=$(openssl dgst -sha256 -hmac "$MYEVENTS_WEBHOOK_SECRET" -r < "$body" | cut -d' ' -f1)"
delivery=$(cat /proc/sys/kernel/random/uuid)
echo "== POST $url/hooks/myevents  (signed GitHub push, X-GitHub-Delivery: $delivery)"
curl -sS -i -X POST "$url/hooks/myevents" \
  -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $delivery" -H "X-Hub-Signature-256: $signature" \
  --data-binary @"$body"
echo
echo "== the same delivery again (GitHub's Redeliver): recorded once"
curl -sS -X POST "$url/hooks/myevents" \
  -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $delivery" -H "X-Hub-Signature-256: $signature" \
  --data-binary @"$body"
echo
echo "== a forged delivery (wrong signature): refused"
curl -sS -X POST "$url/hooks/myevents" \
  -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $(cat /proc/sys/kernel/random/uuid)" -H "X-Hub-Signature-256: sha256=00" \
  --data-binary @"$body"
echo
sleep 0.2
echo "== deploybot deliveries"
"$bin" deliveries --limit 5
echo
echo "== metrics"
curl -s "$url/metrics" | grep '^deploybot_deliveries_total'
kill -TERM $pid; wait $pid && echo "== deploybot stopped cleanly (SIGTERM, exit 0); store in ./data"
trap - EXIT
