"""Observability shared by the proxy and the sidecar: JSON log lines and the admin HTTP port.

The log is one JSON object per line, appended and flushed per event so a reviewer (or a test) can
``tail -f`` it. The admin server (:class:`AdminServer`, off the relay hot path) serves ``/healthz``, ``/readyz``
and Prometheus ``/metrics`` from a per-process :class:`prometheus_client.CollectorRegistry`, so
several servers in one test process do not share counters.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_conn_ids = itertools.count(1)


def next_conn_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_conn_ids)}"


def utcnow() -> datetime:
    """The one clock read of the shells (the sans-IO core takes ``now`` as an argument)."""
    return datetime.now(UTC)


class JsonLog:
    """Append-only JSON lines to a file (or stderr when no file was given and ``echo``)."""

    def __init__(self, path: str | None, *, component: str, echo: bool = False) -> None:
        self.path = path
        self.component = component
        self._fh: TextIO | None = open(path, "a", buffering=1, encoding="utf-8") if path else (sys.stderr if echo else None)  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = {"ts": utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"), "component": self.component, "event": event, **fields}
        if self._fh is not None:
            self._fh.write(json.dumps(rec, default=str, separators=(",", ":")) + "\n")
        return rec

    def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stderr:
            self._fh.close()
        self._fh = None


class AdminServer:
    """``/healthz`` (process alive), ``/readyz`` (``ready()`` true), ``/metrics`` (Prometheus).

    A small asyncio HTTP/1.1 server over :mod:`proxy.http1` rather than aiohttp: importing
    aiohttp cost each proxy and sidecar process 12 MB of resident memory for three GET routes.
    Keep-alive for scrapers; GET and HEAD only; heads over 8 KB or idle for 30 s are closed.
    """

    MAX_HEAD = 8 * 1024
    IDLE_S = 30.0

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.registry = registry
        self.ready = ready
        self._server: Any = None
        self.port: int | None = None
        self.started = time.monotonic()

    def answer(self, method: bytes, path: bytes) -> tuple[int, bytes, bytes]:
        """(status, content type, body) for one request: the routing, without sockets."""
        route = path.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, b"application/json", b'{"error": "GET or HEAD only"}'
        if route == b"/healthz":
            return 200, b"application/json", json.dumps({"status": "ok", "uptime_s": round(time.monotonic() - self.started, 3)}).encode()
        if route == b"/readyz":
            ok, info = self.ready()
            return (200 if ok else 503), b"application/json", json.dumps({"ready": ok, **info}, default=str).encode()
        if route == b"/metrics":
            return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry)
        return 404, b"application/json", json.dumps({"error": "not found", "paths": ["/healthz", "/readyz", "/metrics"]}).encode()

    async def start(self, host: str, port: int) -> None:
        import asyncio

        self._server = await asyncio.get_running_loop().create_server(lambda: _AdminConnection(self), host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class _AdminConnection:
    """One admin client connection (an ``asyncio.Protocol``)."""

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self.buf = bytearray()
        self.transport: Any = None
        self._idle: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._arm()

    def _arm(self) -> None:
        import asyncio

        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.admin.IDLE_S, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        from .http1 import HttpError, parse_request_head

        self.buf += data
        self._arm()
        while self.transport is not None:
            try:
                req = parse_request_head(self.buf, self.admin.MAX_HEAD)
            except HttpError as e:
                self._send(e.status, b"application/json", json.dumps({"error": e.detail}).encode(), head_only=False, close=True)
                return
            if req is None:
                return
            del self.buf[: req.size]
            status, ctype, body = self.admin.answer(req.method, req.target)
            self._send(status, ctype, body, head_only=req.method == b"HEAD", close=not req.keep_alive)

    def _send(self, status: int, ctype: bytes, body: bytes, *, head_only: bool, close: bool) -> None:
        from .http1 import simple_response

        self.transport.write(simple_response(status, body, ctype, close=close, head_only=head_only))
        if close:
            self._close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.transport = None
        self._idle = None


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) for command-line options; raises UsageError naming ``what``."""
    from ratls.errors import Reason, UsageError

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(Reason.CONFIG_INVALID, f"{what}: expected HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    p = int(port)
    if not 0 <= p < 65536:
        raise UsageError(Reason.CONFIG_INVALID, f"{what}: port out of range in {text!r}")
    return host, p


def install_uvloop() -> None:
    """uvloop when available (it is a dependency on Linux); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


#: pids of the workers :func:`run_workers` started (in worker 0, the parent)
_children: list[int] = []


def signal_workers(sig: int) -> None:
    """Pass a signal (SIGHUP: reload) on to the other workers; a no-op in a single process."""
    import signal as _signal

    for pid in _children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, _signal.Signals(sig))


def run_workers(n: int, main: Callable[[int], None]) -> None:
    """Run ``main(i)`` in ``n`` processes sharing SO_REUSEPORT listeners (the kernel spreads
    connections). Forks before any event loop or thread exists; worker 0 is this process and owns
    the admin port. Each worker keeps its own verdict cache / certificate. SIGTERM to this process
    stops the workers it started."""
    import signal

    if n <= 1:
        main(0)
        return
    children = _children
    for i in range(1, n):
        pid = os.fork()
        if pid == 0:
            _children.clear()  # a worker forwards nothing
            code = 0
            try:
                main(i)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    try:
        main(0)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


_libc: Any = None


def trim_memory() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Relaying large bodies frees many megabyte-sized buffers; glibc keeps them mapped, so the
    resident size would stay at its peak after a burst. Called when a server goes idle.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
