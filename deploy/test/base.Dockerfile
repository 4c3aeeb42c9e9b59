# Stand-in base for the deployment test (scripts/docker_test.sh), used only when no registry can be pulled
# from: a `debootstrap --variant=minbase bookworm` root imported as ROOTFS, plus the host's extra CA
# certificates (a TLS-intercepting proxy's), so that apt and pip inside the stand-ins reach their registries.
ARG ROOTFS=s3router-test/rootfs:bookworm
FROM ${ROOTFS}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
COPY ca-certificates/ /usr/local/share/ca-certificates/
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/*
