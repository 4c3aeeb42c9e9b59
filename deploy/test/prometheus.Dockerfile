# Stand-in for prom/prometheus: Debian's Prometheus 2 with the official image's entry point, user and paths
# (and wget, which the compose health check calls, as busybox gives the official image).
ARG BASE=s3router-test/base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown nobody:nogroup /prometheus
USER 65534:65534
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
LABEL org.s3router.stand-in="prom/prometheus"
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
