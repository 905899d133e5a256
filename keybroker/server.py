"""The keybroker's HTTP edge: aiohttp routes over :class:`ratls.kbs.KbsCore`.

This is the only place that reads the clock and the network. Each request yields exactly one
JSON audit line (the core's record plus request id, peer, time and duration). Routes::

    POST /kbs/v0/auth            {"version", "tee"}                       -> {"nonce", ...}
    POST /kbs/v0/attest          {"nonce", "tee-pubkey", "tee-evidence"}  -> {"session", ...}
    GET  /kbs/v0/resource/<id>   Authorization: Bearer <session>          -> {"secret-id", "jwe"}
    GET  /healthz
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp import web

from ratls.evidence import Evidence, VerifyOptions, verify_evidence
from ratls.kbs import KbsCore, Outcome, SecretSource
from ratls.trail import Verification

SESSION_COOKIE = "kbs-session-id"
REQUEST_ID = web.RequestKey("ratls-request-id", str)
MAX_BODY = 4 << 20  # evidence with its endorsements (VCEK chain, TCB info, CRLs) stays far below


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_verifier(sim_root: bytes | None, collateral: Any = None) -> Callable[[Evidence, datetime], Verification]:
    """The production verifier: the core's table, ``now`` from the request edge."""

    def verify(ev: Evidence, now: datetime) -> Verification:
        return verify_evidence(ev, VerifyOptions(now=now, sim_root=sim_root, collateral=collateral))

    return verify


class AuditLog:
    """One JSON line per request, flushed at once (reviewers tail it)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines = 0
        self._lock = threading.Lock()  # the secret_prov endpoint writes from its own threads

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()
            self.lines += 1


def make_app(core: KbsCore, audit: AuditLog, *, clock: Callable[[], datetime] = utcnow) -> web.Application:
    async def _finish(request: web.Request, outcome: Outcome, t0: float, now: datetime) -> web.Response:
        rec = {
            "ts": now.isoformat(),
            "request_id": request[REQUEST_ID],
            "peer": request.remote,
            "method": request.method,
            "path": request.path,
            **outcome.audit,
            "ms": round((time.perf_counter() - t0) * 1e3, 3),
        }
        audit.write(rec)
        resp = web.json_response(outcome.body, status=outcome.status)
        resp.headers["X-Request-Id"] = request[REQUEST_ID]
        return resp

    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError:
            return None

    @web.middleware
    async def rid(request: web.Request, handler: Any) -> web.StreamResponse:
        request[REQUEST_ID] = uuid.uuid4().hex[:16]
        return await handler(request)

    async def auth(request: web.Request) -> web.Response:
        t0, now = time.perf_counter(), clock()
        return await _finish(request, core.auth(await _body(request), now), t0, now)

    async def attest(request: web.Request) -> web.Response:
        t0, now = time.perf_counter(), clock()
        outcome = core.attest(await _body(request), now)
        resp = await _finish(request, outcome, t0, now)
        if outcome.ok:
            resp.set_cookie(SESSION_COOKIE, outcome.body["session"], httponly=True, max_age=int(core.session_ttl_s))
        return resp

    async def resource(request: web.Request) -> web.Response:
        t0, now = time.perf_counter(), clock()
        authz = request.headers.get("Authorization", "")
        sid = authz[7:].strip() if authz.lower().startswith("bearer ") else request.cookies.get(SESSION_COOKIE)
        return await _finish(request, core.resource(sid, request.match_info["id"], now), t0, now)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pending_challenges": core.pending})

    app = web.Application(middlewares=[rid], client_max_size=MAX_BODY)
    app.add_routes(
        [
            web.post("/kbs/v0/auth", auth),
            web.post("/kbs/v0/attest", attest),
            web.get("/kbs/v0/resource/{id}", resource),
            web.get("/healthz", healthz),
        ]
    )
    return app


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


class Broker:
    """A running broker on a real socket (tests and the CLI use it the same way)."""

    def __init__(
        self,
        secrets: SecretSource,
        *,
        sim_root: bytes | None = None,
        audit_stream: TextIO | None = None,
        clock: Callable[[], datetime] = utcnow,
        nonce_ttl_s: float = 60.0,
        verify: Callable[[Evidence, datetime], Verification] | None = None,
    ) -> None:
        self.core = KbsCore(secrets, verify or make_verifier(sim_root), nonce_ttl_s=nonce_ttl_s)
        self.audit = AuditLog(audit_stream or sys.stderr)
        self.app = make_app(self.core, self.audit, clock=clock)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
