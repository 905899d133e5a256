"""The sidecar's limits and recovery: connection limit, idle timeout, rotation retried after a failure."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import timedelta

import pytest

from sidecar.server import Sidecar
from tests.pair import pair, start_pair, wait_for
from tests.test_sidecar import http_get, tls_connect

pytestmark = pytest.mark.slow


def _restarted(tmp_path, http_backend, *flags: str):
    p = start_pair(tmp_path, http_backend=http_backend.addr)
    p._sidecar_argv += list(flags)
    p.restart_sidecar()
    return p


def test_past_the_connection_limit_a_client_gets_503_naming_it(tmp_path, http_backend):
    p = _restarted(tmp_path, http_backend, "--max-connections", "1")
    try:
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as first:
            assert http_get(first, "/hello") == b"hello from the backend"
            with tls_connect(p.sidecar_addr, ["http/1.1"]) as second:
                second.sendall(b"GET /hello HTTP/1.1\r\nHost: inference.test\r\n\r\n")
                data = b""
                while chunk := second.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ")
            reason = json.loads(body)
            assert reason["reason"] == "too-many-connections" and "(1)" in reason["error"]
            assert http_get(first, "/hello") == b"hello from the backend", "the connection within the limit carries on"
        wait_for("the log line", lambda: any(c["result"] == "too-many-connections" for c in p.sidecar_events("connection")))
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_errors_total", kind="too-many-connections") == 1
    finally:
        p.stop()


def test_an_idle_connection_is_closed_and_logged(tmp_path, http_backend):
    p = _restarted(tmp_path, http_backend, "--idle-timeout", "1")
    try:
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as s:
            assert http_get(s, "/hello") == b"hello from the backend"
            t0 = time.monotonic()
            s.settimeout(10)
            assert s.recv(100) == b""
            assert 0.9 <= time.monotonic() - t0 < 5
        wait_for("the log line", lambda: p.sidecar_events("connection"))
        conn = p.sidecar_events("connection")[-1]
        assert conn["result"] == "idle-timeout" and conn["idle_timeout_s"] == 1
        # byte counters: what crossed is counted once (sweeps, then the close, add up to the totals)
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_bytes_total", direction="to_backend") == conn["bytes_from_client"]
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_bytes_total", direction="to_client") == conn["bytes_from_backend"]
    finally:
        p.stop()


def test_a_failed_rotation_is_retried_soon_not_a_period_later(tmp_path, http_backend):
    calls = {"n": 0}

    def factory(cfg):
        real = cfg.attest

        def flaky(report_data: bytes):
            calls["n"] += 1
            if calls["n"] in (2, 3):  # the first rotation and its first retry fail
                raise OSError("evidence provider unavailable")
            return real(report_data)

        # lifetime 60 s, rotation at 50%: a period of 30 s, far longer than the test waits
        return Sidecar(dataclasses.replace(cfg, attest=flaky, lifetime=timedelta(seconds=60), rotate_at=0.5))

    with pair(tmp_path, http_backend=http_backend.addr, sidecar_factory=factory) as p:
        sc = p._sidecar
        first = sc.cert_sha256
        sc._rotator.cancel()
        p._lt.call(_start_rotator_now(sc))
        wait_for("a new certificate after two failures", lambda: len(p.sidecar_events("certificate")) >= 2, timeout=20)
        failed = p.sidecar_events("rotation-failed")
        assert [(f["attempt"], f["retry_in_s"]) for f in failed] == [(1, 1.0), (2, 2.0)]
        assert "evidence provider unavailable" in failed[0]["error"] and failed[0]["current_expires_in_s"] > 0
        assert sc.cert_sha256 != first
        assert p.metric(p.sidecar_admin_url, "ratls_sidecar_errors_total", kind="rotation") == 2


async def _start_rotator_now(sc: Sidecar) -> None:
    """Run the rotation loop with its first rotation due at once (the period is 30 s)."""
    import asyncio

    sc._rotator = asyncio.get_running_loop().create_task(sc._rotate_forever(first_in=0.0))


def test_a_failed_tls_handshake_is_logged_with_its_reason_and_counted(tmp_path, http_backend):
    import socket
    import ssl

    with pair(tmp_path, http_backend=http_backend.addr) as p:
        with socket.create_connection(("127.0.0.1", p.sidecar_port), timeout=10) as s:  # plain HTTP to the TLS port
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: inference.test\r\n\r\n")
            assert s.recv(4096) == b""
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # TLS 1.2 only
        old.check_hostname, old.verify_mode, old.maximum_version = False, ssl.CERT_NONE, ssl.TLSVersion.TLSv1_2
        strict = ssl.create_default_context()  # checks the chain against CAs: refuses the self-signed RA-TLS certificate
        for ctx in (old, strict):
            with socket.create_connection(("127.0.0.1", p.sidecar_port), timeout=10) as raw, pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="inference.test")
        wait_for("three handshake-failed lines", lambda: len(p.sidecar_events("handshake-failed")) == 3)
        reasons = [e["reason"] for e in p.sidecar_events("handshake-failed")]
        assert reasons == ["HTTP_REQUEST", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_UNKNOWN_CA"]
        plain = p.sidecar_events("handshake-failed")[0]
        assert "plain HTTP" in plain["hint"] and "http request" in plain["error"] and plain["cert_sha256"]
        for reason in reasons:
            assert p.metric(p.sidecar_admin_url, "ratls_sidecar_tls_handshake_failures_total", reason=reason) == 1
        # good clients are untouched by the hook
        with tls_connect(p.sidecar_addr, ["http/1.1"]) as ok:
            assert http_get(ok, "/hello") == b"hello from the backend"
        assert len(p.sidecar_events("handshake-failed")) == 3
