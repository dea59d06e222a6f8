#!/usr/bin/env bash
# deploybot's main job, end to end, on a fresh machine: a signed tag push of the sample MyEvents
# repository (tests/fixtures/myevents, served over git) goes in; its three services are checked,
# compiled and built in containers, pushed to a local registry (Debian's docker-registry with
# htpasswd), and rolled out to three Deployments on a local Kubernetes (v1.20.2 built from
# Debian's sources), which end up running the new images, pinned by digest.
#
#   scripts/demo.sh                 # TAG=v1.0.0 PORT=8080 REGISTRY_PORT=5001 GIT_PORT=9419
#
# Everything lives under data/demo/ (store, registry, repository, generated secrets, logs).
# deploybot, the registry and git daemon keep running afterwards, so the pages can be looked at;
# the next run stops and restarts deploybot, and resets the Deployments to their placeholder
# image so that every run shows a real rollout. Secrets are generated into files (mode 600) and
# passed by file or stdin only, never as process arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
port=${PORT:-8080}
registry_port=${REGISTRY_PORT:-5001}
git_port=${GIT_PORT:-9419}
tag=${TAG:-v1.0.0}
demo=$root/data/demo
k8s=${DEPLOYBOT_K8S_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deploybot/k8s-v1.20.2}
started=$(date +%s)
say() { echo "== $*"; }

command -v cargo >/dev/null || { echo "demo: cargo is needed (rustup)" >&2; exit 1; }
command -v python3 >/dev/null || {
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -yq python3 >/dev/null
}
say "real parts: Docker, docker-registry, git, base images, Kubernetes (first time: ~10 min)"
DEPLOYBOT_PARTS=demo bash scripts/real-parts.sh
kubectl() { "$k8s/src/kubernetes-1.20.2/_output/bin/kubectl" --kubeconfig "$k8s/run/kubeconfig" "$@"; }

say "building deploybot (release)"
cargo build --release --locked --quiet
bin=$root/target/release/deploybot

