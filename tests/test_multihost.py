"""Several hosts on one machine: replicas behind an SNI-routing TLS-passthrough ingress, a client with the proxy.

Each "host" is a network namespace made for this test, joined by veth links that carry
link-local addresses (169.254.x.y/30) which exist only inside these namespaces::

    cli (proxy)  169.254.10.1 ── 169.254.10.2  ing (nginx stream, ssl_preread, SNI routing)
                                 169.254.11.1 ── 169.254.11.2  r1 (sidecar, sim TEE, measurement M1; backend on 127.0.0.1)
                                 169.254.12.1 ── 169.254.12.2  r2 (sidecar, sim TEE, measurement M2; backend on 127.0.0.1)

nginx reads only the SNI of the ClientHello and forwards the TCP stream: the attested TLS session
runs from the proxy in ``cli`` to the sidecar in ``r1``/``r2``, the shape of ingress-nginx's
``ssl-passthrough`` in front of the Kubernetes Deployment (deploy/kubernetes).

What it shows, in order (one module-scoped topology, the phases build on each other):
1. load spreads over both replicas, and the proxy verifies each replica once: one uncached
   ``handshake`` line per certificate in its JSON log, every other connection a cache hit;
2. killing one replica under load loses no request: each gets its answer or an explicit error
   (counted), and the survivor serves the rest;
3. a replica whose measurement the policy does not allow is refused (502 naming the failed claim)
   while the other keeps serving.

Needs root, ``ip`` (iproute2) and nginx with the stream module (Debian: ``nginx-light`` +
``libnginx-mod-stream``); skips with the reason otherwise. Ports inside the namespaces are fixed:
the namespaces are private to this test, so nothing else can hold them.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SERVICE_HOST = "inference.mh.test"
SERVICE = f"{SERVICE_HOST}:8000"
#: routed by the proxy to the same ingress, but no ingress rule matches its SNI
OTHER_SERVICE = "other.mh.test:8000"
INGRESS_ADDR = "169.254.10.2"
INGRESS_PORT = 443
SIDECAR_PORT = 8443
BACKEND_PORT = 8000
PROXY_PORT = 15001
PROXY_ADMIN_PORT = 15002
SIDECAR_ADMIN_PORT = 9090
M1 = bytes.fromhex("a1" * 48)
M2 = bytes.fromhex("b2" * 48)
M_BAD = bytes.fromhex("c3" * 48)
MEASUREMENT_CLAIM = "x-ms-sevsnpvm-launchmeasurement"
CLONE_NEWNET = 0x40000000
NGINX_STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so")

#: the small backend each replica runs on its own 127.0.0.1 (stands in for Triton: it says who answered)
BACKEND = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        time.sleep(delay)
        out = json.dumps({"replica": name, "path": self.path, "received": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = _answer
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


# -- prerequisites ---------------------------------------------------------------------------


def _nginx_stream_module() -> str | None:
    return next((m for m in NGINX_STREAM_MODULES if Path(m).exists()), None)


def prerequisites() -> str | None:
    """None if the topology can be built here, else why not (the skip message)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if shutil.which("nginx") is None:
        return "nginx is not installed (Debian: apt-get install nginx-light libnginx-mod-stream)"
    nginx_v = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False).stderr
    if "--with-stream_ssl_preread_module" not in nginx_v:
        return "this nginx was built without the stream ssl_preread module"
    if "--with-stream=dynamic" in nginx_v and _nginx_stream_module() is None:
        return "nginx's stream module is not installed (Debian: apt-get install libnginx-mod-stream)"
    return netns_unusable()


