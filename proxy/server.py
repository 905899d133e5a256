"""The verifying forward proxy: the only place in ``proxy/`` that touches asyncio sockets.

Per client connection (see docs/proxy.md for the whole picture):

1. read a request head (:mod:`proxy.http1`, sans-IO); ``CONNECT host:port`` or an absolute-form
   ``http://host:port/...`` request names the target service;
2. look the service up in the routes (unknown: 403, nothing leaves the machine);
3. take a verified upstream connection from the pool, or open one: TLS 1.3 to the sidecar, then
   :class:`VerdictCache` checks the peer certificate (verdicts cached by certificate hash and
   policy digest until ``expires_at``). A refusal answers 502 with ``verdict.refusal(service)``
   *before a single request byte is written upstream*;
4. relay: request head rewritten to origin-form, bodies streamed by :class:`~proxy.relay.Endpoint`
   under a :class:`~proxy.http1.BodyFramer`; CONNECT and port maps become raw tunnels, with the
   upstream ALPN (``h2`` or ``http/1.1``) chosen by sniffing the client's first bytes for the
   HTTP/2 connection preface.

Verification runs in a worker thread (it is CPU work: ECDSA, X.509) and only on a cache miss; the
relay itself never calls into the verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ratls.evidence import VerifyOptions
from ratls.policy import Policy

from .http1 import (
    BodyFramer,
    Framing,
    HttpError,
    Request,
    origin_form,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    simple_response,
    split_authority,
    upstream_head,
)
from .obs import JsonLog, next_conn_id, trim_memory, utcnow
from .relay import Endpoint, Mode, count_bytes, splice, sweep_period

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: methods retried once when a pooled upstream connection turns out dead (RFC 9110 9.2.2; as Go's http.Transport)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
ALPN_H2 = "h2"
ALPN_HTTP1 = "http/1.1"


@dataclass
class Route:
    service: str  # "host:port" as clients name it
    sidecar: tuple[str, int]
    policy: Policy | None
    #: TLS SNI sent to the sidecar (an ingress in passthrough routes on it); default: the service host
    sni: str | None = None


@dataclass
class ProxyConfig:
    listen: tuple[str, int] = ("127.0.0.1", 15001)
    routes: dict[tuple[str, int], Route] = field(default_factory=dict)
    #: local listen address -> service "host:port" (must be a route)
    maps: list[tuple[tuple[str, int], str]] = field(default_factory=list)
    sim_root: bytes | None = None
    admin: tuple[str, int] | None = None
    log_path: str | None = None
    max_head: int = 64 * 1024
    max_connections: int = 10000
    idle_timeout: float = 120.0
    connect_timeout: float = 10.0
    #: wait for a response head this long (inference can be slow)
    response_timeout: float = 300.0
    pool_size: int = 64
    #: seconds an idle pooled upstream connection is kept
    pool_idle_timeout: float = 60.0
    #: seconds a CONNECT or port-map tunnel may pass no byte either way before both ends are closed (0: never)
    tunnel_idle_timeout: float = 3600.0
    reuse_port: bool = False
    #: processes sharing the listeners (SO_REUSEPORT); each has its own pool and verdict cache
    workers: int = 1
    #: DCAP collateral getter (``--collateral-dir`` / ``--pccs-url``), after the evidence's own endorsements
    collateral: Any = None


class Refused(Exception):
    """The sidecar's evidence did not pass (or there is no policy): nothing may be relayed."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.body = body


