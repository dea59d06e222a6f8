# Shared by the benchmarks (sourced): a registry with htpasswd, a fixture repository served by
# git daemon, and a signed GitHub tag push. Expects $state (a fresh folder), $root (the
# repository), $BENCH_SECRET and $REGISTRY_PASSWORD; everything listens on 127.0.0.1 only and
# is stopped on exit.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost

# Sets $registry (host:port): docker-registry with user `bench`, password on stdin.
start_registry() {
  local port; port=$(free_port)
  printf '%s' "$REGISTRY_PASSWORD" | htpasswd -iBc "$state/htpasswd" bench >/dev/null 2>&1
  cat > "$state/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $state/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port}
auth: {htpasswd: {realm: bench, path: $state/htpasswd}}
YAML
  /usr/bin/docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
  pids+=($!); wait_port "$port"
  registry=127.0.0.1:$port
}

# serve_repo FIXTURE: commits tests/fixtures/FIXTURE and serves it; sets $work, $served,
# $sha and $git_url.
serve_repo() {
  work=$state/work; served=$state/served
  cp -r "$root/tests/fixtures/$1" "$work"
  git -C "$work" init -q --initial-branch=master && git -C "$work" add -A && git -C "$work" commit -qm sample
  sha=$(git -C "$work" rev-parse HEAD)
  mkdir -p "$served" && git clone -q --bare "$work" "$served/repo.git"
  local port; port=$(free_port)
  git daemon --reuseaddr --export-all --listen=127.0.0.1 --port="$port" --base-path="$served" "$served" 2>"$state/git-daemon.log" &
  pids+=($!); wait_port "$port"
  git_url=git://127.0.0.1:$port/repo.git
}

# tag TAG [SHA]: tags SHA (default $sha) in the served repository.
tag() { git -C "$work" tag -f "$1" "${2:-$sha}" >/dev/null && git -C "$work" push -q -f "$served/repo.git" "refs/tags/$1"; }

# commit MESSAGE: commits whatever changed in $work (or nothing) and sets $sha.
commit() {
  git -C "$work" add -A && git -C "$work" commit -q --allow-empty -m "$1"
  sha=$(git -C "$work" rev-parse HEAD)
  git -C "$work" push -q -f "$served/repo.git" HEAD:refs/heads/master
}

# send_push PORT PROJECT TAG SHA: posts the published tag push (tests/fixtures/github/
# push.tag.json) pointed at $git_url, signed with $BENCH_SECRET; prints the job id.
send_push() {
  python3 - "$root/tests/fixtures/github/push.tag.json" "$3" "$4" "$git_url" "$1" "$2" <<'PY'
import hashlib, hmac, json, os, sys, urllib.request, uuid
body_file, tag, sha, url, port, project = sys.argv[1:]
payload = json.load(open(body_file))
payload.update({"ref": f"refs/tags/{tag}", "after": sha})
payload["head_commit"]["id"] = sha
payload["repository"]["clone_url"] = url
body = json.dumps(payload).encode()
sig = "sha256=" + hmac.new(os.environ["BENCH_SECRET"].encode(), body, hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/{project}", data=body, method="POST", headers={
    "Content-Type": "application/json", "X-GitHub-Event": "push",
    "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sig})
print(json.load(urllib.request.urlopen(req))["job"])
PY
}

# wait_job PORT JOB: waits until the job ends; prints its state.
wait_job() {
  python3 - "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, job = sys.argv[1:]
while True:
    state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/jobs/{job}"))["job"]["state"]
    if state not in ("queued", "running"):
        print(state)
        break
    time.sleep(0.05)
PY
}

# start_deploybot NAME [EXTRA_TOML]: `deploybot serve` (release build) for project `bench` on
# this run's registry, with the local toolchains; sets $db_port. Config, store and log are
# $state/deploybot-NAME.{toml,log} and $state/store-NAME.
start_deploybot() {
  local name=$1 extra=${2:-} port; port=$(free_port)
  cat > "$state/deploybot-$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
data_dir = "$state/store-$name"
[log]
filter = "warn"
[worker]
service_concurrency = 3
clone_schemes = ["https", "git"]
[registry]
address = "$registry"
username = "bench"
password_env = "REGISTRY_PASSWORD"
$(cat "$root/config/local-toolchains.toml")
[[projects]]
name = "bench"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret_env = "BENCH_SECRET"
allowed_images = ["myevents/*"]
allowed_deployments = ["*"]
clone_url = "${git_url:?serve the repository first}"
allow_network = true
$extra
TOML
  "$root/target/release/deploybot" serve --config "$state/deploybot-$name.toml" >"$state/deploybot-$name.log" 2>&1 &
  pids+=($!); wait_port "$port"
  db_port=$port
}

# seed_release TAG NAMESPACE: the seed's shell pipeline builds and pushes TAG of the served
# repository (bench/seed-pipeline.sh), then `kubectl set image` and `kubectl rollout status` for
# each of $services in NAMESPACE; prints the seconds it all took. Needs kubectl() defined.
seed_release() {
  local t=$1 ns=$2 t0 s; tag "$t"
  t0=$(date +%s.%N)
  REGISTRY=$registry GIT_URL=$git_url TAG=$t STATE=$state bash "$root/bench/seed-pipeline.sh" >"$state/seed-$t.log" 2>&1 \
    || { tail -20 "$state/seed-$t.log" >&2; exit 1; }
  for s in "${services[@]}"; do kubectl -n "$ns" set image "deployment/$s" "api=$registry/myevents/$s:$t" >/dev/null; done
  for s in "${services[@]}"; do kubectl -n "$ns" rollout status "deployment/$s" --timeout=300s >/dev/null; done
  python3 -c "import time; print(f'{time.time()-$t0:.1f}')"
}