def netns_unusable(*probe_commands: list[str]) -> str | None:
    """None if a network namespace can be made here (and each probe command succeeds inside it), else why not."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need Linux, root and `ip` (iproute2)"
    probe = f"ratls-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        for cmd in probe_commands:
            ran = subprocess.run(["ip", "netns", "exec", probe, *cmd], capture_output=True, text=True, check=False)
            if ran.returncode != 0:
                return f"`{' '.join(cmd)}` fails in a network namespace: {ran.stderr.strip()[:200]}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


# -- namespaces as hosts -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns`` (setns(2))."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a fresh thread that lives in ``ns``; return its result or raise its error."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(ns)
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Hosts:
    """Namespaces joined by veth links; everything made here is removed by :meth:`close`."""

    prefix: str
    names: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def add(self, host: str) -> str:
        ns = f"{self.prefix}-{host}"
        _ip("netns", "add", ns)
        self.names[host] = ns
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        """A veth pair created directly inside the two namespaces (never in the root namespace)."""
        na, nb = self.names[a], self.names[b]
        _ip("link", "add", a_if, "netns", na, "type", "veth", "peer", "name", b_if, "netns", nb)
        for ns, ifname, addr in ((na, a_if, a_addr), (nb, b_if, b_addr)):
            _ip("-n", ns, "addr", "add", addr, "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")

    def spawn(self, key: str, host: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host`` in its own process group; output goes to ``log``."""
        # this checkout first, whatever the environment has installed
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(log, "ab") as out:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.names[host], *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=REPO,
            )
        self.procs[key] = p
        return p

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(key, None)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def close(self) -> None:
        for key in list(self.procs):
            self.kill(key, signal.SIGTERM)
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.names.clear()


def wait_until(
    what: str, check: Callable[[], bool], timeout: float = 30, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} did not come up within {timeout}s (exit {proc.poll() if proc else None}):\n{tail}")


