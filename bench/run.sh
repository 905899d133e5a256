#!/usr/bin/env bash
# The benchmark suite in one command: installs the baselines and load generators from Debian packages
# (when run as root and they are missing), the `bench` extra into .venv, then runs bench/run.py.
# Arguments go to bench/run.py (e.g. --duration 10, --only pair, --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in nginx:nginx haproxy:haproxy tinyproxy:tinyproxy wrk:wrk h2load:nghttp2-client; do
  bin=${t%%:*}; pkg=${t##*:}
  command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing ${need[*]}" >&2
    apt-get update -qq
    for pkg in "${need[@]}"; do
      if apt-cache policy "$pkg" | grep -q 'Candidate: [0-9]'; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
      else
        echo "bench: package $pkg has no candidate: its baselines will be skipped" >&2
      fi
    done
  else
    echo "bench: missing ${need[*]} (run as root with apt-get to install): those baselines are skipped" >&2
  fi
fi
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import matplotlib' 2>/dev/null || "$PY" -m pip install -q 'matplotlib>=3.7' 'py-spy>=0.3' || echo "bench: matplotlib missing: no chart" >&2
exec "$PY" bench/run.py "$@"
