#!/bin/bash
# Build the deploybot-local/* base images without pulling any image from a registry.
#
# Adapted from the project's shared images recipe (the shared build-base-images.sh and its
# Dockerfiles). It exists because no image can be pulled from any public registry on this machine, so
# even `FROM debian:bookworm-slim` fails; only the Debian archive is reachable. This copy lives in the
# repository so that scripts/build-image.sh can make the base of deploybot's own image.
#
# What it builds: a Debian bookworm rootfs from debootstrap (imported with `docker import`), then Go,
# Node, a static busybox runtime and the Kubernetes executor's builder (buildah + git) from Debian
# packages (scripts/images/Dockerfile.*):
#   $PREFIX/debian:bookworm  $PREFIX/golang:1.19  $PREFIX/node:18  $PREFIX/static:latest  $PREFIX/builder:1
# Needs root, docker, debootstrap (`apt-get install debootstrap`), and the Debian archive named in this
# machine's apt sources (or MIRROR). Skips an image that exists unless --force; once debian is
# (re)built, the images named after it are rebuilt on it too. A missing debian image is built first.
#
# Usage: build-base-images.sh [--force] [debian|golang|node|static|builder]...   (default: all five, in order)
# Settings, all optional: PREFIX (deploybot-local), MIRROR, SECURITY_MIRROR, TMPDIR (where the rootfs
# is made), EXTRA_CA_DIR (default /usr/local/share/ca-certificates; empty skips it).
# The images carry this machine's locally trusted CAs: never push them anywhere public.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dockerfiles=$here/images
P=${PREFIX:-deploybot-local}
# Default archive addresses: the ones this machine's apt already uses.
apt_uris=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | awk '/^URIs:/{print $2} $1=="deb"{print $2}' || true)
MIRROR=${MIRROR:-$(grep -v -- '-security' <<<"$apt_uris" | head -n1 || true)}
SECURITY=${SECURITY_MIRROR:-$(grep -- '-security' <<<"$apt_uris" | head -n1 || true)}
[ -n "$MIRROR" ] || { echo "no Debian archive found in apt sources; set MIRROR" >&2; exit 2; }
export DOCKER_BUILDKIT=0   # legacy builder: buildx is not installed
force=0; want=()
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    debian|golang|node|static|builder) want+=("$a") ;;
    *) echo "usage: $0 [--force] [debian|golang|node|static|builder]..." >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -gt 0 ] || want=(debian golang node static builder)
declare -A tag=([debian]=$P/debian:bookworm [golang]=$P/golang:1.19 [node]=$P/node:18 [static]=$P/static:latest [builder]=$P/builder:1)
# The others are built FROM the debian image: make it first when it is missing, rather than let
# `docker build` try to pull it.
if [ "${want[0]}" != debian ] && ! docker image inspect "${tag[debian]}" >/dev/null 2>&1; then
  want=(debian "${want[@]}")
fi

root=
cleanup() {  # never delete through a mount left behind by debootstrap
  [ -n "$root" ] || return 0
  if grep -q " $root/" /proc/mounts; then echo "left $root in place: something is still mounted under it" >&2
  else rm -rf --one-file-system "$root"; fi
}
trap cleanup EXIT

build_debian() {
  root=$(mktemp -d "${TMPDIR:-/tmp}/debootstrap.XXXXXX"); chmod 755 "$root"   # apt's _apt user must reach it
  debootstrap --variant=minbase bookworm "$root" "$MIRROR"
  {
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR"
    # Without a security archive in the apt sources (and no SECURITY_MIRROR), leave the line out
    # rather than write a broken one.
    [ -z "$SECURITY" ] || printf 'deb %s bookworm-security main\n' "$SECURITY"
  } > "$root/etc/apt/sources.list"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  # The host's locally trusted CAs (where egress TLS is intercepted, npm fails without them) go in too:
  # every image that installs ca-certificates then trusts them. EXTRA_CA_DIR= skips this.
  ca=${EXTRA_CA_DIR-/usr/local/share/ca-certificates}
  if [ -n "$ca" ] && [ -d "$ca" ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"; cp -r "$ca/." "$root/usr/local/share/ca-certificates/"
  fi
  chroot "$root" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 upgrade -yq && apt-get clean'
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/* "$root"/root/.cache
  : > "$root/etc/resolv.conf"; : > "$root/etc/hostname"   # the host's copies; docker mounts its own
  tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "${tag[debian]}"
}

build_from_dockerfile() {  # no build context: the Dockerfiles copy nothing from the host
  local nocache=(); [ $force = 0 ] || nocache=(--no-cache)   # --force re-runs apt-get, not the layer cache
  docker build "${nocache[@]}" --build-arg "BASE=${tag[debian]}" -t "${tag[$1]}" - < "$dockerfiles/Dockerfile.$1"
}

for name in "${want[@]}"; do
  img=${tag[$name]}
  if [ $force = 0 ] && docker image inspect "$img" >/dev/null 2>&1; then echo "skip $img (exists; --force rebuilds)"; continue; fi
  t0=$SECONDS
  if [ "$name" = debian ]; then build_debian; force=1; else build_from_dockerfile "$name"; fi   # new base: rebuild the rest
  size=$(docker image inspect -f '{{.Size}}' "$img")
  echo "built $img in $((SECONDS - t0)) s, $((size / 1000000)) MB"
done
docker image ls "$P/*"
