"""Throughput and latency through the attested pair against the backend direct, in the same run.

Cases (all against the real tritonserver of ``client.backends.triton_digits``, KServe v2 binary
tensors so the backend does no JSON work):
- ``http-1k-get``: HTTP/1.1 GET ``/v2/models/echo_fp32/config`` (1.1 KB of JSON back), served by
  Triton's C++ front end alone: the backend is fast here, so this row shows the pair's own cost;
- ``http-1k``: HTTP/1.1 POST ``echo_fp32`` with 1 KB of tensor data (1 KB back; the model runs in
  pytriton's Python process, which bounds the rate on a small machine);
- ``http-600k``: HTTP/1.1 POST ``mean_fp32`` with a 3x224x224 FP32 image (602 KB up, a few bytes back);
- ``grpc-600k``: gRPC ``ModelInfer`` ``mean_fp32`` with the same 602 KB image.

Paths: ``direct`` (client -> Triton) and ``pair`` (client -> ratls proxy -> TLS 1.3 -> ratls sidecar
(simulated TEE) -> Triton). HTTP goes through the proxy's forward-proxy listener (absolute-form
requests, as ``http_proxy`` clients send them); gRPC through CONNECT (what grpcio does with
``grpc_proxy``). Load generators: ``wrk`` (C, keep-alive connections; a Lua script sets the
absolute-form path and the Host header for the pair) for HTTP, and a grpc.aio client (grpcio's C
core; the request is serialized once, so Python only schedules calls) for gRPC. Everything shares
this machine's cores, so the numbers compare the two paths with each other, not with other hosts.

Run: ``.venv/bin/python bench/bench_pair.py [--duration 6] [--out bench/results]``; writes
``pair.json`` and ``pair.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from client.backends.process import RatlsProcess, free_port  # noqa: E402
from client.backends.triton_digits import IMAGE_FLOATS, TritonDigits  # noqa: E402

HTTP_SERVICE = "triton.bench:8000"
GRPC_SERVICE = "triton.bench:8001"
MEASUREMENT = "ab" * 48


def kserve_binary_body(model_input: str, arr: np.ndarray, want_binary_output: bool) -> tuple[bytes, int]:
    """KServe v2 binary-tensor request body and its JSON header length."""
    raw = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
    header = {"inputs": [{"name": model_input, "shape": list(arr.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]}
    if want_binary_output:
        header["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


_WRK_LUA = r"""
wrk.method = "{method}"
wrk.path = "{path}"
wrk.headers["Host"] = "{host}"
if "{method}" == "POST" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = "{hlen}"
  local f = assert(io.open("{body}", "rb"))
  wrk.body = f:read("*all")
  f:close()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests": %d, "duration_us": %d, "bytes": %d, "errors": %d, "status_errors": %d, '
    .. '"lat_mean_us": %.1f, "lat_p50_us": %d, "lat_p99_us": %d, "lat_max_us": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(connect_url: str, path: str, host: str, body: bytes | None, hlen: int, connections: int, duration: float, tmp: Path) -> dict:
    """POST ``body`` (KServe v2 binary) or, with ``body=None``, GET ``path``; through ``connect_url``."""
    body_file = tmp / f"body-{len(body or b'')}.bin"
    body_file.write_bytes(body or b"")
    script = tmp / "wrk.lua"
    script.write_text(_WRK_LUA.format(method="GET" if body is None else "POST", path=path, host=host, hlen=hlen, body=body_file))
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:.0f}s", "--timeout", "10s", "-s", str(script), connect_url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-1500:]} {out.stderr[-1500:]}")
    r = json.loads(line[len("RESULT "):])
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": round(secs, 3), "rps": round(r["requests"] / secs, 1), "errors": r["errors"] + r["status_errors"],
            "lat_mean_ms": round(r["lat_mean_us"] / 1000, 3), "lat_p50_ms": round(r["lat_p50_us"] / 1000, 3), "lat_p99_ms": round(r["lat_p99_us"] / 1000, 3)}


