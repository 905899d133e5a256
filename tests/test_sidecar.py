"""The sidecar on its own: TLS 1.3 only, ALPN routing, rotation, admin port, configuration."""

from __future__ import annotations

import argparse
import hashlib
import socket
import ssl
import time

import pytest
import requests

from proxy.obs import utcnow
from ratls.certificate import verify_certificate
from ratls.errors import Reason, UsageError
from ratls.evidence import VerifyOptions
from ratls.io import simdir
from ratls.policy import Policy
from sidecar import cli as scli
from tests.pair import ByteCountingBackend, HttpBackend, pair, sim_policy, start_pair

pytestmark = pytest.mark.slow


def tls_connect(addr: str, alpn: list[str] | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLSocket:
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    raw = socket.create_connection((host, int(port)), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="inference.test")


def http_get(s: ssl.SSLSocket, path: str) -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: inference.test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return body


@pytest.fixture
def backends():
    h, g = HttpBackend(), ByteCountingBackend()
    yield h, g
    h.stop()
    g.stop()


def test_tls13_only_and_certificate_verifies_against_the_sim_root(tmp_path, backends):
    h, _ = backends
    with pair(tmp_path, http_backend=h.addr) as p:
        with pytest.raises(ssl.SSLError):
            tls_connect(p.sidecar_addr, max_version=ssl.TLSVersion.TLSv1_2)
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as s:
            assert s.version() == "TLSv1.3"
            der = s.getpeercert(binary_form=True)
        assert hashlib.sha256(der).hexdigest() == p.sidecar_events("certificate")[-1]["cert_sha256"]
        v = verify_certificate(der, VerifyOptions(now=utcnow(), sim_root=simdir.load_root(p.sim_dir)), Policy.from_mapping(sim_policy(p.measurement)))
        assert v.ok, v.to_log()


def test_alpn_picks_the_backend(tmp_path, backends):
    h, g = backends
    with pair(tmp_path, http_backend=h.addr, grpc_backend=g.addr) as p:
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as s:
            assert s.selected_alpn_protocol() == "http/1.1"
            assert http_get(s, "/hello") == b"hello from the backend"
        assert g.bytes == 0
        with tls_connect(p.sidecar_addr, ["h2"]) as s:
            assert s.selected_alpn_protocol() == "h2"
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            s.recv(100)  # ByteCountingBackend answers anything it gets
        assert g.bytes == 24
        deadline = time.monotonic() + 10  # the connection line is written when the connection ends
        while len(p.sidecar_events("connection")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        conns = p.sidecar_events("connection")
        assert [c["alpn"] for c in conns] == ["http/1.1", "h2"]
        assert conns[1]["backend"] == g.addr and conns[0]["backend"] == h.addr


def test_rotation_new_connections_get_the_new_certificate_open_ones_carry_on(tmp_path, backends):
    h, _ = backends
    pr = start_pair(tmp_path, http_backend=h.addr)
    try:
        # short lifetime, rotation at 10%: a new certificate every second
        pr._sidecar_argv += ["--lifetime", "10", "--rotate-at", "0.1"]
        pr.restart_sidecar()
        first = pr.sidecar_events("certificate")[-1]["cert_sha256"]
        old = tls_connect(pr.sidecar_addr, ["http/1.1"])
        assert hashlib.sha256(old.getpeercert(binary_form=True)).hexdigest() == first
        deadline = time.monotonic() + 20
        while pr.sidecar_events("certificate")[-1]["cert_sha256"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        second = pr.sidecar_events("certificate")[-1]["cert_sha256"]
        assert second != first, "the sidecar rotated its certificate"
        with tls_connect(pr.sidecar_addr, ["http/1.1"]) as s:
            assert hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest() != first
        assert http_get(old, "/hello") == b"hello from the backend", "an open connection carries on after rotation"
        old.close()
        r = requests.get(f"http://{pr.http_service}/hello", proxies={"http": pr.proxy_url}, timeout=10)
        assert r.status_code == 200
        # the proxy verified a rotated certificate from its evidence (a new hash is never a cache hit)
        hs = pr.proxy_events("handshake")[-1]
        assert hs["decision"] == "admit" and hs["cert_sha256"] != first and hs["cached"] is False
    finally:
        pr.stop()


def test_admin_endpoints(tmp_path, backends):
    h, _ = backends
    with pair(tmp_path, http_backend=h.addr) as p:
        assert requests.get(f"{p.sidecar_admin_url}/healthz", timeout=5).json()["status"] == "ok"
        ready = requests.get(f"{p.sidecar_admin_url}/readyz", timeout=5).json()
        assert ready["ready"] is True and ready["cert_sha256"] == p.sidecar_events("certificate")[-1]["cert_sha256"]
        assert requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10).status_code == 200
        # the proxy keeps its verified upstream connection pooled: the sidecar shows it open
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_open_connections") == 1
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_certificate_rotations_total") == 1
        assert p.metric(p.proxy_admin_url, "ratls_proxy_handshakes_total", result="admit", evidence_type="sim") == 1
        assert requests.get(f"{p.proxy_admin_url}/healthz", timeout=5).status_code == 200


def test_private_key_never_written_to_disk(tmp_path, backends):
    h, _ = backends
    with pair(tmp_path, http_backend=h.addr) as p:
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as s:
            assert s.version() == "TLSv1.3"
        for f in tmp_path.rglob("*"):
            if f.is_file() and f.parent != p.sim_dir:  # the sim authority's own keys live there by design
                assert b"PRIVATE KEY" not in f.read_bytes(), f


def _args(argv):
    parser = argparse.ArgumentParser()
    scli.configure(parser)
    return parser.parse_args(argv)


def test_config_file_and_command_line(tmp_path):
    cfg_file = tmp_path / "sidecar.yaml"
    cfg_file.write_text(f"tee: sim\nsim-dir: {tmp_path / 'sim'}\nlisten: 127.0.0.1:0\nhttp_backend: 127.0.0.1:8000\n"
                        "grpc-backend: 127.0.0.1:8001\nlifetime: 600\n")
    opts = scli.merged(_args(["--config", str(cfg_file), "--grpc-backend", "127.0.0.1:9001"]), scli._KNOWN)
    cfg = scli.build_config(opts)
    assert cfg.http_backend == ("127.0.0.1", 8000) and cfg.grpc_backend == ("127.0.0.1", 9001)  # command line wins
    assert cfg.lifetime.total_seconds() == 600 and cfg.evidence_type == "sim"
    cfg_file.write_text("tee: sim\nhttp-backend: 127.0.0.1:1\nbogus: 1\n")
    with pytest.raises(UsageError) as e:
        scli.merged(_args(["--config", str(cfg_file)]), scli._KNOWN)
    assert e.value.reason is Reason.CONFIG_INVALID
    with pytest.raises(UsageError) as e:
        scli.build_config(scli.merged(_args(["--tee", "sim", "--sim-dir", str(tmp_path / "s")]), scli._KNOWN))
    assert e.value.reason is Reason.CONFIG_INVALID  # no backend at all
