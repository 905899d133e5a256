"""The proxy pair end to end with real clients: curl, requests, grpcio; real TLS on real sockets.

Each test starts its own sidecar + proxy (tests/pair.py, thread mode: fast) in front of backends
started once per module; a test that needs subprocesses says so (``mode="process"``).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.pair import ByteCountingBackend, free_port, grpc_echo, pair, pattern

pytestmark = pytest.mark.slow
BIG = 600 * 1000


@pytest.fixture
def p(tmp_path, http_backend, grpc_backend):
    with pair(tmp_path, http_backend=http_backend.addr, grpc_backend=grpc_backend.addr, maps=["inference.test:8000", "inference.test:8001"]) as pr:
        yield pr


def curl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, input=input, timeout=30)


def test_curl_x_through_the_proxy_and_the_handshake_log_line(p):
    r = curl("-x", p.proxy_url, f"http://{p.http_service}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from the backend"
    [hs] = p.proxy_events("handshake")
    assert hs["decision"] == "admit" and hs["cached"] is False
    assert hs["tls_version"] == "TLSv1.3" and hs["alpn"] == "http/1.1" and hs["target"] == p.http_service
    assert hs["evidence_type"] == "sim"
    assert hs["claims"]["x-ms-sevsnpvm-launchmeasurement"] == p.measurement.hex()
    assert {s["name"] for s in hs["steps"]} >= {"certificate", "evidence-extension", "key-binding", "report-data-binding", "policy"}
    assert all(r["ok"] for r in hs["policy"])
    assert hs["cert_sha256"] == p.sidecar_events("certificate")[-1]["cert_sha256"]


def test_requests_keep_alive_reuses_one_attested_connection(p, http_backend):
    with requests.Session() as s:
        s.proxies = {"http": p.proxy_url}
        for i in range(5):
            r = s.get(f"http://{p.http_service}/hello", params={"i": i}, timeout=10)
            assert r.status_code == 200 and r.text == "hello from the backend"
    hs = p.proxy_events("handshake")
    assert len(hs) == 1, "five keep-alive requests must ride one verified upstream connection"
    conns = p.sidecar_events("connection")
    assert len(conns) <= 1


def test_chunked_upload_is_streamed_with_its_framing(p):
    parts = [pattern(BIG)[i : i + 50_000] for i in range(0, BIG, 50_000)]
    r = requests.post(f"http://{p.http_service}/digest", data=iter(parts), proxies={"http": p.proxy_url}, timeout=20)
    assert r.status_code == 200
    got = r.json()
    assert got["transfer_encoding"] == "chunked"
    assert got["len"] == BIG and got["sha256"] == hashlib.sha256(pattern(BIG)).hexdigest()


def test_expect_100_continue(p, tmp_path):
    body = tmp_path / "body.bin"
    body.write_bytes(pattern(BIG))
    r = curl("-v", "-x", p.proxy_url, "-H", "Expect: 100-continue", "--data-binary", f"@{body}", f"http://{p.http_service}/digest")
    assert r.returncode == 0, r.stderr
    assert b"HTTP/1.1 100 Continue" in r.stderr
    got = json.loads(r.stdout)
    assert got["expect"] == "100-continue" and got["len"] == BIG and got["sha256"] == hashlib.sha256(pattern(BIG)).hexdigest()


def test_large_bodies_both_ways(p):
    data = pattern(BIG)
    r = requests.post(f"http://{p.http_service}/echo", data=data, proxies={"http": p.proxy_url}, timeout=20)
    assert r.status_code == 200 and r.content == data
    r = requests.get(f"http://{p.http_service}/big", params={"n": BIG}, proxies={"http": p.proxy_url}, timeout=20)
    assert r.status_code == 200 and r.content == data


def test_grpc_client_through_connect(p, grpc_backend):
    before = grpc_backend.calls
    assert grpc_echo(p.grpc_service, b"ping", proxy_url=p.proxy_url) == b"ping"
    payload = pattern(BIG)
    assert grpc_echo(p.grpc_service, payload, proxy_url=p.proxy_url) == payload
    assert grpc_backend.calls == before + 2
    hs = p.proxy_events("handshake")
    assert hs and all(h["alpn"] == "h2" and h["decision"] == "admit" for h in hs)


def test_port_mapping_listener_http_and_grpc(p):
    port = p.map_ports["inference.test:8000"]
    r = curl(f"http://127.0.0.1:{port}/hello")
    assert r.returncode == 0 and r.stdout == b"hello from the backend"
    assert grpc_echo(f"127.0.0.1:{p.map_ports['inference.test:8001']}", b"mapped") == b"mapped"
    alpns = sorted(h["alpn"] for h in p.proxy_events("handshake"))
    assert alpns == ["h2", "http/1.1"]


def test_verdict_cache_hit_on_second_connection(p):
    # two gRPC channels: two CONNECT tunnels, two upstream TLS connections (tunnels are never pooled)
    for i in range(2):
        assert grpc_echo(p.grpc_service, b"%d" % i, proxy_url=p.proxy_url) == b"%d" % i
    hs = p.proxy_events("handshake")
    assert [h["cached"] for h in hs] == [False, True]
    assert hs[0]["cert_sha256"] == hs[1]["cert_sha256"]
    assert p.metric(p.proxy_admin_url, "ratls_proxy_verdict_cache_misses_total") == 1
    assert p.metric(p.proxy_admin_url, "ratls_proxy_verdict_cache_hits_total") == 1


def test_sidecar_restart_with_new_certificate_is_reverified(p):
    s = requests.Session()
    s.proxies = {"http": p.proxy_url}
    assert s.get(f"http://{p.http_service}/hello", timeout=10).status_code == 200
    old = p.sidecar_events("certificate")[-1]["cert_sha256"]
    p.restart_sidecar()
    new = p.sidecar_events("certificate")[-1]["cert_sha256"]
    assert new != old
    # the pooled connection died with the old sidecar: the next request gets a fresh one, verified anew
    r = s.get(f"http://{p.http_service}/hello", timeout=10)
    assert r.status_code == 200, r.text
    hs = p.proxy_events("handshake")
    assert hs[-1]["cert_sha256"] == new and hs[-1]["cached"] is False and hs[-1]["decision"] == "admit"
    # a restart into a measurement the policy does not allow is caught by that re-verification
    p.restart_sidecar(measurement=b"\x77" * 48)
    r = requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10)
    assert r.status_code == 502 and r.json()["step"] == "policy"
    s.close()


def test_backend_down_is_a_clear_502_and_other_routes_keep_working(tmp_path, grpc_backend):
    dead_http = f"127.0.0.1:{free_port()}"
    dead_sidecar = f"127.0.0.1:{free_port()}"
    with pair(tmp_path, http_backend=dead_http, grpc_backend=grpc_backend.addr, extra_routes={"gone.test:80": dead_sidecar}) as p:
        r = requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10)
        assert r.status_code == 502
        body = r.json()
        assert body["step"] == "backend-connect" and dead_http in body["error"]
        r = requests.get("http://gone.test/x", proxies={"http": p.proxy_url}, timeout=10)
        assert r.status_code == 502 and r.json()["step"] == "tls-connect" and r.json()["service"] == "gone.test:80"
        # the gRPC route through the same proxy and sidecar is unaffected
        assert grpc_echo(p.grpc_service, b"still here", proxy_url=p.proxy_url) == b"still here"


def test_header_too_large_is_431(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, proxy_options={"max_header_bytes": 2048}) as p:
        r = requests.get(f"http://{p.http_service}/hello", headers={"X-Big": "a" * 4096}, proxies={"http": p.proxy_url}, timeout=10)
        assert r.status_code == 431
        assert "head larger" in r.json()["error"]
        assert not p.proxy_events("handshake"), "nothing went upstream"


def test_unknown_route_and_malformed_requests_are_refused_without_upstream(p):
    r = requests.get("http://elsewhere.test:9000/x", proxies={"http": p.proxy_url}, timeout=10)
    assert r.status_code == 403 and r.json()["service"] == "elsewhere.test:9000" and r.json()["step"] == "route"
    with socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10) as s:
        s.sendall(b"GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert not p.proxy_events("handshake")


def test_subprocess_mode_cli_end_to_end(tmp_path, http_backend, grpc_backend):
    with pair(tmp_path, http_backend=http_backend.addr, grpc_backend=grpc_backend.addr, mode="process", maps=["inference.test:8000"]) as p:
        r = curl("-x", p.proxy_url, f"http://{p.http_service}/hello")
        assert r.returncode == 0 and r.stdout == b"hello from the backend"
        r = curl(f"http://127.0.0.1:{p.map_ports['inference.test:8000']}/hello")
        assert r.stdout == b"hello from the backend"
        assert grpc_echo(p.grpc_service, b"via cli", proxy_url=p.proxy_url) == b"via cli"
        assert requests.get(f"{p.sidecar_admin_url}/readyz", timeout=5).json()["ready"] is True
        assert p.metric(p.proxy_admin_url, "ratls_proxy_handshakes_total", result="admit") >= 2


def test_byte_counting_backend_counts(tmp_path):
    """Sanity check of the helper the negative tests rely on: it does see bytes when relayed to."""
    b = ByteCountingBackend()
    try:
        with pair(tmp_path, http_backend=b.addr) as p:
            r = requests.get(f"http://{p.http_service}/x", proxies={"http": p.proxy_url}, timeout=10)
            assert r.status_code == 200 and r.content == b"LEAKED"
        assert b.bytes > 0 and b.connections == 1
    finally:
        b.stop()


def test_connection_limit_and_idle_timeout_answer_clearly(tmp_path, http_backend):
    opts = {"max_connections": 1, "idle_timeout": 1}
    with pair(tmp_path, http_backend=http_backend.addr, proxy_options=opts) as p, socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10) as first:
        first.sendall(b"GET http://inference.test:8000/hello HTTP/1.1\r\nHost: inference.test:8000\r\n\r\n")
        assert first.recv(65536).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10) as second:
            data = second.recv(65536)
            assert data.startswith(b"HTTP/1.1 503 ") and b"connection limit" in data
        # the idle first connection is closed by the proxy (idle timeout), not left hanging
        assert first.recv(65536) == b""


def test_workers_share_the_listener(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, mode="process", proxy_options={"workers": 2}) as p:
        for _ in range(6):  # new client connections each time: the kernel spreads them over both workers
            r = curl("-x", p.proxy_url, f"http://{p.http_service}/hello")
            assert r.returncode == 0 and r.stdout == b"hello from the backend"
        parent = p._procs["proxy"].pid
        children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        assert len(children) == 1, "one forked worker besides the first"
        pids = {int(h["conn_id"].split("-")[1]) for h in p.proxy_events("handshake")}
        assert pids <= {parent, *children}
    assert not Path(f"/proc/{children[0]}").exists() or "Z" in Path(f"/proc/{children[0]}/stat").read_text().split(")")[1][:3], \
        "stopping the proxy stops its workers"


def test_in_flight_request_gets_an_explicit_error_when_the_sidecar_dies(p):
    import threading

    result: dict = {}

    def call():
        try:
            result["status"] = requests.get(f"http://{p.http_service}/slow", params={"s": 20}, proxies={"http": p.proxy_url}, timeout=25).status_code
        except requests.RequestException as e:
            result["error"] = e

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while not p.sidecar_events("certificate") or p.metric(p.sidecar_admin_url, "ratls_sidecar_open_connections") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p.restart_sidecar()
    t.join(20)
    assert not t.is_alive(), "the client must not hang"
    assert result.get("status") == 502, f"nothing of the response had gone out: the client gets an explicit 502, not a cut connection ({result})"
    # and the next request works against the new sidecar
    assert requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10).status_code == 200


def test_connect_tunnel_carrying_http1(p):
    """``curl -p`` tunnels HTTP/1.1 through CONNECT: the proxy sniffs no HTTP/2 preface and
    reconnects upstream with ALPN http/1.1 (the verdict is cached by then)."""
    r = curl("-p", "-x", p.proxy_url, f"http://{p.http_service}/hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello from the backend"
    hs = p.proxy_events("handshake")
    assert [(h["alpn"], h["cached"]) for h in hs] == [("h2", False), ("http/1.1", True)]


async def test_websocket_upgrade_through_the_proxy(tmp_path, http_backend):
    import aiohttp

    from tests.pair import apair

    async with apair(tmp_path, http_backend=http_backend.addr) as p, aiohttp.ClientSession() as s, \
            s.ws_connect(f"http://{p.http_service}/ws", proxy=p.proxy_url) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=10)) == "echo:hi"
    assert p.proxy_events("handshake")[0]["decision"] == "admit"


def test_chunked_response_and_http10_client(p, http_backend):
    r = curl("-x", p.proxy_url, f"http://{p.http_service}/chunked?n=4")
    assert r.stdout == b"part 0;part 1;part 2;part 3;"
    r = curl("-0", "-x", p.proxy_url, f"http://{p.http_service}/chunked?n=3")  # HTTP/1.0 cannot read chunked
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"part 0;part 1;part 2;"
    assert http_backend.requests[-1]["version"] == "HttpVersion(major=1, minor=0)"
    r = curl("-0", "-x", p.proxy_url, f"http://{p.http_service}/hello")
    assert r.stdout == b"hello from the backend"


def test_idle_pooled_upstream_connections_are_closed(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, proxy_options={"pool_idle_timeout": 1}) as p:
        assert requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10).status_code == 200
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_open_connections") == 1  # pooled
        deadline = time.monotonic() + 15
        while p.metric(p.sidecar_admin_url, "ratls_sidecar_open_connections") != 0:
            assert time.monotonic() < deadline, "the idle pooled connection was never closed"
            time.sleep(0.1)
        assert p.metric(p.proxy_admin_url, "ratls_proxy_upstream_connections") == 0
        # and the next request simply opens (and verifies, from cache) a new one
        assert requests.get(f"http://{p.http_service}/hello", proxies={"http": p.proxy_url}, timeout=10).status_code == 200
        assert [h["cached"] for h in p.proxy_events("handshake")] == [False, True]


def test_pipelined_requests_are_answered_in_order(p):
    one = b"GET http://inference.test:8000/hello HTTP/1.1\r\nHost: inference.test:8000\r\n\r\n"
    two = b"POST http://inference.test:8000/echo HTTP/1.1\r\nHost: inference.test:8000\r\nContent-Length: 5\r\n\r\nabcde"
    with socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10) as s:
        s.sendall(one + two + one)
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 3 or not data.endswith(b"hello from the backend"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.index(b"hello from the backend") < data.index(b"abcde") < data.rindex(b"hello from the backend")
