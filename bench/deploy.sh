#!/usr/bin/env bash
# Deploy benchmark, on the local Kubernetes (v1.20.2 from Debian's sources):
#
# 1. deploybot's own overhead, over DEPLOYS (default 20) tag deploys of tests/fixtures/hello:
#    - from the last image pushed (images.pushed_at in deploybot's store) to the patch applied
#      (the first watch event carrying the new image), and
#    - from the Deployment reporting complete (the first watch event where the rollout is done,
#      judged as `kubectl rollout status` does) to the job marked deployed (jobs.finished_at).
#    The watch is a plain one (GET ...?watch=1) of the benchmark's own, not deploybot's.
#    Medians; target <= 50 ms each.
# 2. Tag push to all three MyEvents Deployments complete, ROUNDS (default 3) times, warm caches:
#    deploybot (signed push -> job deployed) beside the seed's shell pipeline doing the same
#    (bench/seed-pipeline.sh, then `kubectl set image` and `kubectl rollout status` per service).
#
#   bench/deploy.sh            # needs root: installs and starts Docker, the registry, Kubernetes
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
deploys=${DEPLOYS:-20}
rounds=${ROUNDS:-3}
state=${BENCH_STATE_DIR:-/tmp/deploybot-bench}/deploy
rm -rf "$state"; mkdir -p "$state"
export BENCH_SECRET=${BENCH_SECRET:-deploybot-bench-secret}
export REGISTRY_PASSWORD=bench-registry-$RANDOM$RANDOM
k8s=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}
export K8S_RUN=$k8s/run

DEPLOYBOT_PARTS=demo bash scripts/real-parts.sh >&2
echo "== building deploybot (release)" >&2
cargo build --release --locked --quiet
kubectl() { "$k8s/src/kubernetes-1.20.2/_output/bin/kubectl" --kubeconfig "$k8s/run/kubeconfig" "$@"; }
source bench/lib.sh
start_registry

# A new namespace (named per run: deleting one takes the namespace controller a while) with the
# registry's pull secret and the example Deployments (image reset to the placeholder), ready.
# Deleted on exit, without waiting.
run_id=$(date +%s)
namespaces=()
trap 'cleanup; for n in "${namespaces[@]}"; do kubectl delete namespace "$n" --wait=false >/dev/null 2>&1 || true; done' EXIT
fresh_namespace() {
  local ns=$1; shift
  kubectl create namespace "$ns" >/dev/null
  namespaces+=("$ns")
  local auth; auth=$(printf 'bench:%s' "$REGISTRY_PASSWORD" | base64 -w0)
  printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"registry"},"type":"kubernetes.io/dockerconfigjson","stringData":{".dockerconfigjson":"{\\"auths\\":{\\"%s\\":{\\"auth\\":\\"%s\\"}}}"}}' \
    "$registry" "$auth" | kubectl -n "$ns" apply -f - >/dev/null
  reset_deployments "$ns" "$@"
}
reset_deployments() {
  local ns=$1; shift
  # The example manifests, in this namespace, probing every second.
  sed -e "s/namespace: myevents/namespace: $ns/" -e 's/periodSeconds: 2/periodSeconds: 1/' \
    k8s/examples/myevents.yaml > "$state/deployments-$ns.yaml"
  for d in "$@"; do
    if [ "$d" = web ]; then
      sed -e 's/name: frontend/name: web/' "$state/deployments-$ns.yaml" | awk 'BEGIN{RS="---\n"} /name: web/ {print}' | kubectl apply -f - >/dev/null
    else
      awk -v d="$d" 'BEGIN{RS="---\n"} $0 ~ "name: " d "\n" {print}' "$state/deployments-$ns.yaml" | kubectl apply -f - >/dev/null
    fi
  done
  for d in "$@"; do kubectl -n "$ns" rollout status "deployment/$d" --timeout=180s >/dev/null; done
}
printf 'FROM deploybot-local/static:latest\nCOPY health /www/\nUSER 65534\nCMD ["httpd","-f","-p","8080","-h","/www"]\n' > "$state/Dockerfile.initial"
echo ok > "$state/health"
DOCKER_BUILDKIT=0 docker build -q -t deploybot-local/initial:v0 -f "$state/Dockerfile.initial" "$state" >/dev/null 2>&1

# A deploybot deploying tags to namespace $1.
start_deploybot_to() {
  start_deploybot "$1" "[[environments]]
name = \"production\"
namespace = \"$1\"
kubeconfig = \"$k8s/run/kubeconfig\""
}

