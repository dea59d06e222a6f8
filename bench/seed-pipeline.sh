#!/usr/bin/env bash
# The seed's pipeline, as teams write it by hand (Travis/GitLab CI shape): one service after the
# other, with the docker CLI: check and compile in a toolchain container, docker build, docker
# push. Same work as the sample's .deploybot.toml (go vet + go test + go build; npm ci + webpack).
# Called by bench/pipeline.sh with REGISTRY, GIT_URL, TAG, STATE and REGISTRY_PASSWORD set.
set -euo pipefail
export DOCKER_BUILDKIT=0 DOCKER_CONFIG=$STATE/seed-docker-config
ws=$STATE/seed-ws-$TAG
rm -rf "$ws"
git clone -q --depth 1 --branch "$TAG" "$GIT_URL" "$ws"
chmod -R a+rwX "$ws"
printf '%s' "$REGISTRY_PASSWORD" | docker login -u bench --password-stdin "$REGISTRY" >/dev/null

for svc in eventservice bookingservice; do
  docker run --rm --network none --user 1000:1000 -v "$ws":/workspace -w "/workspace/src/$svc" \
    -v seed-gocache:/go deploybot-local/golang:1.19 \
    sh -ec "go vet ./... && go test ./... && go build -trimpath -o $svc ."
  docker build -q -t "$REGISTRY/myevents/$svc:$TAG" "$ws/src/$svc"
  docker push -q "$REGISTRY/myevents/$svc:$TAG"
done

docker run --rm --user 1000:1000 -v "$ws":/workspace -w /workspace/src/frontend \
  -v seed-npmcache:/npm-cache deploybot-local/node:18 \
  sh -ec 'npm ci --no-audit --no-fund && npx webpack --mode production'
docker build -q -t "$REGISTRY/myevents/frontend:$TAG" "$ws/src/frontend"
docker push -q "$REGISTRY/myevents/frontend:$TAG"
rm -rf "$ws"
