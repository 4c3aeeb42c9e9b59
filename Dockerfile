# syntax=docker/dockerfile:1
# s3router image. CPU by default; CUDA with:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---- build: a virtualenv with the project, and the CPU kernel compiled once ----
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TORCH_EXTENSIONS_DIR=/opt/torch_extensions
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router_core ./router_core
COPY service ./service
RUN pip install --extra-index-url "$TORCH_INDEX" 'torch==2.11.*' 'torchaudio==2.11.*' \
 && pip install .
RUN python -c "from router_core.kernels.cpu import load_extension; load_extension()"

# ---- runtime: no compiler, non-root ----
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    TRITON_CACHE_DIR=/var/cache/s3router/triton \
    S3R_HOST=0.0.0.0 \
    S3R_PORT=8000
# TRITON_CACHE_DIR (GPU images): compiled kernels and the tile choices tuned at start-up, writable by the
# service user; docker-compose keeps it on a volume so that a restart does not tune again
RUN groupadd --system --gid 999 s3router && useradd --system --uid 999 --gid 999 --home-dir /app s3router \
 && mkdir -p /var/cache/s3router/triton && chown -R 999:999 /var/cache/s3router
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch_extensions /opt/torch_extensions
WORKDIR /app
COPY --chown=999:999 masks ./masks
USER 999:999
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["s3router", "serve"]