def _http_ok(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _tcp_refused(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


NGINX_CONF = """\
{load_module}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log info;
events {{ worker_connections 1024; }}
stream {{
    log_format sni '$remote_addr sni=$ssl_preread_server_name upstream=$upstream_addr status=$status';
    access_log {tmp}/nginx-access.log sni;
    # Route on the ClientHello's SNI only; the TLS session itself passes through untouched.
    map $ssl_preread_server_name $pool {{
        {service_host} replicas;
        default        nowhere;
    }}
    upstream replicas {{
        server 169.254.11.2:{sidecar_port} max_fails=1 fail_timeout=2s;
        server 169.254.12.2:{sidecar_port} max_fails=1 fail_timeout=2s;
    }}
    upstream nowhere {{
        server 127.0.0.1:9;
    }}
    server {{
        listen {ingress_addr}:{ingress_port};
        ssl_preread on;
        proxy_pass $pool;
        proxy_connect_timeout 2s;
        proxy_timeout 120s;
    }}
}}
"""


# -- the topology ----------------------------------------------------------------------------


@dataclass
class Cluster:
    hosts: Hosts
    tmp: Path
    sim_dir: Path
    proxy_log: Path
    nginx_error: Path

    def start_replica(self, host: str, measurement: bytes) -> None:
        py = sys.executable
        blog = self.tmp / f"{host}-backend.out"
        slog = self.tmp / f"{host}-sidecar.log"
        sout = self.tmp / f"{host}-sidecar.out"
        self.hosts.spawn(f"{host}-backend", host, [py, "-c", BACKEND, host, str(BACKEND_PORT), "0.01"], blog)
        argv = [py, "-m", "ratls.cli", "sidecar", "--tee", "sim", "--sim-dir", str(self.sim_dir), "--sim-measurement", measurement.hex(),
                "--listen", f"0.0.0.0:{SIDECAR_PORT}", "--http-backend", f"127.0.0.1:{BACKEND_PORT}",
                "--admin", f"127.0.0.1:{SIDECAR_ADMIN_PORT}", "--log", str(slog), "--dns-name", SERVICE_HOST]  # fmt: skip
        p = self.hosts.spawn(f"{host}-sidecar", host, argv, sout)
        ns = self.hosts.names[host]
        wait_until(f"{host} backend", lambda: in_netns(ns, lambda: _http_ok("127.0.0.1", BACKEND_PORT, "/")), log=blog)
        wait_until(f"{host} sidecar", lambda: in_netns(ns, lambda: _http_ok("127.0.0.1", SIDECAR_ADMIN_PORT, "/readyz")), proc=p, log=sout)

    def stop_replica(self, host: str) -> None:
        self.hosts.kill(f"{host}-sidecar")
        self.hosts.kill(f"{host}-backend")

    def diagnostics(self) -> str:
        """Sockets of every host and the logs' tails, for a failure message."""
        parts = []
        for host, ns in self.hosts.names.items():
            ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tn"], capture_output=True, text=True, check=False).stdout
            parts.append(f"== {host} sockets\n{ss[-1500:]}")
        for log in [*sorted(self.tmp.glob("*.out")), self.proxy_log]:
            if log.exists():
                parts.append(f"== {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def proxy_events(self, event: str = "handshake") -> list[dict[str, Any]]:
        if not self.proxy_log.exists():
            return []
        lines = [json.loads(x) for x in self.proxy_log.read_text().splitlines() if x.strip()]
        return [e for e in lines if e.get("event") == event]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    why = prerequisites()
    if why:
        pytest.skip(f"multi-host test skipped: {why}")
    tmp = tmp_path_factory.mktemp("multihost")
    os.chmod(tmp, 0o755)
    hosts = Hosts(prefix=f"ratls-mh{os.getpid()}")
    try:
        for h in ("cli", "ing", "r1", "r2"):
            hosts.add(h)
        hosts.link("cli", "eth0", "169.254.10.1/30", "ing", "cli0", f"{INGRESS_ADDR}/30")
        hosts.link("ing", "r10", "169.254.11.1/30", "r1", "eth0", "169.254.11.2/30")
        hosts.link("ing", "r20", "169.254.12.1/30", "r2", "eth0", "169.254.12.2/30")

        sim_dir = tmp / "sim"
        subprocess.run([sys.executable, "-m", "ratls.cli", "sim", "init", "--dir", str(sim_dir)], check=True, capture_output=True, cwd=REPO)
        policy = tmp / "policy.json"
        policy.write_text(json.dumps({"$name": SERVICE, "x-ms-attestation-type": "sim", MEASUREMENT_CLAIM: [M1.hex(), M2.hex()]}))

        c = Cluster(hosts, tmp, sim_dir, tmp / "proxy.log", tmp / "nginx-error.log")
        stream = _nginx_stream_module()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(load_module=f"load_module {stream};" if stream else "", tmp=tmp, service_host=SERVICE_HOST,
                                          sidecar_port=SIDECAR_PORT, ingress_addr=INGRESS_ADDR, ingress_port=INGRESS_PORT))  # fmt: skip
        nginx_out = tmp / "nginx.out"
        ng = hosts.spawn(
            "nginx", "ing", ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf), "-g", "daemon off;"], nginx_out
        )

        import socket

        def _listening() -> bool:
            socket.create_connection((INGRESS_ADDR, INGRESS_PORT), timeout=1).close()
            return True

        wait_until("nginx", lambda: in_netns(hosts.names["cli"], _listening), proc=ng, log=tmp / "nginx-error.log")

        c.start_replica("r1", M1)
        c.start_replica("r2", M2)

        pout = tmp / "proxy.out"
        argv = [sys.executable, "-m", "ratls.cli", "proxy", "--listen", f"127.0.0.1:{PROXY_PORT}",
                "--route", f"{SERVICE}={INGRESS_ADDR}:{INGRESS_PORT}", "--route", f"{OTHER_SERVICE}={INGRESS_ADDR}:{INGRESS_PORT}", "--policy", str(policy), "--sim-dir", str(sim_dir),
                "--admin", f"127.0.0.1:{PROXY_ADMIN_PORT}", "--log", str(c.proxy_log)]  # fmt: skip
        pp = hosts.spawn("proxy", "cli", argv, pout)
        wait_until(
            "proxy", lambda: in_netns(hosts.names["cli"], lambda: _http_ok("127.0.0.1", PROXY_ADMIN_PORT, "/healthz")), proc=pp, log=pout
        )
        yield c
    finally:
        hosts.close()


