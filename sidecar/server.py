"""The sidecar: TLS 1.3 with an RA-TLS certificate in front of a plain backend, inside the TEE.

What it does per connection is deliberately small: finish the TLS handshake (the certificate
carries the TEE's evidence bound to a key made here, in memory), pick the backend by ALPN (``h2``
-> gRPC backend, ``http/1.1`` or none -> HTTP backend), then splice bytes both ways on asyncio
Protocols (:mod:`proxy.relay`). All verification happens on the client side; the sidecar only
has to present fresh evidence and keep its private key off the disk.

The private key never touches a file system: the PEM goes to an anonymous ``memfd`` and
``SSLContext.load_cert_chain`` reads it through ``/proc/self/fd/N`` (Python's ssl module has no
in-memory key API). Rotation re-issues the certificate around new evidence well before it expires
and loads it into the *same* listening context: OpenSSL copies the certificate into each
connection at accept time, so new connections get the new one and open ones carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from proxy.obs import JsonLog, next_conn_id, trim_memory, utcnow
from proxy.relay import Endpoint, count_bytes, splice, sweep_period
from ratls.evidence import Evidence

ALPN_H2 = "h2"
ALPN_HTTP1 = "http/1.1"


@dataclass
class SidecarConfig:
    listen: tuple[str, int]
    http_backend: tuple[str, int] | None
    grpc_backend: tuple[str, int] | None
    #: report_data -> Evidence (a provider's ``get_evidence``)
    attest: Callable[[bytes], Evidence]
    evidence_type: str = "sim"
    admin: tuple[str, int] | None = None
    log_path: str | None = None
    lifetime: timedelta = timedelta(hours=1)
    #: rotate when this fraction of the lifetime has passed (well before expiry)
    rotate_at: float = 0.5
    dns_names: tuple[str, ...] = ()
    curve: str = "P-256"
    handshake_timeout: float = 10.0
    backend_connect_timeout: float = 5.0
    #: connections served at once; past it a client gets a 503 (or gRPC UNAVAILABLE) naming the limit
    max_connections: int = 10000
    #: seconds a connection may pass no byte either way before it is closed (0: never)
    idle_timeout: float = 3600.0
    reuse_port: bool = False
    extra_log: dict[str, Any] = field(default_factory=dict)


def _load_into_context(ctx: ssl.SSLContext, key_pem: bytes, cert_pem: bytes) -> None:
    """Load key + certificate from an anonymous memory file, never a path on disk."""
    fd = os.memfd_create("ratls-sidecar-key", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + cert_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class SidecarMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Counter("ratls_sidecar_connections", "TLS connections accepted, by ALPN and result", ["alpn", "result"], registry=r)
        self.open = Gauge("ratls_sidecar_open_connections", "connections open now", registry=r)
        self.bytes = Counter("ratls_sidecar_bytes", "bytes relayed", ["direction"], registry=r)
        self.rotations = Counter("ratls_sidecar_certificate_rotations", "certificates issued", registry=r)
        self.issue_seconds = Histogram("ratls_sidecar_certificate_issue_seconds", "time to gather evidence and issue", registry=r)
        self.errors = Counter("ratls_sidecar_errors", "errors by kind", ["kind"], registry=r)
        self.handshake_failures = Counter("ratls_sidecar_tls_handshake_failures", "TLS handshakes that failed, by OpenSSL's reason",
                                          ["reason"], registry=r)


_REFUSED_CERT = ("the client refused the certificate: an RA-TLS certificate is self-signed, verified from its evidence by the "
                 "ratls proxy, not by a CA")
#: what a failed handshake's OpenSSL reason usually means, for whoever reads the log
HANDSHAKE_HINTS = {
    "HTTP_REQUEST": "the client spoke plain HTTP to the TLS port (send it through the ratls proxy, or use https)",
    "WRONG_VERSION_NUMBER": "the client did not speak TLS (plain text to the TLS port?)",
    "UNSUPPORTED_PROTOCOL": "the client offered no TLS 1.3 (the sidecar accepts TLS 1.3 only)",
    "NO_APPLICATION_PROTOCOL": "ALPN: the client offered neither h2 nor http/1.1",
    "NO_SHARED_CIPHER": "no cipher suite in common with the client",
    "TLSV1_ALERT_UNKNOWN_CA": _REFUSED_CERT,
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused the certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _REFUSED_CERT,
}


def watched_sslobject(on_failure: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    """An ``SSLObject`` class that reports a failed server handshake before the loop drops it.

    asyncio's and uvloop's SSL transports close a connection whose handshake fails without telling
    the protocol (it was never connected) and log nothing unless in debug mode; the context's
    ``sslobject_class`` is the one hook on that path. Only ``do_handshake`` is wrapped: the
    read/write path is untouched."""

    class Watched(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as e:
                on_failure(e)
                raise

    return Watched


class _TlsSide(Endpoint):
    """The client-facing TLS socket: on handshake completion, connect the backend and splice."""

    def __init__(self, sidecar: Sidecar) -> None:
        super().__init__()
        self.sidecar = sidecar
        #: closed by the sweep for passing no byte within ``idle_timeout``
        self.idle_closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.sidecar._spawn(self.sidecar._serve(self))


class Sidecar:
    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg
        self.metrics = SidecarMetrics()
        self.log = JsonLog(cfg.log_path, component="sidecar")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.set_alpn_protocols([ALPN_H2, ALPN_HTTP1])
        self.ctx.sslobject_class = watched_sslobject(self._handshake_failed)
        self.cert_sha256: str | None = None
        self.cert_der: bytes | None = None
        self.cert_not_after: datetime | None = None
        self._server: asyncio.AbstractServer | None = None
        self._admin: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rotator: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.admin_port: int | None = None
        self._conns: set[_TlsSide] = set()
        self._trim_handle: asyncio.TimerHandle | None = None

    # -- certificate ----------------------------------------------------------------------
    def prepare(self, now: datetime | None = None) -> tuple[bytes, x509.Certificate]:
        """New key, fresh evidence, new certificate: the slow part, safe to run in a worker thread."""
        from ratls.certificate import issue_certificate, new_key

        now = now or utcnow()
        key = new_key(self.cfg.curve)
        cert = issue_certificate(key, self.cfg.attest, now=now, lifetime=self.cfg.lifetime, dns_names=self.cfg.dns_names)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), cert

    def install(self, key_pem: bytes, cert: x509.Certificate, issue_s: float = 0.0) -> None:
        """Load into the listening context. Call on the event loop thread: OpenSSL copies the
        context's key and certificate into each new connection, and a handshake starting between
        the certificate and the key update (from another thread) would pair the wrong ones."""
        _load_into_context(self.ctx, key_pem, cert.public_bytes(serialization.Encoding.PEM))
        der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_der = der
        self.cert_sha256 = hashlib.sha256(der).hexdigest()
        self.cert_not_after = cert.not_valid_after_utc
        self.metrics.rotations.inc()
        self.metrics.issue_seconds.observe(issue_s)
        self.log.write("certificate", cert_sha256=self.cert_sha256, evidence_type=self.cfg.evidence_type,
                       not_after=cert.not_valid_after_utc.isoformat(), issue_ms=round(issue_s * 1e3, 3))

    async def rotate(self) -> None:
        t0 = time.perf_counter()
        key_pem, cert = await asyncio.to_thread(self.prepare)
        self.install(key_pem, cert, time.perf_counter() - t0)

    def _went_idle(self) -> None:
        """The last connection closed: give its freed buffers back to the OS a second later, if
        no new connection came (a burst of short connections costs one trim, not one each)."""
        if self._trim_handle is not None:
            self._trim_handle.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a connection task closed at shutdown, outside the loop: nothing to trim for
            return
        self._trim_handle = loop.call_later(1.0, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_handle = None
        if not self._conns:
            trim_memory()

    async def _rotate_forever(self, first_in: float | None = None) -> None:
        """Re-issue every ``lifetime * rotate_at``. A failed rotation (the evidence provider or the
        collateral source is down) is retried after 1, 2, 4 ... 60 s, not a whole period later: the
        certificate in use must not run out while the cause is fixed."""
        period = max(1.0, self.cfg.lifetime.total_seconds() * self.cfg.rotate_at)
        delay = period if first_in is None else first_in
        failures = 0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.rotate()
                failures, delay = 0, period
            except Exception as e:  # keep serving the current certificate; say why loudly
                failures += 1
                delay = min(60.0, 2.0 ** (failures - 1))
                self.metrics.errors.labels("rotation").inc()
                left = (self.cert_not_after - utcnow()).total_seconds() if self.cert_not_after else None
                self.log.write("rotation-failed", error=f"{type(e).__name__}: {e}", attempt=failures, retry_in_s=delay,
                               current_expires_in_s=None if left is None else round(left, 1))

    async def _sweep(self) -> None:
        """Bring the byte counters up to date and close connections idle past ``idle_timeout``."""
        loop = asyncio.get_running_loop()
        limit = self.cfg.idle_timeout
        while True:
            await asyncio.sleep(sweep_period(limit))
            now = loop.time()
            for tls in list(self._conns):
                self._count(tls)
                if tls.idle_for(now) >= limit > 0:
                    tls.idle_closed = True
                    tls.close()

    def _count(self, tls: _TlsSide) -> None:
        count_bytes(tls, self.metrics.bytes.labels("to_backend"), self.metrics.bytes.labels("to_client"))

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.rotate()
        loop = asyncio.get_running_loop()
        host, port = self.cfg.listen
        self._server = await loop.create_server(
            lambda: _TlsSide(self), host, port, ssl=self.ctx, ssl_handshake_timeout=self.cfg.handshake_timeout,
            reuse_port=self.cfg.reuse_port or None, backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._rotator = asyncio.create_task(self._rotate_forever())
        self._spawn(self._sweep())
        if self.cfg.admin is not None:
            from proxy.obs import AdminServer

            self._admin = AdminServer(self.metrics.registry, self._ready)
            await self._admin.start(*self.cfg.admin)
            self.admin_port = self._admin.port
        self.log.write("listening", listen=f"{host}:{self.port}", admin=self.admin_port, evidence_type=self.cfg.evidence_type,
                       http_backend=_fmt(self.cfg.http_backend), grpc_backend=_fmt(self.cfg.grpc_backend), **self.cfg.extra_log)

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        ok = self.cert_sha256 is not None and self._server is not None
        return ok, {"cert_sha256": self.cert_sha256, "not_after": self.cert_not_after.isoformat() if self.cert_not_after else None}

    async def stop(self) -> None:
        if self._rotator is not None:
            self._rotator.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._admin is not None:
            await self._admin.stop()
        self.log.close()

    def _handshake_failed(self, e: ssl.SSLError) -> None:
        """One log line per failed TLS handshake (the peer is not known at this layer; the proxy's
        log has the client side)."""
        reason = getattr(e, "reason", None) or type(e).__name__
        self.metrics.handshake_failures.labels(reason).inc()
        self.metrics.errors.labels("tls-handshake").inc()
        self.log.write("handshake-failed", reason=reason, error=str(e), hint=HANDSHAKE_HINTS.get(reason), cert_sha256=self.cert_sha256)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _answer_error(self, tls: _TlsSide, body: dict[str, Any], alpn: str | None, status: int) -> None:
        """The client gets an answer with the reason, not a bare close: HTTP/1.1 the status with the
        JSON body (after its request head); HTTP/2 every request a gRPC UNAVAILABLE (or the status)."""
        if alpn == ALPN_H2:
            from proxy.h2answer import GRPC_UNAVAILABLE, H2Answer, answer_h2

            await answer_h2(tls, H2Answer(body, http_status=status, grpc_status=GRPC_UNAVAILABLE))
            return
        import json

        from proxy.http1 import simple_response

        if not tls.buf and not await tls.wait_for_data(10):
            return
        tls.write(simple_response(status, json.dumps(body).encode(), close=True))

    # -- one connection -------------------------------------------------------------------
    async def _serve(self, tls: _TlsSide) -> None:
        cid = next_conn_id("sc")
        t0 = time.perf_counter()
        t = tls.transport
        if t is None:  # the client left before this task ran
            return
        sslobj = t.get_extra_info("ssl_object")
        alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
        cipher = t.get_extra_info("cipher")
        peer = t.get_extra_info("peername")
        backend = self.cfg.grpc_backend if alpn == ALPN_H2 else self.cfg.http_backend
        rec: dict[str, Any] = {"conn_id": cid, "peer": _fmt(peer), "alpn": alpn, "tls_version": sslobj.version() if sslobj else None,
                               "cipher": cipher[0] if cipher else None, "cert_sha256": self.cert_sha256, "backend": _fmt(backend)}
        over_limit = len(self._conns) >= self.cfg.max_connections
        self._conns.add(tls)
        self.metrics.open.inc()
        result = "ok"
        try:
            if over_limit:
                result = "too-many-connections"
                self.metrics.errors.labels("too-many-connections").inc()
                await self._answer_error(tls, {"error": f"the sidecar's connection limit ({self.cfg.max_connections}) is reached",
                                               "step": "limits", "reason": "too-many-connections", "failed": []}, alpn, 503)
                return
            if backend is None:
                result = "no-backend"
                return
            loop = asyncio.get_running_loop()
            try:
                _, up = await asyncio.wait_for(loop.create_connection(Endpoint, backend[0], backend[1]), self.cfg.backend_connect_timeout)
            except (OSError, TimeoutError) as e:
                result = "backend-unreachable"
                rec["error"] = f"{type(e).__name__}: {e}"
                self.metrics.errors.labels("backend-connect").inc()
                await self._answer_error(tls, {"error": f"backend {_fmt(backend)} unreachable: {rec['error']}", "service": _fmt(backend),
                                               "step": "backend-connect", "reason": "backend-unreachable", "failed": []}, alpn, 502)
                return
            await splice(tls, up)
            rec["bytes_from_client"] = tls.bytes_in
            rec["bytes_from_backend"] = up.bytes_in
            if tls.idle_closed:
                result = "idle-timeout"
                rec["idle_timeout_s"] = self.cfg.idle_timeout
        finally:
            if result != "ok":
                tls.close()
            self._count(tls)
            self._conns.discard(tls)
            if not self._conns:
                self._went_idle()
            self.metrics.open.dec()
            self.metrics.connections.labels(alpn or "none", result).inc()
            self.log.write("connection", result=result, duration_ms=round((time.perf_counter() - t0) * 1e3, 3), **rec)


def _fmt(addr: Any) -> str | None:
    if addr is None:
        return None
    if isinstance(addr, tuple):
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


async def serve_forever(cfg: SidecarConfig, ready: Callable[[Sidecar], None] | None = None) -> None:
    import signal

    sc = Sidecar(cfg)
    await sc.start()
    if ready is not None:
        ready(sc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await sc.stop()
