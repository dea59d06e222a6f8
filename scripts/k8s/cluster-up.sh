#!/bin/bash
# Copied from the workplace's shared k8s scripts (../shared/k8s) and made deploybot's own: the cache
# folder is keyed by version and a narrower test user is added.
# Single-node Kubernetes v1.20.2 on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kubelet (built-in dockershim -> the running Docker). Idempotent: a component
# whose recorded PID (run/<name>.pid) is alive is left alone. Stop with cluster-down.sh.
set -euo pipefail
W=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}; R=$W/run; K=$W/kubelet; B=$W/src/kubernetes-1.20.2/_output/bin
API=https://127.0.0.1:16443; TOKEN=${TOKEN:-testtoken123}; NODE=$(hostname | tr A-Z a-z)
PAUSE=k8s.gcr.io/pause:3.2; CA=$R/certs/apiserver.crt
mkdir -p $R/certs $K; cd $R

# --- one-time inputs: service-account key pair, token, pause image (built from the k8s tree) ---
[ -s sa.key ] || openssl genrsa -out sa.key 2048 2>/dev/null
[ -s sa.pub ] || openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
# A second, narrower user (no groups, no bindings): tests bind it a Role that lacks a verb
# deploybot needs, to see the 403 named. (deploybot addition to the shared script.)
NARROW=${NARROW_TOKEN:-narrowtoken456}
echo -n "$TOKEN" > token; echo -n "$NARROW" > narrow-token
printf '%s\n' "$TOKEN,admin,admin,system:masters" "$NARROW,deploybot-narrow,deploybot-narrow" > tokens.csv
if ! docker image inspect $PAUSE >/dev/null 2>&1; then
  mkdir -p $W/pause && cd $W/pause
  gcc -Os -static -o pause $W/src/kubernetes-1.20.2/build/pause/linux/pause.c && strip pause
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > Dockerfile
  DOCKER_BUILDKIT=0 docker build -q -t $PAUSE . >/dev/null; cd $R
fi

running() { local p; p=$(cat $R/$1.pid 2>/dev/null) && [[ "$(readlink /proc/$p/exe)" == */$1 ]]; }
# A kubelet left running by an older copy of this script, without the eviction settings, is replaced.
if running kubelet && ! tr '\0' ' ' < /proc/$(cat $R/kubelet.pid)/cmdline | grep -q -- --eviction-hard; then
  kill $(cat $R/kubelet.pid); sleep 2
fi
start() { local n=$1; shift; running $n && return 0
  setsid "$@" > $R/$n.log 2>&1 < /dev/null & echo $! > $R/$n.pid; }
wait_for() { local what=$1 i; shift
  for i in $(seq 180); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $what (logs in $R)" >&2; exit 1; }
api() { curl -sf --cacert $CA -H "Authorization: Bearer $TOKEN" "$API$1"; }

start etcd $W/root/usr/bin/etcd --name k8s --data-dir $R/etcd-data --logger=zap \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster k8s=http://127.0.0.1:23800
wait_for etcd curl -sf http://127.0.0.1:23790/health

start kube-apiserver $B/kube-apiserver --etcd-servers=http://127.0.0.1:23790 \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=16443 --insecure-port=0 \
  --cert-dir=$R/certs --token-auth-file=$R/tokens.csv --authorization-mode=RBAC \
  --service-cluster-ip-range=10.0.0.0/24 --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file=$R/sa.pub --service-account-signing-key-file=$R/sa.key \
  --kubelet-preferred-address-types=Hostname,InternalIP
wait_for kube-apiserver api /readyz

cat > $R/kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$API", certificate-authority: "$CA"}}]
users: [{name: admin, user: {tokenFile: "$R/token"}}]
contexts: [{name: local, context: {cluster: local, user: admin}}]
current-context: local
EOF

start kube-controller-manager $B/kube-controller-manager --kubeconfig=$R/kubeconfig \
  --bind-address=127.0.0.1 --secure-port=10657 --port=0 --leader-elect=false \
  --cert-dir=$R/kcm-certs --controllers='*,-nodeipam' \
  --service-account-private-key-file=$R/sa.key --root-ca-file=$CA \
  --flex-volume-plugin-dir=$K/volume-plugins
start kube-scheduler $B/kube-scheduler --kubeconfig=$R/kubeconfig \
  --bind-address=127.0.0.1 --secure-port=10659 --port=0 --leader-elect=false
# kubelet sets these sysctls (and tries dockerd/containerd oom_score_adj=-999); record for cluster-down
[ -s sysctl.before ] || sysctl vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes > sysctl.before
[ -s oom.before ] || for p in $(pidof dockerd containerd); do echo "$p $(cat /proc/$p/oom_score_adj)"; done > oom.before
# kubelet: dockershim against /var/run/docker.sock; no CNI (pods use docker's bridge network);
# no iptables chains, no device-plugin socket, no image GC and no disk-pressure eviction (deploybot
# addition: the default eviction thresholds, imagefs.available<15% and nodefs.available<10%, made a
# kubelet on a machine with 16% of its disk free delete every image no container used, the tests'
# base images among them, in the middle of a test run); all state under $K; HOME=$K so that
# ~/.docker/config.json is not used and private images need an imagePullSecret. Needs the kubelet built
# with kubelet-no-negative-oom.patch where root lacks CAP_SYS_RESOURCE (as here).
start kubelet env HOME=$K $B/kubelet --kubeconfig=$R/kubeconfig --hostname-override=$NODE --register-node=true \
  --container-runtime=docker --docker-endpoint=unix:///var/run/docker.sock \
  --container-runtime-endpoint=unix://$K/dockershim.sock --pod-infra-container-image=$PAUSE \
  --experimental-dockershim-root-directory=$K/dockershim \
  --root-dir=$K --cert-dir=$K/pki --volume-plugin-dir=$K/volume-plugins --seccomp-profile-root=$K/seccomp \
  --cgroup-driver=cgroupfs --fail-swap-on=false --oom-score-adj=0 \
  --address=127.0.0.1 --port=10250 --read-only-port=0 --healthz-bind-address=127.0.0.1 \
  --make-iptables-util-chains=false --hairpin-mode=none --feature-gates=DevicePlugins=false \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --eviction-hard='memory.available<1Mi,nodefs.available<1Mi,imagefs.available<1Mi'

node_ready() { api /api/v1/nodes/$NODE | jq -e '.status.conditions[]|select(.type=="Ready" and .status=="True")'; }
wait_for "node $NODE Ready" node_ready
wait_for "default serviceaccount" api /api/v1/namespaces/default/serviceaccounts/default
echo "API=$API"; echo "CA=$CA"; echo "TOKEN_FILE=$R/token"; echo "NARROW_TOKEN_FILE=$R/narrow-token"; echo "KUBECONFIG=$R/kubeconfig"
