#!/usr/bin/env bash
# The GPU machine's benchmark (issue 6, item 4), one command there after bench/device/prepare.sh here:
#
#   device run: command "bash bench/device/run.sh", carry [".device"], timeout_s 600
#
# Builds /tmp/venv on the image's Python: the carried packages first (numpy 1.26 among them: see
# prepare.sh), then the image's own site-packages (torch) through a .pth file. wrk and nginx are
# unpacked under /tmp/debroot. Then the ResNet-50 scenarios (batch 1/8/32, CUDA fp16; direct / pair /
# nginx chain, the pair and nginx at $WORKERS workers) and the scale scenario (sidecar and nginx at 1/4/8
# workers). Results: bench/results/gpu/ there, back here as $OUT/gpu-results.tgz with the logs; unpack
# them into bench/results/gpu/ beside the CPU results and commit.
#
# Rehearsed here on this machine's Python 3.11 with numpy 2 and torch's CPU build in a venv standing in
# for the image (ResNet-50 on the CPU at batch 1; the scale scenario at 1 and 2 workers):
#   PYV=3.11 DEVICE_DIR=/tmp/d bench/device/prepare.sh
#   DEVICE_DIR=/tmp/d PYTHON=/path/to/image-like/python WORKERS=1 ONLY="resnet50-b1 scale" RESULTS=/tmp/r \
#     RESNET_ARGS="--resnet-device cpu --resnet-batches 1 --resnet-connections 2" bash bench/device/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/ratls-gpu-out}
D=${DEVICE_DIR:-.device}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
WORKERS=${WORKERS:-4} DURATION=${DURATION:-5} ROUNDS=${ROUNDS:-2} ONLY=${ONLY:-"resnet50 scale"} RESULTS=${RESULTS:-bench/results/gpu}
IMAGE_PY=${PYTHON:-python3}
pyv=$("$IMAGE_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$pyv" = "$(cat "$D/python-version")" ] || { echo "prepared for Python $(cat "$D/python-version"), this is $pyv" >&2; exit 2; }
t0=$(date +%s)
root=/tmp/debroot venv=/tmp/venv
rm -rf "$venv" && mkdir -p "$root"
for f in "$D"/deb/*.deb; do dpkg -x "$f" "$root" || exit 2; done
export PATH="$root/usr/sbin:$root/usr/bin:$PATH"
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$IMAGE_PY" -m venv --without-pip "$venv" || exit 2
sp="$venv/lib/python$pyv/site-packages"
xz -dc "$D/site.tar.xz" | tar -C "$sp" -xf - || exit 2
"$IMAGE_PY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$sp/zz-image.pth"  # after ours: our numpy wins
PY="$venv/bin/python"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
echo "== set up in $(( $(date +%s) - t0 )) s"; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
"$PY" - <<'PY' || exit 2
import importlib, sys
bad = []
for m in ("numpy", "cryptography", "OpenSSL", "h2", "cbor2", "jwcrypto", "aiohttp", "uvloop", "prometheus_client", "yaml",
          "tritonclient.grpc", "tritonclient.http", "pytriton.triton", "torch", "ratls.cli", "proxy.cli", "sidecar.cli"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", ""), getattr(mod, "__file__", ""))
    except Exception as e:  # every missing piece at once, not the first
        bad.append(f"{m}: {type(e).__name__}: {e}")
try:
    import torch
    print("python", sys.version.split()[0], "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    pass
if bad:
    sys.exit("missing: " + "; ".join(bad))
PY
# the model server's stub links libpython by soname (client/backends/triton_digits.py triton_env puts LIBDIR first)
stub=$("$PY" -c "import pytriton, pathlib; print(next(pathlib.Path(pytriton.__file__).parent.glob('tritonserver/python_backend_stubs/$pyv/triton_python_backend_stub')))")
libdir=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
echo "== stub: $(LD_LIBRARY_PATH="$libdir:$LD_LIBRARY_PATH" ldd "$stub" | grep -E "libpython|not found" | tr -s ' \t' ' ')"
wrk -v 2>&1 | head -1; nginx -v 2>&1
only=(); for o in $ONLY; do only+=(--only "$o"); done
echo "== bench"
timeout "${BUDGET_S:-500}" "$PY" bench/run.py "${only[@]}" --workers "$WORKERS" --duration "$DURATION" --rounds "$ROUNDS" \
  ${RESNET_ARGS:-} --out "$RESULTS" --work /tmp/bench-work
rc=$?
tar czf "$OUT/gpu-results.tgz" -C "$RESULTS" . 2>/dev/null
[ -f /tmp/bench-work/triton-resnet.log ] && tail -c 300000 /tmp/bench-work/triton-resnet.log > "$OUT/triton-resnet.log"
echo "== done in $(( $(date +%s) - t0 )) s, rc $rc"
exit $rc
