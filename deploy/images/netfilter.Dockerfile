# syntax=docker/dockerfile:1.7
#
# The pod's firewall init container: iptables (nft backend) and a shell, nothing else. It runs once,
# before every other container, as root with CAP_NET_ADMIN only (the one container of the pod that
# is not non-root), installs the rules of deploy/kubernetes/base/firewall.sh (mounted from the
# ConfigMap) into the pod's network namespace, and exits. Build from the repository root:
#
#   docker build -f deploy/images/netfilter.Dockerfile -t ghcr.io/OWNER/ratls-netfilter:0.1.0 .

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
# Root is needed for netfilter; Kubernetes grants only CAP_NET_ADMIN (drop ALL, add NET_ADMIN).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/bin/sh"]
