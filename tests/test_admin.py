"""The admin port (``proxy.obs.AdminServer``) on a real socket: routes, keep-alive, bad requests."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, Counter

from proxy.obs import AdminServer


async def _exchange(port: int, raw: bytes, *, until_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    if until_close:
        data = await asyncio.wait_for(reader.read(), 10)
    else:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        data = head + await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    return data


def _split(resp: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    return status, headers, body


async def test_routes_metrics_and_readiness():
    reg = CollectorRegistry()
    Counter("ratls_test_things", "things", registry=reg).inc(3)
    ready = {"ok": False}
    admin = AdminServer(reg, lambda: (ready["ok"], {"detail": "x"}))
    await admin.start("127.0.0.1", 0)
    try:
        status, _, body = _split(await _exchange(admin.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, _, body = _split(await _exchange(admin.port, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 503 and json.loads(body) == {"ready": False, "detail": "x"}
        ready["ok"] = True
        status, _, body = _split(await _exchange(admin.port, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 200 and json.loads(body)["ready"] is True
        status, headers, body = _split(await _exchange(admin.port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
        assert b"ratls_test_things_total 3.0" in body
        status, _, body = _split(await _exchange(admin.port, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert status == 404 and "/metrics" in json.loads(body)["paths"]
        status, _, _ = _split(await _exchange(admin.port, b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"))
        assert status == 405
    finally:
        await admin.stop()


async def test_keep_alive_head_and_close():
    admin = AdminServer(CollectorRegistry(), lambda: (True, {}))
    await admin.start("127.0.0.1", 0)
    try:
        # two requests on one connection (a scraper's keep-alive), the second one a HEAD that closes
        raw = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nHEAD /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        data = await _exchange(admin.port, raw, until_close=True)
        first, _, rest = data.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")
        second = rest[rest.index(b"HTTP/1.1") :]
        status, headers, body = _split(second)
        assert status == 200 and headers[b"connection"] == b"close" and body == b""  # HEAD: length announced, no body
        assert int(headers[b"content-length"]) > 0
    finally:
        await admin.stop()


async def test_bad_and_oversized_heads_are_answered_and_closed():
    admin = AdminServer(CollectorRegistry(), lambda: (True, {}))
    await admin.start("127.0.0.1", 0)
    try:
        data = await _exchange(admin.port, b"garbage\r\n\r\n", until_close=True)
        assert _split(data)[0] == 400
        data = await _exchange(admin.port, b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", until_close=True)
        assert _split(data)[0] == 431
    finally:
        await admin.stop()
