"""Observability shared by the proxy and the sidecar: JSON log lines and the admin HTTP port.

The log is one JSON object per line, appended and flushed per event so a reviewer (or a test) can
``tail -f`` it. The admin server (aiohttp, off the relay hot path) serves ``/healthz``, ``/readyz``
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
    """``/healthz`` (process alive), ``/readyz`` (``ready()`` true), ``/metrics``; optional extra routes."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        self.registry = registry
        self.ready = ready
        self._runner: Any = None
        self.port: int | None = None
        self.started = time.monotonic()

    async def start(self, host: str, port: int) -> None:
        from aiohttp import web

        async def healthz(_req: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "uptime_s": round(time.monotonic() - self.started, 3)})

        async def readyz(_req: web.Request) -> web.Response:
            ok, info = self.ready()
            return web.json_response({"ready": ok, **info}, status=200 if ok else 503)

        async def metrics(_req: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


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


def run_workers(n: int, main: Callable[[int], None]) -> None:
    """Run ``main(i)`` in ``n`` processes sharing SO_REUSEPORT listeners (the kernel spreads
    connections). Forks before any event loop or thread exists; worker 0 is this process and owns
    the admin port. Each worker keeps its own verdict cache / certificate. SIGTERM to this process
    stops the workers it started."""
    import signal

    if n <= 1:
        main(0)
        return
    children: list[int] = []
    for i in range(1, n):
        pid = os.fork()
        if pid == 0:
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
