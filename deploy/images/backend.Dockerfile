# syntax=docker/dockerfile:1.7
#
# The example inference backend: a real NVIDIA Triton Inference Server (the `tritonserver` binary that
# ships inside the nvidia-pytriton wheel, CPU only) serving the digits classifier of
# client/backends/digits.py from the directory `ratls sidecar unseal` decrypted (`--model-dir`).
# Build from the repository root:
#
#   docker build -f deploy/images/backend.Dockerfile -t ghcr.io/OWNER/ratls-backend:0.1.0 .
#
# Why pytriton on python:3.11-slim rather than nvcr.io/nvidia/tritonserver: the wheel bundles every
# shared library tritonserver needs except glibc, so the image is ~1 GB instead of ~15 GB, and it is the
# exact server the tests and the demo run. For your own models on GPUs use the stock image instead
# (docs/deploy.md, "Bring your own Triton"): `tritonserver --model-repository=/models
# --http-address=127.0.0.1 --grpc-address=127.0.0.1 --metrics-address=127.0.0.1`.
#
# The server binds 127.0.0.1 only (`--host`, the default): in the pod only the sidecar reaches it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ratls ./ratls
COPY proxy ./proxy
COPY sidecar ./sidecar
COPY client ./client
COPY keybroker ./keybroker
RUN python -m pip wheel --wheel-dir /wheels ".[ml]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ratls-backend" \
      org.opencontainers.image.description="Example Triton backend (nvidia-pytriton) serving the digits model from an unsealed directory" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels "ratls[ml]" \
    && python -m pip uninstall -y pip \
    && groupadd --system --gid 10001 ratls \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ratls
# 8000 HTTP, 8001 gRPC, 8002 metrics: all on 127.0.0.1 inside the pod.
EXPOSE 8000 8001 8002
USER 10001:10001
ENTRYPOINT ["python", "-m", "client.backends.triton_digits"]
CMD ["--host", "127.0.0.1", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002", "--model-dir", "/models", "--workspace", "/tmp/pytriton"]
