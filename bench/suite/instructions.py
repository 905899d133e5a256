"""Instructions per proxied 1 KB request, counted by callgrind: a deterministic A/B for the proxy's
hot path, where requests/s on this shared 2-core machine move by ±10% between identical runs.

    python -m bench.suite.instructions [--target proxy|sidecar] [--requests 1000] [--annotate]

The backend (nginx) and the sidecar run natively; the proxy runs under ``valgrind --tool=callgrind``
with instrumentation off until 300 warm-up requests have passed, then on for ``--requests`` keep-alive
GETs sent one after another on one connection. User-space instructions only (the kernel's share of
the syscalls is not counted). Needs valgrind and nginx.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from .env import REPO, Env
from .procs import free_port, wait_port

REQUEST = b"GET http://bench-http/1k HTTP/1.1\r\nHost: bench-http\r\n\r\n"


def _exchange(s: socket.socket, n: int) -> None:
    for _ in range(n):
        s.sendall(REQUEST)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the proxy closed the connection")
            buf += chunk
            _, sep, body = buf.partition(b"\r\n\r\n")
            if sep and len(body) >= 1024:
                break


def _counted(s: socket.socket, pid: int, requests: int) -> None:
    """Warm up, then ``requests`` exchanges with callgrind's instrumentation on in process ``pid``."""
    _exchange(s, 300)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    _exchange(s, requests)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no", sys.executable, "-m", "ratls.cli"]


def _totals(out: Path) -> int:
    m = re.search(rb"^totals: (\d+)", out.read_bytes(), re.M)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


def measure_sidecar(work: Path, requests: int) -> tuple[int, Path]:
    """The sidecar under callgrind, the proxy native: the other half of the pair's 1 KB request."""
    env = Env(work)
    env.start_backend()
    out = work / "callgrind.out"
    native = env.ratls_argv
    env.ratls_argv = lambda: _callgrind(out)  # type: ignore[method-assign]
    sc = env.start_sidecar()
    env.ratls_argv = native  # type: ignore[method-assign]
    px = env.start_proxy({"bench-http:80": sc.ports["tls"]})
    try:
        with socket.create_connection(("127.0.0.1", px.ports["http"])) as s:
            _counted(s, sc.proc.pid, requests)
        sc.proc.send_signal(2)
        sc.proc.wait(120)
        return _totals(out), out
    finally:
        env.stop_all()


def measure(work: Path, requests: int) -> tuple[int, Path]:
    env = Env(work)
    env.start_backend()
    sc = env.start_sidecar()
    port = free_port()
    out = work / "callgrind.out"
    argv = [*_callgrind(out), "proxy", "--listen", f"127.0.0.1:{port}", "--policy", str(env.policy_file()), "--sim-dir", str(env.sim_dir),
            "--route", f"bench-http:80=127.0.0.1:{sc.ports['tls']}"]
    with open(work / "proxy.log", "wb") as log:
        p = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "0", "RATLS_SIM_DIR": str(env.sim_dir)},
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, 300, p)
        with socket.create_connection(("127.0.0.1", port)) as s:
            _counted(s, p.pid, requests)
        p.send_signal(2)
        p.wait(120)
        return _totals(out), out
    finally:
        if p.poll() is None:
            p.kill()
        env.stop_all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.suite.instructions", description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--target", choices=("proxy", "sidecar"), default="proxy", help="the process to count (default proxy)")
    ap.add_argument("--annotate", action="store_true", help="print callgrind_annotate's top functions")
    a = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ratls-cg-") as d:
        total, out = (measure if a.target == "proxy" else measure_sidecar)(Path(d), a.requests)
        print(f"{a.target}: {total / a.requests:,.0f} instructions per 1 KB request ({a.requests} requests, callgrind)")
        if a.annotate:
            ann = subprocess.run(["callgrind_annotate", "--threshold=90", str(out)], capture_output=True, text=True).stdout
            print("\n".join(ln for ln in ann.splitlines() if re.match(r"^\s*[\d,]+ ", ln))[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
