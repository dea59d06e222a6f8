#!/bin/bash
# Copied from the workplace's shared k8s scripts (../shared/k8s); the cache folder is keyed by version.
# Build a real Kubernetes v1.20.2 (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl)
# from Debian bookworm's `kubernetes` source package with Debian's Go 1.19, and take etcd from
# Debian's etcd-server. Nothing is installed system-wide: everything lands under $W.
# Cold: about 6 minutes and 4 GB of disk on a 2-core machine. Re-running skips what is built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
W=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}; K=$W/src/kubernetes-1.20.2; B=$K/_output/bin
mkdir -p $W/{apt/lists/partial,apt/cache/archives/partial,apt/etc,debs,root,src,home,gocache}
if [ -x $B/kubectl ] && [ -x $B/kubelet ] && [ -x $B/kube-apiserver ] && [ -x $B/kube-controller-manager ] && [ -x $B/kube-scheduler ]; then
  echo "already built: $B"; exit 0
fi
# The archive address comes from this machine's own apt sources (deb822 or one-line format).
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
echo "deb-src $mirror bookworm main" > $W/apt/etc/sources.list
APTO="-o Dir::Etc::SourceList=$W/apt/etc/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$W/apt/lists -o Dir::Cache=$W/apt/cache -o Debug::NoLocking=1"
apt-get $APTO -qq update
[ -d $K ] || (cd $W/src && apt-get $APTO -qq source --download-only kubernetes && tar xzf kubernetes_*.orig.tar.gz)
(cd $W/debs && apt-get -qq download golang-1.19-go golang-1.19-src etcd-server rsync libpopt0 golang-github-modern-go-reflect2-dev)
for f in $W/debs/*.deb; do dpkg-deb -x $f $W/root; done
# The vendored reflect2 v1.0.1 panics under Go >= 1.18 (nil deref in reflect2.Type2 on the first JSON
# decode); Debian's 1.0.2 works.
rm -f $K/vendor/github.com/modern-go/reflect2/*.go
cp $W/root/usr/share/gocode/src/github.com/modern-go/reflect2/*.go $K/vendor/github.com/modern-go/reflect2/
# Root here lacks CAP_SYS_RESOURCE, so a negative oom_score_adj makes runc fail every pod sandbox.
(cd $K && { patch -p1 -N --dry-run -s < $here/kubelet-no-negative-oom.patch >/dev/null && patch -p1 -N -s < $here/kubelet-no-negative-oom.patch || true; })
export GOROOT=$W/root/usr/lib/go-1.19 PATH=$W/root/usr/lib/go-1.19/bin:$W/root/usr/bin:$PATH
export LD_LIBRARY_PATH=$W/root/usr/lib/x86_64-linux-gnu GOCACHE=$W/gocache GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 HOME=$W/home
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_COMMIT=0000000000000000000000000000000000000000
unset GOFLAGS GOPATH GO111MODULE
cd $K && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl"
ls -la $B