# -- load --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's fate.

    ``ok``: the backend's answer. ``explicit_error``: a status >= 400 with a JSON body saying why (the
    proxy's refusals and upstream errors). ``truncated``: the response head arrived and then the
    connection closed before the body its Content-Length announced: the replica died mid-response,
    after the proxy had relayed the head, and the client's HTTP stack reports the cut (an explicit
    failure, never a silently short answer). ``lost``: anything else (no status at all, a timeout).
    """

    started: float
    status: int | None = None
    body: dict[str, Any] | None = None
    truncated: str | None = None
    lost: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body is not None and "replica" in self.body

    @property
    def explicit_error(self) -> bool:
        return self.status is not None and self.status >= 400 and isinstance(self.body, dict) and "error" in self.body

    @property
    def accounted(self) -> bool:
        return self.ok or self.explicit_error or self.truncated is not None


def run_load(ns: str, workers: int, per_worker: int, on_progress: Callable[[int], None] | None = None) -> list[Outcome]:
    """``workers`` keep-alive clients in namespace ``ns``, each sending ``per_worker`` POSTs through the proxy."""
    done = 0
    lock = threading.Lock()

    def worker(_: int) -> list[Outcome]:
        nonlocal done
        out: list[Outcome] = []
        conn: http.client.HTTPConnection | None = None
        for i in range(per_worker):
            o = Outcome(started=time.monotonic())
            body = json.dumps({"inputs": [i] * 64}).encode()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=8)
                conn.request("POST", f"http://{SERVICE}/v2/models/digits/infer", body=body,
                             headers={"Content-Type": "application/json", "Host": SERVICE})  # fmt: skip
                resp = conn.getresponse()
                o.status = resp.status
                try:
                    raw = resp.read()
                except (OSError, http.client.IncompleteRead) as e:
                    o.truncated = f"{type(e).__name__}: {e}"
                    raise
                try:
                    o.body = json.loads(raw)
                except ValueError:
                    o.body = None
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if o.truncated is None:
                    o.lost = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            out.append(o)
            with lock:
                done += 1
                n = done
            if on_progress is not None:
                on_progress(n)
        if conn is not None:
            conn.close()
        return out

    with ThreadPoolExecutor(max_workers=workers, initializer=enter_netns, initargs=(ns,)) as pool:
        results = list(pool.map(worker, range(workers)))
    return [o for r in results for o in r]


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "total": len(outcomes),
        "ok": sum(o.ok for o in outcomes),
        "explicit_errors": sum(o.explicit_error for o in outcomes),
        "truncated": sum(o.truncated is not None for o in outcomes),
        "lost": sum(not o.accounted for o in outcomes),
        "by_replica": dict(Counter(o.body["replica"] for o in outcomes if o.ok)),
        "error_steps": dict(Counter(str(o.body.get("step")) for o in outcomes if o.explicit_error)),
    }


# -- the phases --------------------------------------------------------------------------------


def test_1_backends_are_loopback_only_inside_their_hosts(cluster):
    """Like Triton in the pod: a replica's backend is unreachable from the ingress host, its sidecar is not."""
    ing = cluster.hosts.names["ing"]
    for addr in ("169.254.11.2", "169.254.12.2"):
        assert in_netns(ing, lambda a=addr: _tcp_refused(a, BACKEND_PORT)), f"backend at {addr}:{BACKEND_PORT} reachable from the ingress"
        assert not in_netns(ing, lambda a=addr: _tcp_refused(a, SIDECAR_PORT))


def nginx_sessions(cluster: Cluster) -> list[dict[str, str]]:
    """nginx's access log (one line per stream session, written when it closes): sni, upstream, status.

    ``upstream`` is every address nginx tried, in order ("a:p, b:p" after a refused connect).
    """
    log = cluster.tmp / "nginx-access.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [m.groupdict() for line in lines if (m := re.search(r"sni=(?P<sni>\S+) upstream=(?P<upstream>.*) status=(?P<status>\S+)", line))]


def admitted_verifications(cluster: Cluster) -> Counter[str]:
    """Uncached (really verified) admissions in the proxy's log, by certificate."""
    return Counter(e["cert_sha256"] for e in cluster.proxy_events() if e.get("decision") == "admit" and not e["cached"])