mkdir -p "$demo"/{registry,git,logs}
(umask 077
 for f in webhook-secret registry-password; do
   [ -s "$demo/$f" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$demo/$f"
 done)

running() { local p; p=$(cat "$1" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "demo: nothing listens on $1 (see $demo/logs)" >&2; exit 1; }

say "registry on 127.0.0.1:$registry_port (htpasswd user deploybot)"
if ! running "$demo/registry.pid"; then
  htpasswd -iBc "$demo/registry/htpasswd" deploybot < "$demo/registry-password" 2>/dev/null
  cat > "$demo/registry/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $demo/registry/data}}
http: {addr: 127.0.0.1:$registry_port}
auth: {htpasswd: {realm: deploybot-demo, path: $demo/registry/htpasswd}}
EOF
  setsid /usr/bin/docker-registry serve "$demo/registry/config.yml" > "$demo/logs/registry.log" 2>&1 < /dev/null &
  echo $! > "$demo/registry.pid"
fi
wait_port "$registry_port"

say "the MyEvents repository, served by git daemon on 127.0.0.1:$git_port"
git_env=(env GIT_AUTHOR_NAME="MyEvents Dev" GIT_AUTHOR_EMAIL=dev@myevents.test GIT_COMMITTER_NAME="MyEvents Dev" GIT_COMMITTER_EMAIL=dev@myevents.test)
if [ ! -d "$demo/git/work/.git" ]; then
  mkdir -p "$demo/git/work" && cp -r tests/fixtures/myevents/. "$demo/git/work/"
  (cd "$demo/git/work" && git init -q --initial-branch=master && git add -A && "${git_env[@]}" git commit -qm "MyEvents sample")
  git clone -q --bare "$demo/git/work" "$demo/git/served/myevents.git"
fi
sha=$(git -C "$demo/git/work" rev-parse HEAD)
git -C "$demo/git/work" tag -f "$tag" "$sha" >/dev/null
git -C "$demo/git/work" push -q -f "$demo/git/served/myevents.git" "refs/tags/$tag" "HEAD:refs/heads/master"
if ! running "$demo/git.pid"; then
  setsid git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$git_port" \
    --base-path="$demo/git/served" "$demo/git/served" > "$demo/logs/git.log" 2>&1 < /dev/null &
  echo $! > "$demo/git.pid"
fi
wait_port "$git_port"

say "namespace myevents: pull secret and the three Deployments (k8s/examples/myevents.yaml)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
printf 'FROM deploybot-local/static:latest\nCOPY health /www/\nUSER 65534\nCMD ["httpd","-f","-p","8080","-h","/www"]\n' > "$tmp/Dockerfile"
echo ok > "$tmp/health"
DOCKER_BUILDKIT=0 docker build -q -t deploybot-local/initial:v0 "$tmp" >/dev/null 2>&1
kubectl apply -f k8s/examples/myevents-namespace.yaml >/dev/null
auth=$(printf 'deploybot:%s' "$(cat "$demo/registry-password")" | base64 -w0)
printf '{"apiVersion":"v1","kind":"Secret","metadata":{"name":"registry","namespace":"myevents"},"type":"kubernetes.io/dockerconfigjson","stringData":{".dockerconfigjson":"{\\"auths\\":{\\"127.0.0.1:%s\\":{\\"auth\\":\\"%s\\"}}}"}}' \
  "$registry_port" "$auth" | kubectl apply -f - >/dev/null
kubectl apply -f k8s/examples/myevents.yaml >/dev/null
for d in eventservice bookingservice frontend; do kubectl -n myevents rollout status "deployment/$d" --timeout=180s >/dev/null; done
kubectl -n myevents get deployments -o wide | sed 's/^/   /'

cat > "$demo/deploybot.toml" <<EOF
# Written by scripts/demo.sh for this machine's local parts; everything not here comes from
# deploybot's embedded defaults (config/default.toml). No secret is in this file.
[server]
listen = "127.0.0.1:$port"
data_dir = "$demo/store"

[worker]
# The sample repository is served by git daemon on this machine (git://); https only elsewhere.
clone_schemes = ["https", "git"]

[registry]
address = "127.0.0.1:$registry_port"
username = "deploybot"
password_file = "$demo/registry-password"

$(cat "$root/config/local-toolchains.toml")

[[projects]]
name = "myevents"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret_file = "$demo/webhook-secret"
clone_url = "git://127.0.0.1:$git_port/myevents.git"
allowed_deployments = ["eventservice", "bookingservice", "frontend"]
# The frontend's compile step runs npm ci, which needs the network.
allow_network = true

[[environments]]
name = "production"
namespace = "myevents"
kubeconfig = "$k8s/run/kubeconfig"
tags = ["v*"]
EOF
"$bin" check-config --config "$demo/deploybot.toml" | sed 's/^/   /'

if running "$demo/serve.pid"; then kill -TERM "$(cat "$demo/serve.pid")"; sleep 1; fi
url="http://127.0.0.1:$port"
say "deploybot serve on $url (log: $demo/logs/serve.log)"
setsid "$bin" serve --config "$demo/deploybot.toml" > "$demo/logs/serve.log" 2>&1 < /dev/null &
echo $! > "$demo/serve.pid"
for _ in $(seq 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$url/readyz" >/dev/null || { tail -20 "$demo/logs/serve.log"; exit 1; }

say "POST $url/hooks/myevents: a signed GitHub tag push of $tag ($sha)"
# The published tag push payload (tests/fixtures/github/push.tag.json), pointed at this
# repository, commit and tag; signed with HMAC-SHA256 over the exact bytes sent.
python3 - "$tag" "$sha" "git://127.0.0.1:$git_port/myevents.git" "$demo/webhook-secret" "$tmp" <<'EOF'
import hashlib, hmac, json, sys
tag, sha, url, secret_file, out = sys.argv[1:]
payload = json.load(open("tests/fixtures/github/push.tag.json"))
payload["ref"] = f"refs/tags/{tag}"
payload["after"] = sha
payload["head_commit"]["id"] = sha
payload["repository"]["clone_url"] = url
body = json.dumps(payload).encode()
open(f"{out}/body.json", "wb").write(body)
key = open(secret_file, "rb").read().strip()
open(f"{out}/signature", "w").write("sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest())
EOF
delivery=$(cat /proc/sys/kernel/random/uuid)
answer=$(curl -sS -X POST "$url/hooks/myevents" -H 'Content-Type: application/json' \
  -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: $delivery" \
  -H @<(printf 'X-Hub-Signature-256: %s\n' "$(cat "$tmp/signature")") --data-binary @"$tmp/body.json")
echo "   $answer"
job=$(echo "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"])')

say "job $job: checkout → check → compile → image → push → deploy (following its state)"
last=""
while :; do
  state=$(curl -sf "$url/api/v1/jobs/$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["state"])')
  [ "$state" != "$last" ] && echo "   $(date +%T) $state" && last=$state
  case "$state" in queued|running) sleep 1 ;; *) break ;; esac
done

echo
"$bin" job "$job" --config "$demo/deploybot.toml" | sed 's/^/   /'
say "what runs in namespace myevents now"
kubectl -n myevents get deployments -o custom-columns='DEPLOYMENT:.metadata.name,READY:.status.readyReplicas,IMAGE:.spec.template.spec.containers[0].image' | sed 's/^/   /'
kubectl -n myevents get pods -o custom-columns='POD:.metadata.name,READY:.status.containerStatuses[0].ready,TERMINATING SINCE:.metadata.deletionTimestamp,IMAGE ID:.status.containerStatuses[0].imageID' | sed 's/^/   /'

cat <<EOF

== done in $(( $(date +%s) - started )) s: job $job is $state. Where to look:
   $url/jobs/$job                    the pipeline page (stages by service, digests, deploys)
   $url/                             recent jobs;  $url/deliveries: what each delivery became
   $bin --config $demo/deploybot.toml jobs
   $bin --config $demo/deploybot.toml logs $job --service frontend
   $bin --config $demo/deploybot.toml rollback myevents frontend
   deploybot (pid $(cat "$demo/serve.pid")), the registry and git daemon keep running; stop deploybot with: kill $(cat "$demo/serve.pid")
EOF
[ "$state" = deployed ]
