# s3router image: one image for CPU and GPU hosts.
#   docker build -t s3router .
#   docker run -p 8000:8000 s3router                  # CPU
#   docker run --gpus all -e S3R_DEVICE=cuda -e S3R_DTYPE=float16 -p 8000:8000 s3router   # GPU
# The locked torch wheel (PyPI's Linux build) carries its own CUDA libraries, so a GPU host needs only its
# driver, passed in by the NVIDIA Container Toolkit: no CUDA base image. Both stages build on the same
# Python image, so the venv copied from one resolves its interpreter in the other.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv holding exactly requirements-serve.lock, and the CPU kernel compiled once ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TORCH_EXTENSIONS_DIR=/opt/torch_extensions
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements-serve.lock ./
# every package pinned and hash-checked; nothing resolved here
RUN pip install --require-hashes --no-deps -r requirements-serve.lock
COPY pyproject.toml README.md ./
COPY router_core ./router_core
COPY service ./service
# the project alone, built with the locked setuptools (no build isolation: nothing unlocked comes in)
RUN pip install --no-deps --no-build-isolation . \
 && python -c "from router_core.kernels.cpu import load_extension; load_extension()"

# ---- runtime: non-root ----
FROM ${PYTHON_IMAGE} AS runtime
# GLIBC_TUNABLES: freed blocks up to 32 MB stay in the heap, so layer outputs are not page-faulted in afresh
# on every pass (6-11% off a CPU forward pass; the Makefile's serve sets the same). The extension built
# above stays root's: the service imports it as built.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    TRITON_CACHE_DIR=/var/cache/s3router/triton \
    S3R_KERNEL_CACHE_DIR=/var/cache/s3router/kernels \
    S3R_BUNDLE_DIR=/app/masks \
    S3R_HOST=0.0.0.0 \
    S3R_PORT=8000
# gcc + libc headers: on a GPU, Triton compiles its small C launcher on first use (triton/runtime/build.py
# looks for gcc or clang). libc6-dev is left to apt so that it matches the image's own libc6.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc=4:12.2.0-3 libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# /var/cache/s3router, writable by the service user: Triton's compiled kernels and tuned tiles (GPU hosts) and
# the CPU kernel's timed schedules (S3R_KERNEL_CACHE_DIR); docker-compose keeps it on a volume so that a
# restart does not time them again
RUN groupadd --system --gid 999 s3router && useradd --system --uid 999 --gid 999 --home-dir /app s3router \
 && mkdir -p /var/cache/s3router/triton /var/cache/s3router/kernels && chown -R 999:999 /var/cache/s3router
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch_extensions /opt/torch_extensions
WORKDIR /app
# the bundled default model (S3R_BUNDLE_DIR): served as is, or its masks seeded into Redis by
# `s3router masks seed` (docker-compose's masks-init)
COPY --chown=999:999 masks ./masks
USER 999:999
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["s3router", "serve"]
