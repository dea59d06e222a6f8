#!/bin/bash
# Copied from the workplace's shared k8s scripts (../shared/k8s); the cache folder is keyed by version.
# Stop what cluster-up.sh started (by recorded PID), remove the kubelet's pod containers (k8s_*),
# undo the kubelet's host changes, and wipe cluster state so the next cluster-up starts fresh.
# Leaves dockerd, the registry and all other containers/images alone.
set -uo pipefail
W=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}; R=$W/run; K=$W/kubelet
for n in kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  p=$(cat $R/$n.pid 2>/dev/null) || continue
  if [[ "$(readlink /proc/$p/exe)" == */$n ]]; then
    kill $p; for i in $(seq 40); do kill -0 $p 2>/dev/null || break; sleep 0.25; done
    kill -0 $p 2>/dev/null && kill -9 $p
  fi
  rm -f $R/$n.pid
done
ids=$(docker ps -aq --filter name=^/k8s_); [ -z "$ids" ] || docker rm -f $ids >/dev/null
awk -v k=$K '$2==k || index($2,k"/")==1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount  # rshared root-dir, secret tmpfs
find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null  # empty kubepods cgroups
[ -s $R/sysctl.before ] && sysctl -q -p $R/sysctl.before && rm $R/sysctl.before
[ -s $R/oom.before ] && while read p v; do echo $v > /proc/$p/oom_score_adj; done < $R/oom.before \
  && rm $R/oom.before
rm -rf $R/etcd-data $K /var/log/pods /var/log/containers
echo "cluster down"