async def _grpc_load(target: str, proxy: str | None, payload: bytes, concurrency: int, channels: int, duration: float) -> dict:
    import grpc

    opts: list[tuple[str, object]] = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    opts.append(("grpc.http_proxy", proxy) if proxy else ("grpc.enable_http_proxy", 0))
    chans = [grpc.aio.insecure_channel(target, options=[*opts, ("grpc.channel_id", i)]) for i in range(channels)]
    calls = [c.unary_unary("/inference.GRPCInferenceService/ModelInfer") for c in chans]  # bytes in, bytes out
    for call in calls:  # connect (and, through the pair, attest) before the clock starts
        await call(payload, timeout=30)
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(i: int) -> None:
        nonlocal errors
        call = calls[i % len(calls)]
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    secs = time.perf_counter() - t0
    for c in chans:
        await c.close()
    q = np.percentile(lat, [50, 99]) * 1000 if lat else [float("nan")] * 2
    return {"requests": len(lat), "seconds": round(secs, 3), "rps": round(len(lat) / secs, 1), "errors": errors,
            "lat_mean_ms": round(statistics.fmean(lat) * 1000, 3) if lat else None, "lat_p50_ms": round(float(q[0]), 3), "lat_p99_ms": round(float(q[1]), 3)}


def grpc_payload() -> bytes:
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name="mean_fp32")
    inp = req.inputs.add()
    inp.name, inp.datatype = "input", "FP32"
    inp.shape.extend([1, IMAGE_FLOATS])
    req.raw_input_contents.append(np.random.default_rng(0).random((1, IMAGE_FLOATS), dtype=np.float32).tobytes())
    return req.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per measurement (default 6)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load before each measurement")
    ap.add_argument("--http-connections", type=int, default=16)
    ap.add_argument("--grpc-concurrency", type=int, default=16, help="calls in flight")
    ap.add_argument("--grpc-channels", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench_pair: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pair-"))
    started = []
    results: list[dict] = []
    try:
        triton = TritonDigits(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        started.append(triton)
        triton.start().wait_ready(180)
        sc_port, sc_admin = free_port(), free_port()
        sidecar = RatlsProcess("sidecar", ["sidecar", "--tee", "sim", "--sim-dir", str(tmp / "sim"), "--sim-measurement", MEASUREMENT,
                                           "--listen", f"127.0.0.1:{sc_port}", "--http-backend", triton.http_url, "--grpc-backend", triton.grpc_url,
                                           "--admin", f"127.0.0.1:{sc_admin}", "--log", str(tmp / "sidecar.log")], sc_admin, tmp / "sidecar.out")
        started.append(sidecar)
        sidecar.start().wait_ready(60)
        policy = tmp / "policy.json"
        policy.write_text(json.dumps({"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT}))
        px_port, px_admin = free_port(), free_port()
        proxy = RatlsProcess("proxy", ["proxy", "--listen", f"127.0.0.1:{px_port}", "--route", f"{HTTP_SERVICE}=127.0.0.1:{sc_port}",
                                       "--route", f"{GRPC_SERVICE}=127.0.0.1:{sc_port}", "--policy", str(policy), "--sim-dir", str(tmp / "sim"),
                                       "--admin", f"127.0.0.1:{px_admin}", "--log", str(tmp / "proxy.log")], px_admin, tmp / "proxy.out")
        started.append(proxy)
        proxy.start().wait_ready(60)
        proxy_url = f"http://127.0.0.1:{px_port}"

        small, small_hlen = kserve_binary_body("input", np.ones((1, 256), np.float32), want_binary_output=True)
        image = np.random.default_rng(0).random((1, IMAGE_FLOATS), dtype=np.float32)
        big, big_hlen = kserve_binary_body("input", image, want_binary_output=False)
        http_cases = [("http-1k-get", "/v2/models/echo_fp32/config", None, 0, 0),
                      ("http-1k", "/v2/models/echo_fp32/infer", small, small_hlen, 1024),
                      ("http-600k", "/v2/models/mean_fp32/infer", big, big_hlen, image.nbytes)]
        for name, path, body, hlen, payload_bytes in http_cases:
            for route in ("direct", "pair"):
                if route == "direct":
                    url, p, host = f"http://{triton.http_url}", path, triton.http_url
                else:
                    url, p, host = proxy_url, f"http://{HTTP_SERVICE}{path}", HTTP_SERVICE
                run_wrk(url, p, host, body, hlen, args.http_connections, max(1.0, args.warmup), tmp)
                r = run_wrk(url, p, host, body, hlen, args.http_connections, args.duration, tmp)
                r.update(case=name, path=route, payload_bytes=payload_bytes, concurrency=args.http_connections, load_generator="wrk -t1")
                r["MBps_up"] = round(r["rps"] * payload_bytes / 1e6, 1)
                results.append(r)
                print(json.dumps(r), flush=True)

        payload = grpc_payload()
        for route in ("direct", "pair"):
            target, p = (triton.grpc_url, None) if route == "direct" else (GRPC_SERVICE, proxy_url)
            asyncio.run(_grpc_load(target, p, payload, args.grpc_concurrency, args.grpc_channels, args.warmup))
            r = asyncio.run(_grpc_load(target, p, payload, args.grpc_concurrency, args.grpc_channels, args.duration))
            r.update(case="grpc-600k", path=route, payload_bytes=image.nbytes, concurrency=args.grpc_concurrency,
                     load_generator=f"grpc.aio, {args.grpc_channels} channels")
            r["MBps_up"] = round(r["rps"] * image.nbytes / 1e6, 1)
            results.append(r)
            print(json.dumps(r), flush=True)
        handshakes = sum(1 for ln in (tmp / "proxy.log").read_text().splitlines() if '"event": "handshake"' in ln)
    finally:
        for s in reversed(started):
            s.stop()

    comparison = {}
    for case in dict.fromkeys(r["case"] for r in results):
        d = next(r for r in results if r["case"] == case and r["path"] == "direct")
        pr = next(r for r in results if r["case"] == case and r["path"] == "pair")
        comparison[case] = {"rps_ratio_pair_over_direct": round(pr["rps"] / d["rps"], 3) if d["rps"] else None,
                            "p50_added_ms": round(pr["lat_p50_ms"] - d["lat_p50_ms"], 3), "p99_added_ms": round(pr["lat_p99_ms"] - d["lat_p99_ms"], 3)}
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "duration_s": args.duration, "backend": "tritonserver (nvidia-pytriton) on 127.0.0.1",
            "pair": "ratls proxy + ratls sidecar (--tee sim), TLS 1.3, separate processes, same host",
            "attested_handshakes_logged": handshakes,
            "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pair.json").write_text(json.dumps({"meta": meta, "results": results, "comparison": comparison}, indent=1) + "\n")
    (args.out / "pair.md").write_text(render_md(meta, results, comparison))
    print((args.out / "pair.md").read_text())
    return 0


def render_md(meta: dict, results: list[dict], comparison: dict) -> str:
    lines = [
        "# Through the pair vs direct",
        "",
        f"{meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}, {meta['duration_s']:.0f} s per row. Backend: {meta['backend']}. "
        f"Pair: {meta['pair']}. Load, backend, proxy and sidecar share the same cores "
        f"(1-minute load average {meta['loadavg_1m_before_after'][0]} before, {meta['loadavg_1m_before_after'][1]} after: other work on the host counts too). "
        "Generated by `bench/bench_pair.py`.",
        "",
        "| case | path | load generator | in flight | req/s | MB/s up | p50 ms | p99 ms | mean ms | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['case']} | {r['path']} | {r['load_generator']} | {r['concurrency']} | {r['rps']:.0f} | {r['MBps_up']:.1f} | "
                     f"{r['lat_p50_ms']:.2f} | {r['lat_p99_ms']:.2f} | {r['lat_mean_ms']:.2f} | {r['errors']} |")
    lines += ["", "| case | pair req/s ÷ direct | p50 added ms | p99 added ms |", "| --- | ---: | ---: | ---: |"]
    for case, c in comparison.items():
        lines.append(f"| {case} | {c['rps_ratio_pair_over_direct']} | {c['p50_added_ms']} | {c['p99_added_ms']} |")
    lines += ["", "http-1k-get: GET the model config (1.1 KB JSON, Triton's C++ front end only, no model call); http-1k: `echo_fp32`, 1 KB each way; http-600k / grpc-600k: `mean_fp32`, a 3x224x224 FP32 image (602 KB) up, 4 bytes down.",
              "HTTP through the pair uses absolute-form requests to the proxy (as `http_proxy` clients do); gRPC uses CONNECT (as grpcio does with `grpc_proxy`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
