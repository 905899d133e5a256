#!/usr/bin/env bash
# The benchmark suite in one command: installs the baselines and load generators from Debian packages
# (when run as root and they are missing), the `bench` extra into .venv, then runs bench/run.py.
# Arguments go to bench/run.py (e.g. --duration 10, --only pair, --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/sysdeps.sh  # shared with scripts/test
sysdeps_ensure bench nginx=nginx haproxy=haproxy tinyproxy=tinyproxy wrk=wrk h2load=nghttp2-client
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import matplotlib' 2>/dev/null || "$PY" -m pip install -q 'matplotlib>=3.7' 'py-spy>=0.3' || echo "bench: matplotlib missing: no chart" >&2
exec "$PY" bench/run.py "$@"