def test_2_load_spreads_and_each_replica_is_verified_once(cluster, report):
    outcomes = run_load(cluster.hosts.names["cli"], workers=6, per_worker=30)
    s = summary(outcomes)
    print("spread:", json.dumps(s))
    report("spread", json.dumps({k: s[k] for k in ("total", "ok", "explicit_errors", "lost", "by_replica")}))
    assert s["ok"] == s["total"] == 180, f"{s}\n{[o.lost for o in outcomes if o.lost][:3]}\n{cluster.diagnostics()}"
    assert set(s["by_replica"]) == {"r1", "r2"}, f"load did not spread: {s['by_replica']}"
    assert min(s["by_replica"].values()) >= 0.1 * s["total"], f"one replica got under 10%: {s['by_replica']}"

    hs = [e for e in cluster.proxy_events() if e.get("decision") == "admit"]
    by_cert: dict[str, list[dict[str, Any]]] = {}
    for e in hs:
        by_cert.setdefault(e["cert_sha256"], []).append(e)
    assert len(by_cert) == 2, f"expected the two replicas' certificates, saw {len(by_cert)}"
    measurements = {events[0]["claims"][MEASUREMENT_CLAIM] for events in by_cert.values()}
    assert measurements == {M1.hex(), M2.hex()}
    for cert, events in by_cert.items():
        uncached = [e for e in events if not e["cached"]]
        assert len(uncached) == 1, f"certificate {cert[:16]} verified {len(uncached)} times, not once"
        assert all(e["target"] == SERVICE and e["tls_version"] == "TLSv1.3" for e in events)
    # TLS ended in the sidecars, not at the ingress: the certificates the proxy verified are the
    # ones the replicas' sidecars issued (their own log), one per replica.
    issued = {}
    for host in ("r1", "r2"):
        log = cluster.tmp / f"{host}-sidecar.log"
        events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        issued[host] = {e["cert_sha256"] for e in events if e.get("event") == "certificate"}
    assert set(by_cert) == issued["r1"] | issued["r2"] and all(len(v) == 1 for v in issued.values()), (set(by_cert), issued)
    handshakes = {c[:12]: {"connections": len(ev), "verified": sum(not e["cached"] for e in ev)} for c, ev in by_cert.items()}
    print("handshakes:", handshakes)
    report("attested handshakes by certificate", handshakes)

    # nginx logs each upstream connection when it is made (the access log only when it closes)
    upstreams = Counter(
        line.rsplit("connected to ", 1)[1].strip()
        for line in cluster.nginx_error.read_text().splitlines()
        if " proxy " in line and "connected to" in line
    )
    assert {f"169.254.11.2:{SIDECAR_PORT}", f"169.254.12.2:{SIDECAR_PORT}"} <= set(upstreams), (
        f"nginx did not reach both replicas: {upstreams}"
    )


def test_2b_the_ingress_routes_by_sni(cluster):
    """A name the ingress does not route (SNI other.mh.test) never reaches a replica: the proxy says so, explicitly."""

    def one() -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=30)
        try:
            conn.request("GET", f"http://{OTHER_SERVICE}/v2/health/ready", headers={"Host": OTHER_SERVICE})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    status, body = in_netns(cluster.hosts.names["cli"], one)
    assert status == 502 and body["service"] == OTHER_SERVICE and body["step"] == "tls-connect", body
    refused = [e for e in cluster.proxy_events() if e.get("target") == OTHER_SERVICE]
    assert refused and all(e["decision"] == "error" for e in refused)
    # nginx saw that name in the ClientHello and sent the session to its default, not to a replica
    wait_until("nginx's log of the unrouted session", lambda: any(x.get("sni") == "other.mh.test" for x in nginx_sessions(cluster)), 10)
    other = [x for x in nginx_sessions(cluster) if x.get("sni") == "other.mh.test"]
    assert all(x["upstream"] == "127.0.0.1:9" for x in other), other


