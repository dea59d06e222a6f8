#!/bin/bash
# Run deploybot itself as a pod on the local single-node cluster, from the manifests in k8s/, with
# the Kubernetes executor (builds as pods in a builds namespace), in-cluster access to the API
# server, its store on a PersistentVolume and its secrets from a Secret.
#
# What this cluster needs beyond k8s/ (applied here, not in k8s/, because a real cluster needs none
# of it): there is no kube-proxy, so the `kubernetes` Service IP a pod's in-cluster configuration
# points at does not route, and there is no storage provisioner. So the pod runs in the node's
# network (hostNetwork), listens on 127.0.0.1:$PORT only (probed there; reachable from the host, and it reaches the
# local registry and git daemon on 127.0.0.1 as the build pods do), reaches the API server at
# 127.0.0.1:16443 (KUBERNETES_SERVICE_HOST/PORT set in the pod win over the injected ones; the
# mounted service account CA still verifies the server), and its claim is bound to a hostPath
# PersistentVolume under $DATA_DIR (made by this script, as a provisioner would).
#
# Usage: scripts/k8s/deploybot-pod.sh up|down
# Settings (environment):
#   CONFIG       deploybot.toml for the ConfigMap (required for up)
#   SECRETS_DIR  a directory: each file becomes a key of the Secret deploybot-webhook-secrets,
#                mounted at /etc/deploybot/secrets (required for up)
#   NAMESPACE    deploybot's namespace (default deploybot); BUILDS_NAMESPACE (deploybot-builds)
#   IMAGE        deploybot's image (default deploybot:latest, built by scripts/build-image.sh)
#   PORT         where it listens on 127.0.0.1 (default 8080)
#   APPS_NAMESPACE  optional: where the MyEvents Deployments are; k8s/examples/myevents-rbac.yaml's
#                Role is made there for deploybot's service account
#   DATA_DIR     the PersistentVolume's directory on the node (default /var/lib/deploybot-pv/$NAMESPACE)
#   K8S_DIR      the local cluster (default ~/.cache/deploybot/k8s-v1.20.2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
manifests=$(cd "$here/../../k8s" && pwd)
NAMESPACE=${NAMESPACE:-deploybot}
BUILDS_NAMESPACE=${BUILDS_NAMESPACE:-deploybot-builds}
IMAGE=${IMAGE:-deploybot:latest}
PORT=${PORT:-8080}
DATA_DIR=${DATA_DIR:-/var/lib/deploybot-pv/$NAMESPACE}
k8s=${K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}
kubectl() { "$k8s/src/kubernetes-1.20.2/_output/bin/kubectl" --kubeconfig "$k8s/run/kubeconfig" "$@"; }
pv=deploybot-data-$NAMESPACE

# k8s/ names the namespaces deploybot and deploybot-builds in every file: put ours in their place
# (a Namespace object's own name included, nothing else's).
renamed() {
  sed -e "s/namespace: deploybot-builds\$/namespace: $BUILDS_NAMESPACE/" \
      -e "s/namespace: deploybot\$/namespace: $NAMESPACE/" \
      -e "/^kind: Namespace\$/,/^---\$/ s/^  name: deploybot-builds\$/  name: $BUILDS_NAMESPACE/" \
      -e "/^kind: Namespace\$/,/^---\$/ s/^  name: deploybot\$/  name: $NAMESPACE/" "$@"
}

down() {
  kubectl delete namespace "$NAMESPACE" "$BUILDS_NAMESPACE" --ignore-not-found --wait=false >/dev/null
  kubectl delete pv "$pv" --ignore-not-found --wait=false >/dev/null
}

up() {
  : "${CONFIG:?CONFIG names the deploybot.toml to run with}" "${SECRETS_DIR:?SECRETS_DIR holds the secret files}"
  renamed "$manifests/namespace.yaml" | kubectl apply -f - >/dev/null
  renamed "$manifests/serviceaccount.yaml" | kubectl apply -f - >/dev/null
  renamed "$manifests/builds.yaml" | kubectl apply -f - >/dev/null
  if [ -n "${APPS_NAMESPACE:-}" ]; then
    sed -e "s/namespace: myevents\$/namespace: $APPS_NAMESPACE/" -e "s/namespace: deploybot\$/namespace: $NAMESPACE/" \
      "$manifests/examples/myevents-rbac.yaml" | kubectl apply -f - >/dev/null
  fi
  # The store: a claim from pvc.yaml, bound to a hostPath volume owned by deploybot's uid (a hostPath
  # volume gets no fsGroup).
  mkdir -p "$DATA_DIR" && chown 10001:10001 "$DATA_DIR" && chmod 0700 "$DATA_DIR"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
spec:
  capacity: { storage: 1Gi }
  accessModes: ["ReadWriteOnce"]
  persistentVolumeReclaimPolicy: Retain
  claimRef: { namespace: $NAMESPACE, name: deploybot-data }
  hostPath: { path: $DATA_DIR, type: Directory }
EOF
  renamed "$manifests/pvc.yaml" | kubectl apply -f - >/dev/null
  kubectl -n "$NAMESPACE" create configmap deploybot-config --from-file=deploybot.toml="$CONFIG" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NAMESPACE" create secret generic deploybot-webhook-secrets --from-file="$SECRETS_DIR" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # deployment.yaml as it is, with this cluster's differences on top (see the header).
  local patch
  patch=$(cat <<EOF
{"spec": {"template": {"spec": {
  "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
  "containers": [{"name": "deploybot", "image": "$IMAGE",
    "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "16443"},
            {"name": "DEPLOYBOT__SERVER__LISTEN", "value": "127.0.0.1:$PORT"}],
    "ports": [{"\$patch": "replace"}, {"name": "http", "containerPort": $PORT, "protocol": "TCP"}],
    "livenessProbe": {"httpGet": {"host": "127.0.0.1"}}, "readinessProbe": {"httpGet": {"host": "127.0.0.1"}},
    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}}]}}}}
EOF
)
  renamed "$manifests/deployment.yaml" \
    | kubectl patch --local --type=strategic -p "$patch" -f - -o yaml \
    | kubectl apply -f - >/dev/null
  kubectl -n "$NAMESPACE" rollout status deployment/deploybot --timeout=180s >/dev/null
  echo "deploybot runs in namespace $NAMESPACE at http://127.0.0.1:$PORT (builds in $BUILDS_NAMESPACE)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
