# Stand-in for python:3.11-slim-bookworm: Debian's Python 3.11 with venv, pip and the headers, as `python`.
ARG BASE=s3router-test/base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python3
LABEL org.s3router.stand-in="python:3.11-slim-bookworm"
CMD ["python3"]
