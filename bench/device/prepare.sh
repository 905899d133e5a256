#!/usr/bin/env bash
# Prepare the GPU machine's benchmark (issue 6, item 4) here, where the package registries answer.
#
# The GPU machine has Python 3.12 with torch (and numpy 2, grpcio, aiohttp, uvloop, ...), but no
# network: what ratls, pytriton and the suite need beyond that travels in .device/ (git-ignored, named
# in the device call's `carry`), which must stay under the call's 64 MiB:
#   .device/site.tar.xz  the wheels below installed for that Python, tests stripped, xz -9 (~41 MiB;
#                        as plain wheels they are 73 MiB);
#   .device/deb/         wrk and nginx from Debian (unpacked there under /tmp/debroot, never into /).
# numpy 1.26 travels although the image has numpy 2: pytriton's Python-backend stub is built against
# the numpy 1 C ABI, and under numpy 2 every output tensor arrives empty ("cannot reshape array of
# size 0"; reproduced here with pytriton 0.7.0 on Python 3.12). Only the model server's venv sees it.
#
#   bench/device/prepare.sh        then on the device: bash bench/device/run.sh  (carry [".device"])
#   PYV=3.11 DEVICE_DIR=/tmp/d bench/device/prepare.sh   # a rehearsal here, with this machine's Python
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV=${PYV:-3.12}
D=${DEVICE_DIR:-.device}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rm -rf "$D" && mkdir -p "$D/deb" "$stage/whl"
plat=()
for t in manylinux_2_35 manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  plat+=(--platform "${t}_x86_64")
done
# not on the GPU machine's image (device KINDS.md's list), pinned to what the tests run with here;
# dcap-qvl stays behind (imported only when Intel evidence is verified; the bench uses the simulated TEE)
wheels=(cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 pyOpenSSL==26.4.0 cbor2==6.3.0 h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0
        platformdirs==4.14.9 jwcrypto==1.6.1 numpy==1.26.4
        nvidia-pytriton==0.7.0 tritonclient==2.62.0 pyzmq==27.1.0 sh==2.2.2 importlib-metadata==8.7.0
        geventhttpclient==2.3.4 gevent==25.9.1 greenlet==3.2.4 zope.event==6.0 zope.interface==8.0.1 python-rapidjson==1.21 brotli==1.1.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${plat[@]}" -d "$stage/whl" "${wheels[@]}"
site="$stage/site"
python3 -m pip install -q --no-deps --no-index --no-compile --target "$site" --python-version "$PYV" --implementation cp "${plat[@]}" \
  --only-binary=:all: "$stage"/whl/*.whl
# what a Python $PYV model server never loads: test suites, build tools, the other Pythons' stubs,
# and the Python 3.13 libpython pytriton bundles for its 3.13 stub (32 MB)
find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
rm -rf "$site/numpy/f2py" "$site/numpy/distutils" "$site/bin" "$site"/nvidia_pytriton.libs/libpython3-*
find "$site/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name "$PYV" -exec rm -rf {} +
[ -x "$site/pytriton/tritonserver/python_backend_stubs/$PYV/triton_python_backend_stub" ]
tar -C "$site" -cf - . | xz -9 -T0 > "$D/site.tar.xz"
echo "$PYV" > "$D/python-version"
(cd "$D/deb" && apt-get download -q wrk libluajit-5.1-2 nginx nginx-common >/dev/null)
total=$(du -sb "$D" | cut -f1)
tree=$(git ls-files -z | xargs -0 cat | wc -c)
echo "carry $D: $((total / 1048576)) MiB + tracked tree $((tree / 1048576)) MiB (limit 64 MiB)"
[ $((total + tree)) -lt $((64 * 1048576)) ] || { echo "over the device call's 64 MiB" >&2; exit 1; }
