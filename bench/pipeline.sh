#!/usr/bin/env bash
# Pipeline benchmark: the sample MyEvents repository (tests/fixtures/myevents) built and pushed by
#   (a) the seed's pipeline: a plain sequential shell script with the docker CLI (bench/seed-pipeline.sh)
#   (b) deploybot, from a signed tag push to the job finished (its last image pushed)
# cold (fresh dependency caches, no image layers left) and warm (a second tag, unchanged code),
# ROUNDS times (default 3), printing every time, the medians and the ratios.
#
#   bench/pipeline.sh            # needs root: installs and starts Docker, docker-registry, git
#
# Run it on an otherwise idle machine. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=${ROUNDS:-3}
state=${BENCH_STATE_DIR:-/tmp/deploybot-bench}/pipeline
rm -rf "$state"; mkdir -p "$state"
export BENCH_SECRET=${BENCH_SECRET:-deploybot-bench-secret}
export REGISTRY_PASSWORD=bench-registry-$RANDOM$RANDOM

bash scripts/real-parts.sh >&2
echo "== building deploybot (release)" >&2
cargo build --release --locked --quiet

source bench/lib.sh
start_registry
serve_repo myevents

start_deploybot pipeline

# Seconds from a signed tag push to the job finished.
deploybot_run() {
  local tag=$1 t0 job st
  tag "$tag"
  t0=$(date +%s.%N)
  job=$(send_push "$db_port" bench "$tag" "$sha")
  st=$(wait_job "$db_port" "$job")
  [ "$st" = success ] || { echo "deploybot job $job $st" >&2; "$root/target/release/deploybot" job "$job" --config "$state/deploybot-pipeline.toml" >&2; exit 1; }
  python3 -c "import time; print(f'{time.time()-$t0:.1f}')"
}

seed_run() {
  local tag=$1 t0
  tag "$tag"
  t0=$(date +%s.%N)
  REGISTRY=$registry GIT_URL=$git_url TAG=$tag STATE=$state bash "$root/bench/seed-pipeline.sh" >"$state/seed-$tag.log" 2>&1 \
    || { tail -20 "$state/seed-$tag.log" >&2; exit 1; }
  python3 -c "import time; print(f'{time.time()-$t0:.1f}')"
}

# Cold: no dependency caches and no image layers from an earlier build of the sample.
make_cold() {
  docker volume ls -q | grep -E '^(deploybot-cache-bench-|seed-gocache$|seed-npmcache$)' | xargs -r docker volume rm -f >/dev/null 2>&1 || true
  docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '(^|/)myevents/' | xargs -r docker rmi -f >/dev/null 2>&1 || true
  docker image prune -f >/dev/null 2>&1 || true
}

results=$state/results.txt; : > "$results"
for r in $(seq "$rounds"); do
  make_cold; s_cold=$(seed_run "v$r.0.0-seed")
  s_warm=$(seed_run "v$r.0.1-seed")
  make_cold; d_cold=$(deploybot_run "v$r.0.0")
  d_warm=$(deploybot_run "v$r.0.1")
  echo "round $r: seed script cold ${s_cold}s warm ${s_warm}s | deploybot cold ${d_cold}s warm ${d_warm}s" | tee -a "$results"
done

python3 - "$results" <<'PY'
import re, statistics, sys
rows = [list(map(float, re.findall(r"([\d.]+)s", l))) for l in open(sys.argv[1])]
med = [statistics.median(c) for c in zip(*rows)]
s_cold, s_warm, d_cold, d_warm = med
print()
print(f"== medians of {len(rows)} rounds (seconds, tag push to last image pushed)")
print(f"{'':22}{'cold':>8}{'warm':>8}")
print(f"{'seed shell script':22}{s_cold:8.1f}{s_warm:8.1f}")
print(f"{'deploybot':22}{d_cold:8.1f}{d_warm:8.1f}")
print(f"{'deploybot / seed':22}{d_cold/s_cold:8.2f}{d_warm/s_warm:8.2f}")
print(f"targets: warm deploybot <= 0.6x the script ({'met' if d_warm/s_warm <= 0.6 else 'NOT met'}); "
      f"unchanged tag <= 10 s ({'met' if d_warm <= 10 else 'NOT met'})")
PY
