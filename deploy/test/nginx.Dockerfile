# Stand-in for nginx:1.27-alpine: Debian's nginx, logging to the container's output, and wget for the
# compose health check (busybox gives the official image one).
ARG BASE=s3router-test/base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light wget \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8080
STOPSIGNAL SIGQUIT
LABEL org.s3router.stand-in="nginx:1.27-alpine"
CMD ["nginx", "-g", "daemon off;"]