class UpstreamError(Exception):
    """The sidecar could not be reached or broke the protocol: 502/503/504 with ``detail``."""

    def __init__(self, status: int, step: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.step = step
        self.detail = detail


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.handshakes = Counter("ratls_proxy_handshakes", "attested handshakes by decision and evidence type", ["result", "evidence_type"], registry=r)
        self.verify_seconds = Histogram("ratls_proxy_verify_seconds", "certificate verification time (cache misses)", registry=r)
        self.cache_hits = Counter("ratls_proxy_verdict_cache_hits", "handshakes answered from the verdict cache", registry=r)
        self.cache_misses = Counter("ratls_proxy_verdict_cache_misses", "handshakes that ran the verifier", registry=r)
        self.upstream_open = Gauge("ratls_proxy_upstream_connections", "open upstream (sidecar) connections", registry=r)
        self.client_open = Gauge("ratls_proxy_client_connections", "open client connections", registry=r)
        self.bytes = Counter("ratls_proxy_bytes", "bytes relayed", ["direction"], registry=r)
        self.requests = Counter("ratls_proxy_requests", "requests and tunnels by kind and status", ["kind", "status"], registry=r)
        self.errors = Counter("ratls_proxy_errors", "errors by kind", ["kind"], registry=r)
        self._req_children: dict[tuple[str, str], Any] = {}

    def request(self, kind: str, status: int | str) -> None:
        """Count one request; label children are cached (``labels()`` takes a lock per call)."""
        key = (kind, str(status))
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(*key)
        child.inc()


class VerdictCache:
    """Verdicts by (certificate sha256, policy digest), each valid until its ``expires_at``.

    Refusals are cached too (a refused certificate stays refused until it changes), but only until
    the same expiry: a policy change has a new digest and so never hits an old entry.
    """

    def __init__(self, sim_root: bytes | None, clock: Callable[[], datetime] = utcnow, collateral: Any = None) -> None:
        self.sim_root = sim_root
        self.clock = clock
        self.collateral = collateral
        self._items: dict[tuple[str, str], Any] = {}

    def lookup(self, sha: str, policy: Policy) -> Any | None:
        v = self._items.get((sha, policy.digest))
        if v is None:
            return None
        if v.expires_at is not None and self.clock() >= v.expires_at:
            del self._items[(sha, policy.digest)]
            return None
        return v

    def verify(self, der: bytes, policy: Policy) -> Any:
        """Run the verifier (call in a thread) and remember the verdict."""
        from ratls.certificate import verify_certificate

        v = verify_certificate(der, VerifyOptions(now=self.clock(), sim_root=self.sim_root, collateral=self.collateral), policy)
        if v.expires_at is not None or not v.ok:
            if v.expires_at is None:  # refusals without a computed expiry: re-check after a minute
                from datetime import timedelta

                v.expires_at = self.clock() + timedelta(seconds=60)
            self._items[(v.cert_sha256, policy.digest)] = v
        return v

    def prune(self) -> None:
        now = self.clock()
        for k, v in list(self._items.items()):
            if v.expires_at is not None and now >= v.expires_at:
                self._items.pop(k, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Upstream:
    ep: Endpoint
    route: Route
    alpn: str
    verdict: Any
    conn_id: str
    #: loop time it went idle in the pool
    idle_since: float = 0.0
    #: the sidecar's certificate (DER): a tunnel is re-verified from it when the policy changes
    der: bytes = b""


def _no_policy_body(service: str) -> dict[str, Any]:
    return {"error": "no policy configured for this service: no policy, no traffic", "service": service, "step": "policy",
            "reason": "no-policy", "failed": []}


class _Client(Endpoint):
    def __init__(self, proxy: Proxy, mapped: str | None) -> None:
        super().__init__()
        self.proxy = proxy
        self.mapped = mapped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.proxy._spawn(self.proxy._serve_client(self, self.mapped))


class Proxy:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.metrics = ProxyMetrics()
        self.log = JsonLog(cfg.log_path, component="proxy")
        self.cache = VerdictCache(cfg.sim_root, collateral=cfg.collateral)
        self._pool: dict[tuple[str, str], list[Upstream]] = defaultdict(list)
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: set[_Client] = set()
        self._upstreams: set[Endpoint] = set()
        #: open tunnels: client endpoint -> its upstream (verdict and certificate included)
        self._tunnels: dict[Endpoint, Upstream] = {}
        self._admin: Any = None
        self.port: int | None = None
        #: service -> bound port of its map listener; ``maps_bound`` keeps every (listen, service, port)
        self.map_ports: dict[str, int] = {}
        self.maps_bound: list[tuple[str, str, int]] = []
        self.admin_port: int | None = None
        self._ctx = {alpn: self._client_context(alpn) for alpn in (ALPN_H2, ALPN_HTTP1)}
        #: one verification per certificate at a time: concurrent handshakes wait for the first
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        #: set by :meth:`start`; per-request code uses it (``asyncio.get_running_loop()`` costs a getpid() in 3.11)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    @staticmethod
    def _client_context(alpn: str) -> ssl.SSLContext:
        """TLS 1.3 client context. The WebPKI is not consulted: trust comes from the evidence the
        certificate carries, checked by :class:`VerdictCache` right after the handshake."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn])
        return ctx

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        host, port = self.cfg.listen
        srv = await loop.create_server(lambda: _Client(self, None), host, port, reuse_port=self.cfg.reuse_port or None, backlog=1024)
        self._servers.append(srv)
        self.port = srv.sockets[0].getsockname()[1]
        self._spawn(self._sweep_pool())
        for (mhost, mport), service in self.cfg.maps:
            msrv = await loop.create_server(lambda s=service: _Client(self, s), mhost, mport, reuse_port=self.cfg.reuse_port or None)
            self._servers.append(msrv)
            bound = msrv.sockets[0].getsockname()[1]
            self.map_ports[service] = bound
            self.maps_bound.append((f"{mhost}:{mport}", service, bound))
        if self.cfg.admin is not None:
            from .obs import AdminServer

            self._admin = AdminServer(self.metrics.registry, lambda: (True, {"routes": len(self.cfg.routes), "verdicts_cached": len(self.cache)}))
            await self._admin.start(*self.cfg.admin)
            self.admin_port = self._admin.port
        self.log.write("listening", listen=f"{host}:{self.port}", maps=[f"{listen}={svc} (port {port})" for listen, svc, port in self.maps_bound],
                       routes={r.service: {"sidecar": f"{r.sidecar[0]}:{r.sidecar[1]}", "policy": r.policy.name if r.policy else None}
                               for r in self.cfg.routes.values()}, admin=self.admin_port)

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for ep in list(self._clients) + list(self._upstreams):
            ep.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._admin is not None:
            await self._admin.stop()
        self.log.close()

    def _spawn(self, coro: Any) -> None:
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- upstream: connect, verify, pool ---------------------------------------------------
    async def connect_upstream(self, route: Route, alpn: str, peer: str | None) -> Upstream:
        """A new TLS connection to the route's sidecar whose certificate passed the policy.

        Raises :class:`Refused` (502 with the verdict) or :class:`UpstreamError`. Nothing is
        written on the connection here; the caller relays only after this returns.
        """
        if route.policy is None:
            self.metrics.handshakes.labels("refuse", "none").inc()
            self.log.write("handshake", conn_id=None, peer=peer, target=route.service, decision="refuse", reason="no-policy",
                           failed_step="policy", error="no policy configured for this service")
            raise Refused(_no_policy_body(route.service))
        loop = asyncio.get_running_loop()
        cid = next_conn_id("up")
        t0 = time.perf_counter()
        sni = route.sni or route.service.rsplit(":", 1)[0]
        try:
            _, ep = await asyncio.wait_for(
                loop.create_connection(Endpoint, route.sidecar[0], route.sidecar[1], ssl=self._ctx[alpn], server_hostname=sni,
                                       ssl_handshake_timeout=self.cfg.connect_timeout),
                self.cfg.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            self.metrics.errors.labels("upstream-connect").inc()
            self.log.write("handshake", conn_id=cid, peer=peer, target=route.service, sidecar=f"{route.sidecar[0]}:{route.sidecar[1]}",
                           decision="error", failed_step="tls-connect", error=f"{type(e).__name__}: {e}")
            raise UpstreamError(502, "tls-connect", f"cannot reach the sidecar for {route.service} at {route.sidecar[0]}:{route.sidecar[1]}: {type(e).__name__}: {e}") from e
        t_hs = time.perf_counter()
        t = ep.transport
        if t is None:  # lost right after the handshake (the endpoint unlinks its transport)
            raise UpstreamError(502, "tls-connect", f"sidecar for {route.service} closed the connection right after the handshake")
        sslobj = t.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            ep.abort()
            raise UpstreamError(502, "tls-connect", f"sidecar for {route.service} presented no certificate")
        sha = hashlib.sha256(der).hexdigest()
        policy = route.policy
        verdict = self.cache.lookup(sha, policy)
        cached = verdict is not None
        if cached:
            self.metrics.cache_hits.inc()
        else:
            key = (sha, policy.digest)
            fut = self._inflight.get(key)
            if fut is not None:
                verdict = await asyncio.shield(fut)
                cached = True
                self.metrics.cache_hits.inc()
            else:
                fut = loop.create_future()
                self._inflight[key] = fut
                try:
                    self.metrics.cache_misses.inc()
                    tv = time.perf_counter()
                    verdict = await asyncio.to_thread(self.cache.verify, der, policy)
                    self.metrics.verify_seconds.observe(time.perf_counter() - tv)
                    fut.set_result(verdict)
                except BaseException as e:
                    fut.set_exception(e)
                    fut.exception()  # mark retrieved
                    ep.abort()
                    raise
                finally:
                    del self._inflight[key]
        t_v = time.perf_counter()
        cipher = t.get_extra_info("cipher")
        self.metrics.handshakes.labels("admit" if verdict.ok else "refuse", verdict.evidence_type or "none").inc()
        self.log.write(
            "handshake", conn_id=cid, peer=peer, target=route.service, sidecar=f"{route.sidecar[0]}:{route.sidecar[1]}", alpn=alpn,
            tls_version=sslobj.version(), cipher=cipher[0] if cipher else None, cached=cached,
            timings_ms={"connect_handshake": round((t_hs - t0) * 1e3, 3), "verify": round((t_v - t_hs) * 1e3, 3)},
            **verdict.to_log(),
        )
        if not verdict.ok:
            ep.abort()
            raise Refused(verdict.refusal(route.service))
        self.metrics.upstream_open.inc()
        self._upstreams.add(ep)
        ep._on_lost = self._upstream_lost
        return Upstream(ep, route, alpn, verdict, cid, der=der)

    def _upstream_lost(self, ep: Endpoint) -> None:
        if ep in self._upstreams:
            self._upstreams.discard(ep)
            self.metrics.upstream_open.dec()
            self._count_upstream(ep)

    def _count_upstream(self, ep: Endpoint) -> None:
        count_bytes(ep, self.metrics.bytes.labels("from_sidecar"), self.metrics.bytes.labels("to_sidecar"))

    def _count_client(self, ep: Endpoint) -> None:
        count_bytes(ep, self.metrics.bytes.labels("from_client"), self.metrics.bytes.labels("to_client"))

    def pooled(self, route: Route) -> Upstream | None:
        """An idle verified HTTP/1.1 connection to the route's sidecar whose verdict has not
        expired, or None. Synchronous: the common case of a request costs no coroutine here."""
        pool = self._pool[(route.service, ALPN_HTTP1)]
        if not pool:
            return None
        now = utcnow()
        while pool:
            up = pool.pop()
            if up.ep.closed or up.ep.eof or up.ep.buf or (up.verdict.expires_at is not None and now >= up.verdict.expires_at):
                up.ep.close()
                continue
            return up
        return None

    async def get_upstream(self, route: Route, peer: str | None) -> tuple[Upstream, bool]:
        """(upstream, from_pool) for HTTP/1.1 requests."""
        up = self.pooled(route)
        if up is not None:
            return up, True
        return await self.connect_upstream(route, ALPN_HTTP1, peer), False

    def release(self, up: Upstream) -> None:
        pool = self._pool[(up.route.service, up.alpn)]
        if up.ep.closed or up.ep.eof or up.ep.buf or len(pool) >= self.cfg.pool_size:
            up.ep.close()
            return
        # unlink from this client both ways, so its back-pressure never pauses the next user
        if up.ep.dst is not None and up.ep.dst.feeder is up.ep:
            up.ep.dst.feeder = None
        up.ep.dst = None
        up.ep.feeder = None
        up.ep.resume_reading()  # idle: reading stays on so that a close by the sidecar is noticed
        up.idle_since = self._loop.time()
        pool.append(up)

    async def _sweep_pool(self) -> None:
        """Periodically: close pooled connections idle longer than ``pool_idle_timeout`` and tunnels
        idle longer than ``tunnel_idle_timeout``, drop expired verdicts, bring the byte counters up
        to date (so long-lived tunnels show their traffic while it flows)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(sweep_period(self.cfg.pool_idle_timeout, self.cfg.tunnel_idle_timeout))
            cutoff = loop.time() - self.cfg.pool_idle_timeout
            for key, pool in self._pool.items():
                keep = [u for u in pool if u.idle_since >= cutoff and not u.ep.closed]
                for u in pool:
                    if u not in keep:
                        u.ep.close()
                self._pool[key] = keep
            self._sweep_tunnels(loop.time())
            for c in self._clients:
                self._count_client(c)
            for u in self._upstreams:
                self._count_upstream(u)
            self.cache.prune()
            if not self._clients:
                trim_memory()

    def _sweep_tunnels(self, now: float) -> None:
        limit = self.cfg.tunnel_idle_timeout
        for c, up in list(self._tunnels.items()):
            idle = c.idle_for(now)  # the client side of a tunnel sees every byte, both ways
            if limit > 0 and idle >= limit:
                self.metrics.errors.labels("tunnel-idle").inc()
                self._close_tunnel(c, up, "idle", idle_s=round(idle, 1), limit_s=limit)

    def _close_tunnel(self, c: Endpoint, up: Upstream, reason: str, **fields: Any) -> None:
        self.log.write("tunnel-closed", reason=reason, conn_id=up.conn_id, target=up.route.service, **fields,
                       bytes_from_client=c.bytes_in, bytes_from_sidecar=up.ep.bytes_in)
        c.close()
        up.ep.close()
        self._tunnels.pop(c, None)

    async def _recheck_tunnels(self, tunnels: list[tuple[Endpoint, Upstream]]) -> None:
        """After a policy change, each open tunnel's certificate is verified against its service's
        new policy: one that no longer passes is closed (logged with the failed rules), so a tightened
        policy or a revoked measurement reaches long-lived gRPC channels too, not only new connections.
        The client's next connection gets the 502 with the reason."""
        for c, up in tunnels:
            if self._tunnels.get(c) is not up:
                continue  # ended meanwhile
            route = next((r for r in self.cfg.routes.values() if r.service == up.route.service), None)
            if route is None:
                why, fields = "route-removed", {"error": "the service has no route any more"}
            elif route.policy is None:
                why, fields = "no-policy", {"error": "no policy configured for this service: no policy, no traffic"}
            else:
                try:
                    verdict = self.cache.lookup(hashlib.sha256(up.der).hexdigest(), route.policy)
                    if verdict is None:
                        verdict = await asyncio.to_thread(self.cache.verify, up.der, route.policy)
                except Exception as e:  # fail closed: a tunnel that cannot be re-verified does not stay open
                    why, fields = "recheck-failed", {"error": f"{type(e).__name__}: {e}"}
                else:
                    if self._tunnels.get(c) is not up:
                        continue
                    if verdict.ok:
                        up.route, up.verdict = route, verdict
                        self.log.write("tunnel-rechecked", conn_id=up.conn_id, target=route.service, decision="admit",
                                       cert_sha256=verdict.cert_sha256, policy_name=verdict.policy_name)
                        continue
                    refusal = verdict.refusal(route.service)
                    why, fields = "policy-changed", {"error": refusal["error"], "failed_step": verdict.failed_step, "failed": refusal["failed"],
                                                     "cert_sha256": verdict.cert_sha256, "policy_name": verdict.policy_name}
            self.metrics.errors.labels("tunnel-policy").inc()
            self._close_tunnel(c, up, why, **fields)

    def reload(self, cfg: ProxyConfig) -> dict[str, Any]:
        """Take new routes and policies (SIGHUP). Pooled connections verified under the old ones are
        closed, so the next request is verified against the new policy (the verdict cache keys on the
        policy digest); open tunnels whose service's policy changed are re-verified against it (see
        ``_recheck_tunnels``); requests in flight carry on. Listen addresses, maps and the other
        options need a restart: a change there is reported, not applied."""
        def summary(c: ProxyConfig) -> dict[str, Any]:
            return {r.service: {"sidecar": f"{r.sidecar[0]}:{r.sidecar[1]}", "policy": r.policy.digest[:16] if r.policy else None}
                    for r in c.routes.values()}

        before, after = summary(self.cfg), summary(cfg)
        ignored = [k for k in ("listen", "maps", "admin", "log_path", "workers") if getattr(cfg, k) != getattr(self.cfg, k)]
        self.cfg.routes = cfg.routes
        for pool in self._pool.values():
            for u in pool:
                u.ep.close()
        self._pool.clear()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        recheck = [(c, up) for c, up in self._tunnels.items() if up.route.service in changed]
        if recheck:
            self._spawn(self._recheck_tunnels(recheck))
        return self.log.write("reloaded", routes=after, changed=changed, needs_restart=ignored, tunnels_rechecked=len(recheck))

    # -- client side ----------------------------------------------------------------------
    def _route_for(self, host: bytes | str, port: int) -> Route | None:
        h = host.decode("ascii", "replace") if isinstance(host, bytes) else host
        return self.cfg.routes.get((h.lower(), port))

    def _error(self, c: Endpoint, status: int, body: dict[str, Any], *, close: bool) -> None:
        c.write(simple_response(status, json.dumps(body, default=str).encode(), close=close))
        if close:
            c.close()  # flushes the answer first

    async def _serve_client(self, c: _Client, mapped: str | None) -> None:
        peername = c.transport.get_extra_info("peername") if c.transport else None
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else None
        if len(self._clients) >= self.cfg.max_connections:
            self.metrics.errors.labels("too-many-connections").inc()
            self._error(c, 503, {"error": f"connection limit ({self.cfg.max_connections}) reached", "step": "limits"}, close=True)
            return
        self._clients.add(c)
        self.metrics.client_open.inc()
        try:
            if mapped is not None:
                await self._serve_mapped(c, mapped, peer)
            else:
                await self._serve_proxy(c, peer)
        except Exception as e:  # a bug must not take the listener down; it is logged and counted
            self.metrics.errors.labels("internal").inc()
            self.log.write("error", peer=peer, error=f"{type(e).__name__}: {e}")
            c.abort()
        finally:
            self._clients.discard(c)
            self.metrics.client_open.dec()
            self._count_client(c)

    async def _read_request(self, c: Endpoint) -> Request | None:
        """Next request head; None on a clean close or idle timeout. HttpError on bad bytes."""
        loop = self._loop
        deadline = loop.time() + self.cfg.idle_timeout
        while True:
            req = parse_request_head(c.buf, self.cfg.max_head) if c.buf else None
            if req is not None:
                del c.buf[: req.size]
                return req
            if c.eof:
                if c.buf.strip():
                    raise HttpError(400, "connection closed inside a request head")
                return None
            left = deadline - loop.time()
            if left <= 0:
                if c.buf:
                    raise HttpError(408, f"request head not complete within {self.cfg.idle_timeout:g} s")
                return None
            await c.wait_for_data(left)

    async def _serve_proxy(self, c: _Client, peer: str | None) -> None:
        while True:
            try:
                req = await self._read_request(c)
            except HttpError as e:
                self.metrics.request("http", str(e.status))
                self._error(c, e.status, {"error": e.detail, "step": "request-head"}, close=True)
                return
            if req is None:
                c.close()
                return
            if req.method == b"CONNECT":
                await self._serve_connect(c, req, peer)
                return
            if not await self._serve_request(c, req, peer):
                c.close()
                return

    async def _serve_request(self, c: _Client, req: Request, peer: str | None) -> bool:
        """Relay one absolute-form request; True if the client connection may carry another."""
        try:
            host, port, path = origin_form(req)
            framing, length = request_framing(req)
        except HttpError as e:
            self.metrics.request("http", str(e.status))
            self._error(c, e.status, {"error": e.detail, "step": "request-head"}, close=True)
            return False
        service = f"{host.decode('ascii', 'replace')}:{port}"
        has_body = framing is not Framing.NONE
        route = self._route_for(host, port)
        if route is None:
            self.metrics.request("http", "403")
            self.log.write("refused", peer=peer, target=service, reason="unknown-route")
            self._error(c, 403, {"error": f"no route for {service}: the proxy relays only to configured services", "service": service,
                                 "step": "route", "reason": "unknown-route", "failed": []}, close=has_body)
            return not has_body and req.keep_alive
        host_header = req.get(b"host") or (host if port == 80 else b"%s:%d" % (host, port))
        head = upstream_head(req, path, host_header)
        up = self.pooled(route)
        pooled = up is not None
        if up is None:
            up, pooled = await self._upstream_or_answer(c, route, peer, has_body)
            if up is None:  # refused or unreachable: answered already
                return not has_body and req.keep_alive
        try:
            ok = await self._exchange(c, up, req, head, BodyFramer(framing, length), retry=pooled and req.method in IDEMPOTENT)
        except _Retry:
            # a pooled connection the sidecar closed (idle, restart) before answering an idempotent
            # request without a body: one try on a fresh connection, verified as any other
            up.ep.close()
            up2, _ = await self._upstream_or_answer(c, route, peer, has_body, pooled_ok=False)
            if up2 is None:
                return False
            up = up2
            ok = await self._exchange(c, up, req, head, BodyFramer(framing, length), retry=False)
        return ok and req.keep_alive

    async def _upstream_or_answer(self, c: Endpoint, route: Route, peer: str | None, has_body: bool, pooled_ok: bool = True) -> tuple[Upstream | None, bool]:
        try:
            if pooled_ok:
                return await self.get_upstream(route, peer)
            return await self.connect_upstream(route, ALPN_HTTP1, peer), False
        except Refused as r:
            self.metrics.request("http", "502")
            self._error(c, 502, r.body, close=has_body)
            return None, True
        except UpstreamError as e:
            self.metrics.request("http", str(e.status))
            self._error(c, e.status, {"error": e.detail, "service": route.service, "step": e.step, "failed": []}, close=has_body)
            return None, True

    async def _exchange(self, c: _Client, up: Upstream, req: Request, head: bytes, body: BodyFramer, retry: bool = False) -> bool:
        """Send one request upstream and relay its response; True when both connections stay usable."""
        u = up.ep
        answered = c.bytes_out
        if body.done:
            u.write(head)
            body_done = None
        else:
            body_done = c.forward(body, u, prefix=head)
        sent_body = body.total
        loop = self._loop
        deadline = loop.time() + self.cfg.response_timeout
        try:
            while True:
                resp = None
                while resp is None:
                    try:
                        resp = parse_response_head(u.buf, self.cfg.max_head) if u.buf else None
                    except HttpError as e:
                        raise UpstreamError(502, "response-head", f"sidecar sent a bad response head: {e.detail}") from e
                    if resp is not None:
                        break
                    if u.eof:
                        if retry and not u.buf and body.total == sent_body == 0 and u.bytes_in == 0 and (body_done is None or body.framing is Framing.NONE):
                            raise _Retry()
                        raise UpstreamError(502, "response-head", f"sidecar for {up.route.service} closed the connection before a response"
                                            + (f" ({u.exc})" if u.exc else ""))
                    left = deadline - loop.time()
                    if left <= 0:
                        raise UpstreamError(504, "response-head", f"no response from {up.route.service} within {self.cfg.response_timeout:g} s")
                    await u.wait_for_data(left)
                if 100 <= resp.status < 200:
                    c.write(u.take(resp.size))
                    if resp.status == 101:  # protocol switch (WebSocket): a verified tunnel from here on
                        self.metrics.request("http", "101")
                        await splice(c, u)
                        return False
                    continue
                break
            framing, length = response_framing(resp, req.method)
            rb = BodyFramer(framing, length, error_status=502)
            try:
                await u.forward(rb, c, prefix=u.take(resp.size))
            except (HttpError, ConnectionError) as e:
                self.metrics.errors.labels("response-body").inc()
                self.log.write("error", target=up.route.service, step="response-body", error=str(e))
                c.abort()
                u.abort()
                return False
            self.metrics.request("http", str(resp.status))
            if body_done is not None and not body_done.done():
                # the service answered before the whole request body arrived: this exchange ends here
                c.mode = Mode.BUFFER
                u.close()
                return False
            if body_done is not None:
                exc = body_done.exception()
                if exc is not None:
                    u.close()
                    return False
            reusable = resp.keep_alive and framing is not Framing.UNTIL_CLOSE and (
                req.version == b"HTTP/1.1" or b"keep-alive" in req.tokens(b"connection"))  # an HTTP/1.0 upstream request closes by default
            if reusable:
                self.release(up)
            else:
                u.close()
            return reusable
        except UpstreamError as e:
            self.metrics.request("http", str(e.status))
            self.metrics.errors.labels(e.step).inc()
            u.abort()
            if c.bytes_out == answered:  # nothing of a response went out yet: the client gets a clear answer
                self._error(c, e.status, {"error": e.detail, "service": up.route.service, "step": e.step, "failed": []}, close=True)
            else:
                c.abort()
            return False
        finally:
            if body_done is not None and not body_done.done():
                body_done.cancel()

    # -- tunnels: CONNECT and port maps ----------------------------------------------------
    async def _sniff_alpn(self, c: Endpoint) -> str:
        """``h2`` if the client's first bytes are the HTTP/2 preface, else ``http/1.1``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.idle_timeout
        while len(c.buf) < len(H2_PREFACE) and H2_PREFACE.startswith(bytes(c.buf)) and not c.eof:
            left = deadline - loop.time()
            if left <= 0:
                break
            await c.wait_for_data(left)
        return ALPN_H2 if bytes(c.buf[: len(H2_PREFACE)]) == H2_PREFACE else ALPN_HTTP1

    async def _tunnel(self, c: Endpoint, up: Upstream, kind: str) -> None:
        self.metrics.request(kind, "200")
        self._tunnels[c] = up
        try:
            await splice(c, up.ep)
        finally:
            self._tunnels.pop(c, None)

    async def _serve_connect(self, c: _Client, req: Request, peer: str | None) -> None:
        try:
            host, port = split_authority(req.target)
        except HttpError as e:
            self.metrics.request("connect", "400")
            self._error(c, 400, {"error": e.detail, "step": "request-head"}, close=True)
            return
        service = f"{host.decode('ascii', 'replace')}:{port}"
        route = self._route_for(host, port)
        if route is None:
            self.metrics.request("connect", "403")
            self.log.write("refused", peer=peer, target=service, reason="unknown-route")
            self._error(c, 403, {"error": f"no route for {service}: the proxy relays only to configured services", "service": service,
                                 "step": "route", "reason": "unknown-route", "failed": []}, close=True)
            return
        # Verify before answering 200: a refusal must be a 502 before any tunnel exists. gRPC is the
        # usual CONNECT client, so the first connection offers h2; an HTTP/1.1 tunnel reconnects
        # (the verdict is cached by then, so that costs a handshake, not a verification).
        try:
            up = await self.connect_upstream(route, ALPN_H2, peer)
        except Refused as r:
            self.metrics.request("connect", "502")
            self._error(c, 502, r.body, close=True)
            return
        except UpstreamError as e:
            self.metrics.request("connect", str(e.status))
            self._error(c, e.status, {"error": e.detail, "service": service, "step": e.step, "failed": []}, close=True)
            return
        c.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if await self._sniff_alpn(c) != ALPN_H2:
            up.ep.close()
            try:
                up = await self.connect_upstream(route, ALPN_HTTP1, peer)
            except (Refused, UpstreamError) as e:
                self.log.write("error", peer=peer, target=service, step="connect-reconnect", error=str(e))
                c.close()
                return
        await self._tunnel(c, up, "connect")

    async def _serve_mapped(self, c: _Client, service: str, peer: str | None) -> None:
        host, _, port = service.rpartition(":")
        route = self._route_for(host, int(port))
        alpn = await self._sniff_alpn(c)
        if route is None:  # rejected at start-up; kept as a guard
            c.close()
            return
        try:
            up = await self.connect_upstream(route, alpn, peer)
        except (Refused, UpstreamError) as e:
            body = e.body if isinstance(e, Refused) else {"error": e.detail, "service": service, "step": e.step, "failed": []}
            status = 502 if isinstance(e, Refused) else e.status
            self.metrics.request("map", str(status))
            if alpn == ALPN_HTTP1:
                self._error(c, status, body, close=True)
            else:  # gRPC clients get the reason as grpc-status / grpc-message on every call
                from .h2answer import GRPC_PERMISSION_DENIED, GRPC_UNAVAILABLE, H2Answer, answer_h2

                grpc_status = GRPC_PERMISSION_DENIED if isinstance(e, Refused) else GRPC_UNAVAILABLE
                await answer_h2(c, H2Answer(body, http_status=status, grpc_status=grpc_status))
            return
        await self._tunnel(c, up, "map")


class _Retry(Exception):
    pass


async def serve_forever(cfg: ProxyConfig, ready: Callable[[Proxy], None] | None = None,
                        reload: Callable[[], ProxyConfig] | None = None) -> None:
    """Run until SIGTERM/SIGINT. With ``reload`` (re-reads the configuration), SIGHUP applies new
    routes and policies (:meth:`Proxy.reload`); a configuration that does not load is logged and the
    running one kept."""
    import signal

    p = Proxy(cfg)
    await p.start()
    if ready is not None:
        ready(p)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        assert reload is not None
        from .obs import signal_workers

        signal_workers(signal.SIGHUP)
        try:
            new = reload()
        except Exception as e:  # a bad file must not take the running proxy down
            p.metrics.errors.labels("reload").inc()
            p.log.write("reload-failed", error=f"{type(e).__name__}: {e}", kept="the running routes and policies")
            return
        p.reload(new)

    if reload is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await p.stop()
