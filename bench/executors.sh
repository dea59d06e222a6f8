#!/usr/bin/env bash
# Executors benchmark, on the local Kubernetes (v1.20.2 from Debian's sources), in one run:
#
# 1. Tag push of MyEvents -> its three Deployments complete, for the seed's shell pipeline
#    (bench/seed-pipeline.sh, then `kubectl set image` + `kubectl rollout status`), deploybot with
#    the Docker executor and deploybot with the Kubernetes executor (builds as pods; its caches on
#    a claim, a hostPath PersistentVolume made here as a provisioner would), each to its own
#    namespace. Cold: the first run, every dependency cache empty. Warm: ROUNDS (default 3) more,
#    the Deployments reset to the placeholder image between rounds.
# 2. A new commit touching only eventservice, tagged -> the three Deployments complete, ROUNDS
#    times, for the same three.
# Prints medians and ratios. Targets: Kubernetes executor warm <= 1.5x the Docker executor; one
# service changed <= 0.4x the seed with either executor.
#
#   bench/executors.sh            # needs root: installs and starts Docker, the registry, Kubernetes
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rounds=${ROUNDS:-3}
state=${BENCH_STATE_DIR:-/tmp/deploybot-bench}/executors
rm -rf "$state"; mkdir -p "$state"
export BENCH_SECRET=${BENCH_SECRET:-deploybot-bench-secret}
export REGISTRY_PASSWORD=bench-registry-$RANDOM$RANDOM
k8s=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}

DEPLOYBOT_PARTS=demo bash scripts/real-parts.sh >&2
echo "== building deploybot (release)" >&2
cargo build --release --locked --quiet
kubectl() { "$k8s/src/kubernetes-1.20.2/_output/bin/kubectl" --kubeconfig "$k8s/run/kubeconfig" "$@"; }
source bench/lib.sh
start_registry
serve_repo myevents
services=(eventservice bookingservice frontend)
run_id=$(date +%s)
namespaces=()
trap 'cleanup; for n in "${namespaces[@]}"; do kubectl delete namespace "$n" --wait=false >/dev/null 2>&1 || true; done; kubectl delete pv "bench-caches-$run_id" --wait=false >/dev/null 2>&1 || true' EXIT

# The MyEvents Deployments (k8s/examples) in a new namespace with the registry's pull secret.
auth=$(printf 'bench:%s' "$REGISTRY_PASSWORD" | base64 -w0)
fresh_namespace() {
  local ns=$1
  kubectl create namespace "$ns" >/dev/null; namespaces+=("$ns")
  printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"registry"},"type":"kubernetes.io/dockerconfigjson","stringData":{".dockerconfigjson":"{\\"auths\\":{\\"%s\\":{\\"auth\\":\\"%s\\"}}}"}}' \
    "$registry" "$auth" | kubectl -n "$ns" apply -f - >/dev/null
  reset_deployments "$ns"
}
reset_deployments() {
  sed -e "s/namespace: myevents/namespace: $1/" -e 's/periodSeconds: 2/periodSeconds: 1/' k8s/examples/myevents.yaml \
    | kubectl apply -f - >/dev/null
  for d in "${services[@]}"; do kubectl -n "$1" rollout status "deployment/$d" --timeout=180s >/dev/null; done
}
printf 'FROM deploybot-local/static:latest\nCOPY health /www/\nUSER 65534\nCMD ["httpd","-f","-p","8080","-h","/www"]\n' > "$state/Dockerfile.initial"
echo ok > "$state/health"
DOCKER_BUILDKIT=0 docker build -q -t deploybot-local/initial:v0 -f "$state/Dockerfile.initial" "$state" >/dev/null 2>&1
# The Kubernetes executor's builder pulls FROM images from the registry.
DOCKER_CONFIG=$state/docker-config bash -c "printf '%s' '$REGISTRY_PASSWORD' | docker login -u bench --password-stdin $registry >/dev/null
  docker tag deploybot-local/static:latest $registry/deploybot-local/static:latest
  docker push -q $registry/deploybot-local/static:latest >/dev/null"

ns_seed=bench-seed-$run_id ns_docker=bench-docker-$run_id ns_kube=bench-kube-$run_id ns_builds=bench-builds-$run_id
for ns in "$ns_seed" "$ns_docker" "$ns_kube"; do fresh_namespace "$ns"; done
kubectl create namespace "$ns_builds" >/dev/null; namespaces+=("$ns_builds")
mkdir -p "$state/caches"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: { name: bench-caches-$run_id }
spec:
  capacity: { storage: 10Gi }
  accessModes: ["ReadWriteOnce"]
  claimRef: { namespace: $ns_builds, name: deploybot-caches }
  hostPath: { path: $state/caches, type: Directory }
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: deploybot-caches, namespace: $ns_builds }
spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: 10Gi } } }
EOF

