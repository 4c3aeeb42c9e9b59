# Stand-in for redis:7-alpine: Debian's Redis 7, working in /data. Like the official image, it turns protected
# mode off for `redis-server` commands (the compose network is the boundary).
ARG BASE=s3router-test/base:bookworm
FROM ${BASE}
# the entry point is written with printf; its $1 and $@ are meant for the script, not this shell
# hadolint ignore=DL3008,SC2016
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data \
 && printf '#!/bin/sh\nif [ "$1" = redis-server ]; then exec "$@" --protected-mode no; fi\nexec "$@"\n' \
      > /usr/local/bin/docker-entrypoint.sh \
 && chmod +x /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
LABEL org.s3router.stand-in="redis:7-alpine"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
