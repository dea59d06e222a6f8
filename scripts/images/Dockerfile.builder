# The Kubernetes executor's builder: Debian bookworm's buildah (1.28) to build and push images from
# inside an unprivileged pod, and git to fetch the commit there. Adapted from the project's shared
# recipe (shared images, Dockerfile.buildah, verified on the local cluster: root in the container,
# default capabilities, seccomp not set) with git added.
ARG BASE=deploybot-local/debian:bookworm
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends buildah git ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# vfs needs no overlay mounts; chroot isolation needs no extra namespaces for RUN.
ENV STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
CMD ["buildah", "version"]