def test_3_killing_a_replica_under_load_loses_no_request(cluster, report):
    killed_at: list[float] = []

    def kill_midway(n: int) -> None:
        if n == 120 and not killed_at:
            killed_at.append(time.monotonic())
            threading.Thread(target=cluster.stop_replica, args=("r1",)).start()

    outcomes = run_load(cluster.hosts.names["cli"], workers=6, per_worker=80, on_progress=kill_midway)
    s = summary(outcomes)
    print("kill under load:", json.dumps(s))
    report(
        "kill r1 under load",
        json.dumps({k: s[k] for k in ("total", "ok", "explicit_errors", "truncated", "lost", "by_replica", "error_steps")}),
    )
    assert killed_at, "the replica was never killed"
    assert s["by_replica"].get("r1", 0) > 0, f"r1 served nothing before it was killed: {s}"
    lost = [o.lost or f"status {o.status} body {o.body}" for o in outcomes if not o.accounted]
    assert not lost, f"{len(lost)} requests lost (no answer, no explicit error): {lost[:5]}\n{cluster.diagnostics()}"
    assert s["ok"] + s["explicit_errors"] + s["truncated"] == s["total"] == 480
    assert s["by_replica"].get("r2", 0) > 0
    late = [o for o in outcomes if o.started > killed_at[0] + 2.0]
    assert late, "the load ended too soon after the kill to judge the survivor"
    assert all(o.ok and o.body["replica"] == "r2" for o in late), summary(late)
    # the survivor's new connections hit the verdict cache: still one verification per replica
    verified = admitted_verifications(cluster)
    assert len(verified) == 2 and set(verified.values()) == {1}, verified
    # r1's sessions closed with the kill: nginx logged them, each routed by the service's SNI
    to_replicas = [x for x in nginx_sessions(cluster) if x["upstream"].startswith("169.254.1")]
    assert any(x["upstream"].split(", ")[-1] == f"169.254.11.2:{SIDECAR_PORT}" for x in to_replicas), to_replicas
    assert all(x["sni"] == SERVICE_HOST for x in to_replicas), to_replicas


def test_4_replica_with_unlisted_measurement_is_refused_while_the_other_serves(cluster, report):
    cluster.start_replica("r1", M_BAD)
    time.sleep(2.5)  # nginx's fail_timeout for r1 (marked down by the kill) runs out
    cli = cluster.hosts.names["cli"]
    outcomes: list[Outcome] = []
    # The proxy reuses its pooled (verified) connections to r2; only new upstream connections go
    # through nginx's round robin and can land on r1. Bursts wider than the pool force new ones.
    for burst in range(6):
        outcomes += run_load(cli, workers=16 + 8 * burst, per_worker=1)
        if any(o.explicit_error and o.status == 502 and o.body.get("step") == "policy" for o in outcomes):
            break
    s = summary(outcomes)
    print("bad measurement:", json.dumps(s))
    report(
        "replica with an unlisted measurement",
        json.dumps({k: s[k] for k in ("total", "ok", "explicit_errors", "lost", "by_replica", "error_steps")}),
    )
    assert s["lost"] == 0, s
    assert s["by_replica"].get("r1", 0) == 0, "a request reached the replica whose measurement the policy refuses"
    assert s["by_replica"].get("r2", 0) > 0, "the allowed replica stopped serving"
    refusals = [o for o in outcomes if o.explicit_error and o.body.get("step") == "policy"]
    assert refusals, f"the refused replica was never reached through the ingress: {s}"
    for o in refusals:
        assert o.status == 502 and o.body["service"] == SERVICE
        failed = {f["claim"]: f for f in o.body["failed"]}
        assert failed[MEASUREMENT_CLAIM]["actual"] == M_BAD.hex()
    refused_hs = [e for e in cluster.proxy_events() if e.get("decision") == "refuse"]
    assert refused_hs and all(e["claims"][MEASUREMENT_CLAIM] == M_BAD.hex() for e in refused_hs)
    assert all(o.ok or o in refusals for o in outcomes), "every request either got r2's answer or the policy refusal"
