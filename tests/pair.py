"""Start a real sidecar (simulated TEE) and a real proxy for a test; stop them at exit.

API (stable; other tests build on it)::

    from tests.pair import pair, apair

    with pair(tmp_path, http_backend="127.0.0.1:8000", grpc_backend="127.0.0.1:8001") as p:
        requests.get(f"http://{p.http_service}/v2/health/ready", proxies={"http": p.proxy_url})
        # gRPC: env grpc_proxy=p.proxy_url, target p.grpc_service ; or p.env() for subprocesses
        # clients that cannot use a proxy: maps=["inference.test:8000"] -> p.map_ports["inference.test:8000"]

    async with apair(tmp_path, ...) as p:   # same object, started without blocking the event loop
        ...

``pair(tmp_path, *, http_backend=None, grpc_backend=None, measurement=None, policy="default",
maps=(), mode="thread", extra_routes=None, proxy_options=None, sidecar=True, sidecar_factory=None,
http_service="inference.test:8000", grpc_service="inference.test:8001", timeout=30)``

* ``http_backend`` / ``grpc_backend``: ``"HOST:PORT"`` or ``(host, port)`` the sidecar relays to.
* ``measurement``: the simulated TEE's launch measurement (bytes, 48 max); None: the sim default.
* ``policy``: ``"default"`` admits exactly this sidecar (``x-ms-attestation-type: sim`` and its
  launch measurement); a dict is written to a file and used as is; None: no ``--policy`` at all
  (every route is then refused: no policy, no traffic).
* ``maps``: services to expose on plain local ports (``--map``); ports in ``p.map_ports[service]``.
* ``mode``: ``"thread"`` runs both servers in this process on a background uvloop thread (fast,
  works from sync and async tests; blocking clients are fine); ``"process"`` runs
  ``python -m ratls.cli sidecar|proxy ...`` as subprocesses, exactly as a user would.
* ``extra_routes``: ``{service: "HOST:PORT"}`` more routes to other (e.g. dead or fake) sidecars.
* ``proxy_options``: extra proxy flags by option name without dashes, e.g.
  ``{"max_header_bytes": 1024, "idle_timeout": 5}``.
* ``sidecar=False``: start only the proxy (routes then come from ``extra_routes``).
* ``sidecar_factory``: thread mode only: ``SidecarConfig -> Sidecar`` (tests that fake a sidecar).

The yielded :class:`Pair` has ``proxy_url`` (``http://127.0.0.1:PORT``), ``proxy_port``,
``proxy_addr``, ``sidecar_addr``, ``sidecar_port``, ``http_service``, ``grpc_service``,
``proxy_admin_url``, ``sidecar_admin_url``, ``map_ports``, ``proxy_log``, ``sidecar_log``
(paths of the JSON-lines logs), ``sim_dir``, ``measurement``, ``policy_path``; and methods
``proxy_events(event=None)`` / ``sidecar_events(event=None)`` (parsed log lines),
``metric(admin_url, name, **labels)`` (a Prometheus sample value), ``env()`` (environment with
``http_proxy``/``grpc_proxy`` set for subprocess clients), ``restart_sidecar(measurement=...)``
(same port, new key and certificate) and ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HTTP_SERVICE = "inference.test:8000"
DEFAULT_GRPC_SERVICE = "inference.test:8001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _addr(a: str | tuple[str, int] | None) -> str | None:
    if a is None:
        return None
    return a if isinstance(a, str) else f"{a[0]}:{a[1]}"


def default_measurement() -> bytes:
    from ratls.sim import DEFAULT_MEASUREMENT

    return DEFAULT_MEASUREMENT


def sim_policy(measurement: bytes) -> dict[str, Any]:
    """The policy that admits exactly a simulated TEE with this launch measurement."""
    return {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": measurement.hex()}


class _LoopThread:
    """A uvloop event loop on a daemon thread; ``call(coro)`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ratls-pair", daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Pair:
    def __init__(self, tmp: Path, mode: str, timeout: float) -> None:
        self.tmp = tmp
        self.mode = mode
        self.timeout = timeout
        self.sim_dir = tmp / "sim"
        self.proxy_log = tmp / "proxy.log"
        self.sidecar_log = tmp / "sidecar.log"
        self.policy_path: Path | None = None
        self.measurement: bytes | None = None
        self.http_service = DEFAULT_HTTP_SERVICE
        self.grpc_service = DEFAULT_GRPC_SERVICE
        self.proxy_port = 0
        self.sidecar_port = 0
        self.proxy_admin_port = 0
        self.sidecar_admin_port = 0
        self.map_ports: dict[str, int] = {}
        self._lt: _LoopThread | None = None
        self._sidecar: Any = None
        self._proxy: Any = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._sidecar_argv: list[str] = []
        self._sidecar_factory: Callable[[Any], Any] | None = None

    # -- addresses ------------------------------------------------------------------------
    @property
    def proxy_addr(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def sidecar_addr(self) -> str:
        return f"127.0.0.1:{self.sidecar_port}"

    @property
    def proxy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_admin_port}"

    @property
    def sidecar_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_admin_port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a client subprocess: every proxy variable points at this proxy."""
        env = dict(os.environ if base is None else base)
        for k in ("http_proxy", "HTTP_PROXY", "grpc_proxy", "https_proxy", "HTTPS_PROXY"):
            env[k] = self.proxy_url
        for k in ("no_proxy", "NO_PROXY"):
            env.pop(k, None)
        return env

    # -- logs and metrics -----------------------------------------------------------------
    @staticmethod
    def _events(path: Path, event: str | None) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if event is None or rec.get("event") == event:
                    out.append(rec)
        return out

    def proxy_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return self._events(self.proxy_log, event)

    def sidecar_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return self._events(self.sidecar_log, event)

    @staticmethod
    def metric(admin_url: str, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0.0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    # -- sidecar control --------------------------------------------------------------------
    def _sidecar_args(self, measurement: bytes | None) -> list[str]:
        argv = list(self._sidecar_argv)
        if measurement is not None:
            argv += ["--sim-measurement", measurement.hex()]
        return argv

    def _start_sidecar(self, measurement: bytes | None) -> None:
        self.measurement = measurement if measurement is not None else default_measurement()
        argv = self._sidecar_args(measurement)
        if self.mode == "process":
            self._procs["sidecar"] = self._spawn("sidecar", argv)
            _wait_http(f"{self.sidecar_admin_url}/readyz", self._procs["sidecar"], self.timeout, self.sidecar_log)
            return
        import argparse

        from sidecar import cli as scli
        from sidecar.server import Sidecar

        parser = argparse.ArgumentParser()
        scli.configure(parser)
        args = parser.parse_args(argv)
        cfg = scli.build_config(scli.merged(args, scli._KNOWN))
        factory = self._sidecar_factory or Sidecar
        assert self._lt is not None
        self._sidecar = factory(cfg)
        self._lt.call(self._sidecar.start(), self.timeout)
        self.sidecar_port = self._sidecar.port
        self.sidecar_admin_port = self._sidecar.admin_port

    def _stop_sidecar(self) -> None:
        if self.mode == "process":
            _terminate(self._procs.pop("sidecar", None))
        elif self._sidecar is not None and self._lt is not None:
            self._lt.call(self._sidecar.stop(), self.timeout)
            self._sidecar = None

    def restart_sidecar(self, measurement: bytes | None = None) -> None:
        """Stop the sidecar and start a new one on the same ports: new key, new certificate."""
        self._stop_sidecar()
        _replace_arg(self._sidecar_argv, "--listen", f"127.0.0.1:{self.sidecar_port}")
        _replace_arg(self._sidecar_argv, "--admin", f"127.0.0.1:{self.sidecar_admin_port}")
        self._start_sidecar(measurement)

    def _spawn(self, what: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{what}.out", "ab")  # noqa: SIM115 - closed with the process
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen([sys.executable, "-m", "ratls.cli", what, *argv], stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp, env=env)
        out.close()
        return proc

    def stop(self) -> None:
        for name in ("proxy", "sidecar"):
            _terminate(self._procs.pop(name, None))
        if self._lt is not None:
            for obj in (self._proxy, self._sidecar):
                if obj is not None:
                    with contextlib.suppress(Exception):
                        self._lt.call(obj.stop(), 10)
            self._proxy = self._sidecar = None
            self._lt.close()
            self._lt = None


def _replace_arg(argv: list[str], flag: str, value: str) -> None:
    if flag in argv:
        argv[argv.index(flag) + 1] = value


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 15) -> None:
    """Poll ``cond`` every 50 ms until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = (log.parent / f"{'sidecar' if 'sidecar' in log.name else 'proxy'}.out")
            tail = out.read_text(errors="replace")[-2000:] if out.exists() else ""
            raise RuntimeError(f"{proc.args[3]} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def start_pair(
    tmp_path: Path,
    *,
    http_backend: str | tuple[str, int] | None = None,
    grpc_backend: str | tuple[str, int] | None = None,
    measurement: bytes | None = None,
    policy: dict[str, Any] | str | None = "default",
    maps: Sequence[str] = (),
    mode: str = "thread",
    extra_routes: dict[str, str] | None = None,
    proxy_options: dict[str, Any] | None = None,
    sidecar: bool = True,
    sidecar_factory: Callable[[Any], Any] | None = None,
    http_service: str = DEFAULT_HTTP_SERVICE,
    grpc_service: str = DEFAULT_GRPC_SERVICE,
    timeout: float = 30,
) -> Pair:
    """Start and return a :class:`Pair` (call ``stop()``); prefer the ``pair``/``apair`` context managers."""
    if mode not in ("thread", "process"):
        raise ValueError(f"mode is 'thread' or 'process', not {mode!r}")
    if sidecar_factory is not None and mode != "thread":
        raise ValueError("sidecar_factory needs mode='thread'")
    tmp = Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    p = Pair(tmp, mode, timeout)
    p.http_service, p.grpc_service = http_service, grpc_service
    p._sidecar_factory = sidecar_factory
    from ratls.io import simdir

    simdir.load_or_create(p.sim_dir)  # one simulated TEE both sides agree on, created before either starts
    if mode == "thread":
        p._lt = _LoopThread()
    try:
        if sidecar:
            if mode == "process":
                p.sidecar_port, p.sidecar_admin_port = free_port(), free_port()
            argv = ["--tee", "sim", "--sim-dir", str(p.sim_dir), "--listen", f"127.0.0.1:{p.sidecar_port}",
                    "--admin", f"127.0.0.1:{p.sidecar_admin_port}", "--log", str(p.sidecar_log)]
            if http_backend is not None:
                argv += ["--http-backend", _addr(http_backend)]  # type: ignore[list-item]
            if grpc_backend is not None:
                argv += ["--grpc-backend", _addr(grpc_backend)]  # type: ignore[list-item]
            p._sidecar_argv = argv
            p._start_sidecar(measurement)
        else:
            p.measurement = measurement if measurement is not None else default_measurement()

        if mode == "process":
            p.proxy_port, p.proxy_admin_port = free_port(), free_port()
        argv = ["--listen", f"127.0.0.1:{p.proxy_port}", "--admin", f"127.0.0.1:{p.proxy_admin_port}", "--log", str(p.proxy_log),
                "--sim-dir", str(p.sim_dir)]
        routes: dict[str, str] = {}
        if sidecar:
            routes[http_service] = p.sidecar_addr
            routes[grpc_service] = p.sidecar_addr
        routes.update(extra_routes or {})
        for svc, sc in routes.items():
            argv += ["--route", f"{svc}={sc}"]
        if policy == "default":
            policy = sim_policy(p.measurement)  # type: ignore[arg-type]
        if policy is not None:
            p.policy_path = tmp / "policy.json"
            p.policy_path.write_text(policy if isinstance(policy, str) else json.dumps(policy, indent=1))
            argv += ["--policy", str(p.policy_path)]
        map_addrs = {}
        for svc in maps:
            map_addrs[svc] = f"127.0.0.1:{free_port() if mode == 'process' else 0}"
            argv += ["--map", f"{map_addrs[svc]}={svc}"]
        for k, v in (proxy_options or {}).items():
            argv += [f"--{k.replace('_', '-')}", str(v)]

        if mode == "process":
            p._procs["proxy"] = p._spawn("proxy", argv)
            _wait_http(f"{p.proxy_admin_url}/readyz", p._procs["proxy"], timeout, p.proxy_log)
            p.map_ports = {svc: int(a.rsplit(":", 1)[1]) for svc, a in map_addrs.items()}
        else:
            import argparse

            from proxy import cli as pcli
            from proxy.server import Proxy

            parser = argparse.ArgumentParser()
            pcli.configure(parser)
            cfg = pcli.build_config(parser.parse_args(argv))
            p._proxy = Proxy(cfg)
            p._lt.call(p._proxy.start(), timeout)  # type: ignore[union-attr]
            p.proxy_port, p.proxy_admin_port = p._proxy.port, p._proxy.admin_port
            p.map_ports = {svc: port for _, svc, port in p._proxy.maps_bound}
    except BaseException:
        p.stop()
        raise
    return p


@contextlib.contextmanager
def pair(tmp_path: Path, **kw: Any) -> Iterator[Pair]:
    p = start_pair(tmp_path, **kw)
    try:
        yield p
    finally:
        p.stop()


@contextlib.asynccontextmanager
async def apair(tmp_path: Path, **kw: Any) -> AsyncIterator[Pair]:
    p = await asyncio.to_thread(start_pair, tmp_path, **kw)
    try:
        yield p
    finally:
        await asyncio.to_thread(p.stop)


# -- small real backends for tests ----------------------------------------------------------------
#
# ``HttpBackend`` (aiohttp: keep-alive, chunked, Expect: 100-continue), ``ByteCountingBackend`` (raw
# asyncio TCP: counts every byte it ever receives, for "the backend got nothing" assertions) and
# ``GrpcEchoBackend`` (grpcio server, generic handler ``/ratls.test.Echo/Echo`` echoing raw bytes).
# Each runs on its own background loop/thread; ``.addr`` is "127.0.0.1:PORT"; ``.stop()``.


class HttpBackend:
    """Routes: ``GET /hello``; ``GET /slow?s=SECONDS``; ``GET /ws`` (WebSocket echo); ``GET /chunked?n=N``
    (a chunked response); ``POST /echo`` (body echoed back); ``POST /digest`` (JSON length and
    sha256 of the streamed body, and its Transfer-Encoding); ``GET /big?n=N`` (N bytes)."""

    def __init__(self) -> None:
        import hashlib

        from aiohttp import web

        self.requests: list[dict[str, Any]] = []

        async def hello(req: web.Request) -> web.Response:
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers)})
            return web.Response(text="hello from the backend")

        async def echo(req: web.Request) -> web.Response:
            body = await req.read()
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers), "len": len(body)})
            return web.Response(body=body, content_type="application/octet-stream")

        async def digest(req: web.Request) -> web.Response:
            h, n = hashlib.sha256(), 0
            async for chunk in req.content.iter_any():
                h.update(chunk)
                n += len(chunk)
            rec = {"len": n, "sha256": h.hexdigest(), "transfer_encoding": req.headers.get("Transfer-Encoding"),
                   "expect": req.headers.get("Expect")}
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers), **rec})
            return web.json_response(rec)

        async def big(req: web.Request) -> web.Response:
            n = int(req.query.get("n", "600000"))
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers)})
            return web.Response(body=pattern(n), content_type="application/octet-stream")

        async def slow(req: web.Request) -> web.Response:
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers)})
            await asyncio.sleep(float(req.query.get("s", "2")))
            return web.Response(text="slow answer")

        async def ws(req: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(req)
            async for msg in sock:
                await sock.send_str("echo:" + msg.data)
            return sock

        async def chunked(req: web.Request) -> web.StreamResponse:
            self.requests.append({"path": req.path, "method": req.method, "headers": dict(req.headers), "version": str(req.version)})
            resp = web.StreamResponse()
            if req.version >= (1, 1):  # HTTP/1.0 gets a close-delimited body instead
                resp.enable_chunked_encoding()
            await resp.prepare(req)
            for i in range(int(req.query.get("n", "5"))):
                await resp.write(b"part %d;" % i)
            await resp.write_eof()
            return resp

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/slow", slow)
        app.router.add_get("/chunked", chunked)
        app.router.add_get("/ws", ws)
        app.router.add_get("/hello", hello)
        app.router.add_post("/echo", echo)
        app.router.add_post("/digest", digest)
        app.router.add_get("/big", big)
        self._lt = _LoopThread()

        async def start() -> tuple[Any, int]:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._runner, self.port = self._lt.call(start())

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._lt.call(self._runner.cleanup(), 10)
        self._lt.close()


def pattern(n: int) -> bytes:
    """Deterministic, non-repeating-looking bytes of length ``n`` (bodies tests can check)."""
    import hashlib

    block = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2048))  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


class ByteCountingBackend:
    """Counts connections and bytes received; answers any bytes with a small 200 so leaks are visible."""

    def __init__(self) -> None:
        self.bytes = 0
        self.connections = 0
        outer = self

        class _P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                outer.connections += 1
                self.t = transport

            def data_received(self, data: bytes) -> None:
                outer.bytes += len(data)
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nLEAKED")  # type: ignore[attr-defined]
                self.t.close()

        self._lt = _LoopThread()

        async def start() -> Any:
            return await asyncio.get_running_loop().create_server(_P, "127.0.0.1", 0)

        self._server = self._lt.call(start())
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._lt.loop.call_soon_threadsafe(self._server.close)
        self._lt.close()


ECHO_METHOD = "/ratls.test.Echo/Echo"


class GrpcEchoBackend:
    """A grpcio server (real HTTP/2) whose ``/ratls.test.Echo/Echo`` returns the request bytes."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        self.calls = 0

        def echo(request: bytes, context: Any) -> bytes:
            self.calls += 1
            return request

        handler = grpc.method_handlers_generic_handler("ratls.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0)


def grpc_echo(target: str, payload: bytes, *, proxy_url: str | None = None, timeout: float = 20) -> bytes:
    """One unary call to :class:`GrpcEchoBackend` at ``target``, through ``proxy_url`` (CONNECT) if given."""
    import grpc

    # a local subchannel pool: each call really opens its own connection (tests count handshakes)
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    opts.append(("grpc.http_proxy", proxy_url) if proxy_url else ("grpc.enable_http_proxy", 0))
    with grpc.insecure_channel(target, options=opts) as ch:
        return ch.unary_unary(ECHO_METHOD)(payload, timeout=timeout)
