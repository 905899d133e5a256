"""Load clients that wrk and h2load cannot be: run as `python -m bench.suite.clients KIND ...`.

- `grpc`: a real gRPC client (grpcio's C core) making unary calls of N bytes, either straight to a
  TLS server or through an HTTP CONNECT proxy (`grpc.http_proxy`, h2c inside the tunnel), which is how
  gRPC applications use the ratls proxy. The same client drives the pair and its baseline.
- `handshake`: new TLS connections per second against one server, with the client-side work of an
  RA-TLS peer: `plain` (TLS only, what any TLS client does), `verify` (every certificate verified
  from its evidence: a full attested handshake), `cache` (the verdict looked up by certificate hash:
  a cache-hit handshake).

Each prints one `BENCH_JSON {...}` line in the shape of `loadgen.LoadResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import time
from pathlib import Path


def _summary(tool: str, lat: list[float], seconds: float, errors: int, nbytes: int = 0, **extra) -> str:
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, round(q / 100 * (len(lat) - 1)))] * 1000, 3) if lat else 0.0

    return "BENCH_JSON " + json.dumps({"tool": tool, "requests": len(lat), "seconds": seconds, "errors": errors,
                                       "p50_ms": pct(50), "p99_ms": pct(99), "bytes": nbytes, "extra": extra})


async def grpc_load(a: argparse.Namespace) -> str:
    import grpc

    payload = b"\x5a" * a.size
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    if a.proxy:
        opts.append(("grpc.http_proxy", a.proxy))
    chans = []
    for i in range(a.channels):
        o = [*opts, ("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
        if a.ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(a.ca).read_bytes())
            o.append(("grpc.ssl_target_name_override", a.server_name))
            chans.append(grpc.aio.secure_channel(a.target, creds, options=o))
        else:
            chans.append(grpc.aio.insecure_channel(a.target, options=o))
    calls = [c.unary_unary(a.method, request_serializer=None, response_deserializer=None) for c in chans]
    for c in chans:
        await asyncio.wait_for(c.channel_ready(), 30)
    lat: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + a.warmup + a.duration

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if measuring:
                lat.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(worker(i)) for i in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    measuring = True
    t_start = time.monotonic()
    await asyncio.gather(*tasks)
    seconds = time.monotonic() - t_start
    for c in chans:
        await c.close()
    return _summary("grpcio", lat, seconds, errors, len(lat) * a.size, channels=a.channels, concurrency=a.concurrency)


async def handshake_load(a: argparse.Namespace) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    verify = None
    if a.mode == "plain":
        ctx.load_verify_locations(a.ca)
    else:
        # RA-TLS certificates are self-signed: trust comes from the evidence, checked below.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        verify = _ratls_verifier(a)
    cache: dict[str, bool] = {}
    lat: list[float] = []
    errors = 0
    verified = 0
    measuring = False
    stop_at = time.monotonic() + a.warmup + a.duration

    async def worker() -> None:
        nonlocal errors, verified
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", a.port, ssl=ctx, server_hostname=a.server_name)
                if verify is not None:
                    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
                    key = hashlib.sha256(der).hexdigest()
                    if a.mode == "verify" or key not in cache:
                        cache[key] = verify(der)
                        verified += 1
                    if not cache[key]:
                        raise RuntimeError("certificate refused")
                w.close()
            except (OSError, ssl.SSLError, RuntimeError):
                errors += 1
                continue
            if measuring:
                lat.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(a.concurrency)]
    await asyncio.sleep(a.warmup)
    measuring = True
    t_start = time.monotonic()
    await asyncio.gather(*tasks)
    return _summary(f"handshake-{a.mode}", lat, time.monotonic() - t_start, errors, verifications=verified)


def _ratls_verifier(a: argparse.Namespace):
    from datetime import UTC, datetime

    from ratls.certificate import verify_certificate
    from ratls.evidence import VerifyOptions
    from ratls.io import simdir
    from ratls.policy import parse_policy

    policy = parse_policy(Path(a.policy).read_text())
    root = simdir.load_root(Path(a.sim_dir))

    def verify(der: bytes) -> bool:
        verdict = verify_certificate(der, VerifyOptions(now=datetime.now(UTC), sim_root=root), policy)
        if not verdict.ok:
            raise RuntimeError(f"verification failed at {verdict.failed_step}")
        return True

    return verify


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.suite.clients")
    sub = p.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc")
    g.add_argument("--target", required=True)
    g.add_argument("--proxy", help="http://HOST:PORT of a CONNECT proxy")
    g.add_argument("--ca", help="PEM of the server's CA: TLS straight to the target")
    g.add_argument("--server-name", default="bench.local")
    g.add_argument("--method", default="/bench.Bench/Call")
    g.add_argument("--size", type=int, default=1024)
    g.add_argument("--channels", type=int, default=4)
    g.add_argument("--concurrency", type=int, default=16)
    g.add_argument("--duration", type=float, default=5)
    g.add_argument("--warmup", type=float, default=1)
    h = sub.add_parser("handshake")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--mode", choices=["plain", "verify", "cache"], required=True)
    h.add_argument("--ca")
    h.add_argument("--server-name", default="bench.local")
    h.add_argument("--policy")
    h.add_argument("--sim-dir")
    h.add_argument("--concurrency", type=int, default=8)
    h.add_argument("--duration", type=float, default=5)
    h.add_argument("--warmup", type=float, default=1)
    a = p.parse_args()
    if a.kind == "handshake":  # grpc.aio runs on the stock loop
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    coro = grpc_load(a) if a.kind == "grpc" else handshake_load(a)
    try:
        print(asyncio.run(coro), flush=True)
    except (TimeoutError, OSError, RuntimeError) as e:
        raise SystemExit(f"bench client {a.kind}: {type(e).__name__}: {e or 'timed out (channel never ready)'}") from None


if __name__ == "__main__":
    main()
