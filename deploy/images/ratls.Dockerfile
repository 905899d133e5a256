# syntax=docker/dockerfile:1.7
#
# The ratls image: one image, several entry points (`ratls sidecar`, `ratls sidecar unseal`,
# `ratls keybroker`, `ratls proxy`, `ratls inspect`). Build from the repository root:
#
#   docker build -f deploy/images/ratls.Dockerfile -t ghcr.io/OWNER/ratls:0.1.0 .
#
# Stage 1 (builder) turns the source tree and every dependency into wheels; it may hold a compiler
# for a dependency that ships no wheel for the platform. Stage 2 (runtime) is python:3.11-slim with
# those wheels installed from a bind mount (they never become a layer), pip/setuptools removed, and
# a fixed non-root UID so Kubernetes' runAsNonRoot can check it without resolving names.
# The image holds no key, certificate or model: the sidecar makes its key in memory inside the TEE.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C toolchain only for dependencies without a wheel for this platform (arm64 uvloop, say); it
# stays in this stage.
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
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ratls" \
      org.opencontainers.image.description="Attested-TLS sidecar, proxy and key broker for confidential inference" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RATLS_SIM_DIR=/var/run/ratls/sim \
    HOME=/tmp
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels ratls \
    && python -m pip uninstall -y pip setuptools wheel \
    && groupadd --system --gid 10001 ratls \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ratls \
    && install -d -o 10001 -g 10001 -m 0700 /var/run/ratls
# 8443: attested TLS (sidecar); 9090: admin (/healthz, /readyz, /metrics); 15001: proxy.
EXPOSE 8443 9090 15001
USER 10001:10001
ENTRYPOINT ["ratls"]
CMD ["--help"]