# ---------------------------------------------------------------- 1. overhead
ns_overhead=bench-overhead-$run_id
echo "== 1. overhead over $deploys deploys (tests/fixtures/hello, namespace $ns_overhead)" >&2
serve_repo hello
fresh_namespace "$ns_overhead" web
start_deploybot_to "$ns_overhead"
python3 bench/watch.py "$ns_overhead" web > "$state/watch.jsonl" &
pids+=($!)
sleep 1
jobs_done=()
for i in $(seq "$deploys"); do
  echo "ok $i" > "$work/health"; commit "release $i"
  tag "v1.0.$i"
  job=$(send_push "$db_port" bench "v1.0.$i" "$sha")
  st=$(wait_job "$db_port" "$job")
  [ "$st" = deployed ] || { echo "job $job: $st" >&2; "$root/target/release/deploybot" job "$job" --config "$state/deploybot-$ns_overhead.toml" >&2; exit 1; }
  jobs_done+=("$job")
done
sleep 1
python3 bench/overhead.py "$state/store-$ns_overhead/deploybot.db" "$state/watch.jsonl" "${jobs_done[@]}" | tee "$state/overhead.txt"

# ---------------------------------------------------------------- 2. end to end vs the seed
echo "== 2. tag push -> three Deployments complete, deploybot vs the seed's shell pipeline ($rounds rounds, warm)" >&2
rm -rf "$state/work" "$state/served"
serve_repo myevents
services=(eventservice bookingservice frontend)
ns_bot=bench-deploybot-$run_id ns_seed=bench-seed-$run_id
fresh_namespace "$ns_bot" "${services[@]}"
fresh_namespace "$ns_seed" "${services[@]}"
start_deploybot_to "$ns_bot"
seed_run() { seed_release "$1" "$ns_seed"; }
deploybot_run() {
  local t=$1 t0 job st; tag "$t"
  t0=$(date +%s.%N)
  job=$(send_push "$db_port" bench "$t" "$sha")
  st=$(wait_job "$db_port" "$job")
  [ "$st" = deployed ] || { echo "job $job: $st" >&2; exit 1; }
  python3 -c "import time; print(f'{time.time()-$t0:.1f}')"
}
# One untimed run each fills the dependency caches (both measure warm).
seed_run v0.0.0-seed >/dev/null; deploybot_run v0.0.0 >/dev/null
results=$state/e2e.txt; : > "$results"
for r in $(seq "$rounds"); do
  reset_deployments "$ns_seed" "${services[@]}"; reset_deployments "$ns_bot" "${services[@]}"
  s=$(seed_run "v$r.0.0-seed")
  d=$(deploybot_run "v$r.0.0")
  echo "round $r: seed ${s}s | deploybot ${d}s" | tee -a "$results" >&2
done

# ---------------------------------------------------------------- 3. one service changed
echo "== 3. a new commit touching only eventservice, tagged -> three Deployments complete ($rounds rounds)" >&2
changed=$state/changed.txt; : > "$changed"
for r in $(seq "$rounds"); do
  echo "// round $r" >> "$work/src/eventservice/main.go"; commit "eventservice only, round $r"
  # Tags newer than every release so far: an older one would be skipped (semver order).
  s=$(seed_run "v1$r.0.0-seed")
  d=$(deploybot_run "v1$r.0.0")
  echo "round $r: seed ${s}s | deploybot ${d}s" | tee -a "$changed" >&2
done

python3 - "$results" "$state/overhead.txt" "$changed" <<'PY'
import re, statistics, sys
def medians(path):
    rows = [list(map(float, re.findall(r"([\d.]+)s", l))) for l in open(path)]
    return len(rows), [statistics.median(c) for c in zip(*rows)]
print()
print(open(sys.argv[2]).read().strip())
for title, path in [("tag push (same commit, Deployments reset) -> all three Deployments complete", sys.argv[1]),
                    ("a new commit touching only eventservice, tagged -> all three Deployments complete", sys.argv[3])]:
    n, (seed, bot) = medians(path)
    print()
    print(f"== {title}, median of {n} warm rounds")
    print(f"seed shell pipeline (docker CLI + kubectl set image + rollout status): {seed:6.1f} s")
    print(f"deploybot (signed push -> job deployed):                              {bot:6.1f} s")
    print(f"deploybot / seed: {bot/seed:.2f}")
PY