environment() { printf '[[environments]]\nname = "production"\nnamespace = "%s"\nkubeconfig = "%s"\n' "$1" "$k8s/run/kubeconfig"; }
# Each deploybot's own cache names: the Docker executor's volumes are per project, so a project
# name per run starts them empty.
start_deploybot docker "$(environment "$ns_docker")"
docker_port=$db_port
start_deploybot kube "$(environment "$ns_kube")
[executor]
kind = \"kubernetes\"
namespace = \"$ns_builds\"
kubeconfig = \"$k8s/run/kubeconfig\"
host_network = true
cache_claim = \"deploybot-caches\""
kube_port=$db_port
docker volume rm -f deploybot-cache-bench-tags-go deploybot-cache-bench-tags-npm-cache seed-gocache seed-npmcache >/dev/null 2>&1 || true

seconds_since() { python3 -c "import time; print(f'{time.time()-$1:.1f}')"; }
seed_run() { seed_release "$1" "$ns_seed"; }
deploybot_run() {  # deploybot_run PORT TAG
  local t=$2 t0 job st
  t0=$(date +%s.%N)
  job=$(send_push "$1" bench "$t" "$sha")
  st=$(wait_job "$1" "$job")
  [ "$st" = deployed ] || { echo "job $job on port $1: $st" >&2; exit 1; }
  seconds_since "$t0"
}
all_three() {  # all_three TAG: one run of each, in turn; prints "seed docker kube"
  # The Kubernetes executor's deploybot gets tags of its own: the two share the registry, and a
  # tag deploybot pushed keeps its first digest.
  local s d k
  s=$(seed_run "$1-seed")
  tag "$1"; d=$(deploybot_run "$docker_port" "$1")
  tag "$1-k"; k=$(deploybot_run "$kube_port" "$1-k")
  echo "seed ${s}s | docker ${d}s | kubernetes ${k}s"
}
echo "== 1. tag push -> three Deployments complete: cold, then $rounds warm rounds" >&2
cold=$(all_three v1.0.0); echo "cold: $cold" | tee "$state/cold.txt" >&2
: > "$state/warm.txt"
for r in $(seq "$rounds"); do
  for ns in "$ns_seed" "$ns_docker" "$ns_kube"; do reset_deployments "$ns"; done
  # A new tag on the same commit: every service's inputs are unchanged, so deploybot would reuse
  # its images. A warm build is measured with a commit that changes every service instead.
  for s in "${services[@]}"; do echo "// warm round $r" >> "$work/src/$s/$( [ "$s" = frontend ] && echo index.html || echo main.go)"; done
  commit "every service, warm round $r"
  line=$(all_three "v2.$r.0"); echo "round $r: $line" | tee -a "$state/warm.txt" >&2
done

echo "== 2. a new commit touching only eventservice, tagged ($rounds rounds)" >&2
: > "$state/one.txt"
for r in $(seq "$rounds"); do
  echo "// one service, round $r" >> "$work/src/eventservice/main.go"; commit "eventservice only, round $r"
  line=$(all_three "v3.$r.0"); echo "round $r: $line" | tee -a "$state/one.txt" >&2
done

python3 - "$state/cold.txt" "$state/warm.txt" "$state/one.txt" <<'PY'
import re, statistics, sys
def medians(path):
    rows = [list(map(float, re.findall(r"([\d.]+)s", l))) for l in open(path)]
    return len(rows), [statistics.median(c) for c in zip(*rows)]
print()
for title, path in [("tag push, every dependency cache empty (cold, one run)", sys.argv[1]),
                    ("tag push, every service changed, caches warm", sys.argv[2]),
                    ("a new commit touching only eventservice, tagged", sys.argv[3])]:
    n, (seed, docker, kube) = medians(path)
    print(f"== {title} -> three Deployments complete" + (f", median of {n}" if n > 1 else ""))
    print(f"seed shell pipeline:            {seed:6.1f} s")
    print(f"deploybot, Docker executor:     {docker:6.1f} s   ({docker/seed:.2f}x the seed)")
    print(f"deploybot, Kubernetes executor: {kube:6.1f} s   ({kube/seed:.2f}x the seed, {kube/docker:.2f}x Docker)")
    print()
PY
