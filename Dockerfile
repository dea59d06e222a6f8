# deploybot's runtime image.
#
# No Rust toolchain image can be pulled on the machine this was written on, so nothing is compiled
# in here: the image takes a release binary that was already built on the host from the build
# context (target/release/deploybot, plus config/; .dockerignore sends nothing else). Build it
# from the repository root:
#
#   cargo build --release --locked
#   DOCKER_BUILDKIT=0 docker build --build-arg BASE=deploybot-local/debian:bookworm -t deploybot .
#
# scripts/build-image.sh does all of that: it also makes deploybot-local/debian:bookworm with
# scripts/build-base-images.sh when that image is missing. Where a registry can be reached, use
# the ordinary base instead:
#
#   docker build --build-arg BASE=debian:bookworm-slim -t deploybot .
#
# The binary links against glibc dynamically (SQLite is compiled in), so build it on a system whose
# glibc is no newer than the base's (Debian bookworm: 2.36), e.g. on bookworm itself.
#
# Run it (the bundled config/deploybot.toml reads project myevents's secret from
# MYEVENTS_WEBHOOK_SECRET; without it `serve` exits 2 and names the missing variable):
#
#   docker run -d -p 8080:8080 -e MYEVENTS_WEBHOOK_SECRET=... -v deploybot-data:/var/lib/deploybot deploybot
#   docker stop -t 40 <container>   # SIGTERM; in-flight requests get up to shutdown_timeout_secs (30)
#
# Without --config, deploybot reads config/deploybot.toml relative to the working directory (/):
# /config is a link to /etc/deploybot, so `docker run ... deploybot check-config` and
# `docker exec <container> deploybot deliveries` read the same file as `serve`.
#
# Other configuration: mount a file over /etc/deploybot/deploybot.toml, or set any key with
# DEPLOYBOT__SECTION__KEY. Build arguments: BASE (above), CONFIG (the file baked in as
# /etc/deploybot/deploybot.toml, default config/deploybot.toml) and CA_CERTIFICATES (1, the default,
# installs Debian's ca-certificates when the base lacks a CA bundle; 0 skips that) and BINARY (the
# binary copied in, default target/release/deploybot). git is installed from Debian when missing.
ARG BASE=deploybot-local/debian:bookworm
FROM ${BASE}

ARG CA_CERTIFICATES=1
# One layer, before the binary is copied, so that rebuilding after a code change reuses it. git
# fetches each job's commit (deploybot reads the pipeline from it, whichever executor builds). The
# CA bundle is for outgoing TLS; CA_CERTIFICATES=0 leaves it out.
RUN set -eu; \
    packages=git; \
    if [ "$CA_CERTIFICATES" = 1 ] && [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then packages="$packages ca-certificates"; fi; \
    if ! command -v git >/dev/null || [ "$packages" != git ]; then \
      apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages \
      && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/*.log; \
    fi; \
    groupadd --system --gid 10001 deploybot; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin deploybot; \
    mkdir -p /etc/deploybot /var/lib/deploybot; \
    ln -s /etc/deploybot /config; \
    chown 10001:10001 /var/lib/deploybot; \
    chmod 0750 /var/lib/deploybot

ARG CONFIG=config/deploybot.toml
COPY ${CONFIG} /etc/deploybot/deploybot.toml
# The binary to run: the release build, or another one scripts/build-image.sh was given (BINARY).
ARG BINARY=target/release/deploybot
COPY ${BINARY} /usr/local/bin/deploybot

ENV DEPLOYBOT__SERVER__LISTEN=0.0.0.0:8080 \
    DEPLOYBOT__SERVER__DATA_DIR=/var/lib/deploybot
# The SQLite database and the body segments. Declared after the chown, so a new volume starts out
# owned by the deploybot user.
VOLUME ["/var/lib/deploybot"]
WORKDIR /
USER 10001:10001
EXPOSE 8080
# deploybot finishes in-flight requests on SIGTERM and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/deploybot"]
CMD ["serve", "--config", "/etc/deploybot/deploybot.toml"]
