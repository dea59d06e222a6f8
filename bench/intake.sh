#!/usr/bin/env bash
# Intake benchmark: deploybot beside adnanh/webhook, @octokit/webhooks and a Python baseline,
# in ONE run, at 16 and at 64 connections (wrk), medians of 3 rounds, ratios to deploybot.
# Also prints deploybot's peak RSS under load and checks that every delivery deploybot
# acknowledged in the correctness phase is in its store.
#
#   bench/intake.sh                 # DURATION=10 REPEAT=3 CONNECTIONS="16 64" by default
#
# Needs root for apt (wrk, webhook, nodejs/npm are installed when missing). Run it on an
# otherwise idle machine: no build or test suite at the same time (see harness/HARNESS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
harness=$root/bench/harness
duration=${DURATION:-10}; repeat=${REPEAT:-3}; connections=${CONNECTIONS:-16 64}
export BENCH_SECRET=${BENCH_SECRET:-deploybot-bench-secret}
export BENCH_STATE_DIR=${BENCH_STATE_DIR:-/tmp/deploybot-bench}
body=$root/tests/fixtures/github/push.branch.json

need=()
command -v wrk >/dev/null || need+=(wrk)
[ -x /usr/bin/webhook ] || need+=(webhook)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -yq "${need[@]}" >/dev/null
fi

echo "== building deploybot (release)" >&2
cargo build --release --locked --quiet
mkdir -p "$BENCH_STATE_DIR/deploybot"
state=$BENCH_STATE_DIR/deploybot
rm -rf "$state/data"
cat > "$state/bench.toml" <<TOML
[server]
listen = "127.0.0.1:9100"
data_dir = "$state/data"
[log]
filter = "warn"
# This measures intake: the queued jobs are not built (a worker would try to fetch the
# fixture's repository for each of the thousands of deliveries).
[worker]
enabled = false
[[projects]]
name = "myevents"
forge = "github"
repository = "baxterthehacker/public-repo"
webhook_secret_env = "BENCH_SECRET"
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$root/target/release/deploybot" serve --config "$state/bench.toml" > "$state/server.log" 2>&1 &
dpid=$!; pids+=("$dpid")
for _ in $(seq 100); do curl -sf http://127.0.0.1:9100/readyz >/dev/null && break; sleep 0.1; done
pids+=("$("$harness/peers/start-adnanh-webhook.sh" 9101)")
pids+=("$("$harness/peers/start-octokit.sh" 9102)")
pids+=("$("$harness/peers/start-python-baseline.sh" 9103)")

for c in $connections; do
  echo
  echo "######## $c connections ########"
  "$harness/intake.sh" --duration "$duration" --repeat "$repeat" --connections "$c" --body "$body" \
    deploybot=http://127.0.0.1:9100/hooks/myevents \
    adnanh-webhook=http://127.0.0.1:9101/hooks/github \
    octokit=http://127.0.0.1:9102/hooks/github \
    python-baseline=http://127.0.0.1:9103/hooks/github | tee "$state/run-$c.txt"
  # The harness cannot see into deploybot's store: count the correctness phase's ids there.
  tag=$(awk '$1=="deploybot" && $4 ~ /-c0de-/ {split($4, a, "-"); print a[1]}' "$state/run-$c.txt" | tail -n1)
  if [ -n "$tag" ]; then
    stored=$("$root/target/release/deploybot" deliveries --json --limit 1000000 --config "$state/bench.toml" \
      | grep -c "\"delivery_id\":\"$tag-c0de-" || true)
    echo "deploybot recorded: $stored deliveries with the correctness phase's tag $tag (each one committed before its 202)"
  fi
done
echo
echo "deploybot peak RSS over the whole run: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$dpid/status)"
