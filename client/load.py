"""``ratls client``: inference load through the attested proxy, the client Intel's confidential TF
Serving samples ship (``resnet_client_grpc.py -batch 1 -cnum 1 -loop 50 -url HOST:8500``), made
general: Triton (KServe v2 over gRPC or HTTP) or TF Serving (Predict over gRPC or REST).

``--cnum`` clients run at once, each sends ``--loop`` requests of ``--batch`` rows; every query
prints ``query: <channel>, task T, batch B, loop_idx I, latency(ms) L, tps: X`` and the run ends with
``summary: cnum C, batch B, e2e time(s) E, average latency(ms) A, p50 ..., p99 ..., tps: cnum*loop*batch/E``.

How each kind reaches the proxy (see docs/clients.md):
- ``triton-grpc``, ``tfs-grpc``: grpcio honours ``grpc_proxy`` / ``https_proxy`` / ``http_proxy`` and
  tunnels with CONNECT; ``--proxy`` sets the same per channel (``grpc.http_proxy``);
- ``tfs-rest``: requests honours ``http_proxy``; ``--proxy`` sets it explicitly;
- ``triton-http``: tritonclient's HTTP client ignores proxies: point ``--url`` at a port-mapping
  listener of the proxy (``ratls proxy --map 127.0.0.1:18000=SERVICE:8000``); ``--proxy`` is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ratls.errors import Reason, UsageError

KINDS = ("triton-grpc", "triton-http", "tfs-grpc", "tfs-rest")
IMAGE_FLOATS = 3 * 224 * 224
#: model name -> (input name, row width) for the example backends; other models need --input/--width
KNOWN_MODELS = {"digits": ("pixels", 64), "identity_fp32": ("input", IMAGE_FLOATS), "mean_fp32": ("input", IMAGE_FLOATS)}
#: progress bar from this many queries on (short runs print only their query lines)
PROGRESS_FROM = 200

TRITON_HTTP_NO_PROXY = ("triton-http: tritonclient's HTTP client cannot use a proxy; "
                        "run `ratls proxy --map 127.0.0.1:PORT=SERVICE:8000` and give --url 127.0.0.1:PORT")

Infer = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class Summary:
    """What a run measured; ``tps`` follows Intel's client: cnum x loop x batch / end-to-end time."""

    kind: str
    model: str
    cnum: int
    batch: int
    loop: int
    ok: int
    failed: int
    e2e_s: float
    avg_ms: float
    p50_ms: float
    p99_ms: float
    tps: float
    accuracy: float | None = None
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def line(self) -> str:
        s = (f"summary: cnum {self.cnum}, batch {self.batch}, e2e time(s) {self.e2e_s:.4f}, average latency(ms) {self.avg_ms:.2f}, "
             f"p50 latency(ms) {self.p50_ms:.2f}, p99 latency(ms) {self.p99_ms:.2f}, tps: {self.tps:.1f}")
        if self.accuracy is not None:
            s += f", accuracy {self.accuracy:.3f}"
        if self.failed:
            s += f", failed {self.failed} of {self.ok + self.failed} (first: {self.first_error})"
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


def summarize(kind: str, model: str, cnum: int, batch: int, loop: int, latencies_ms: list[float], failed: int, e2e_s: float,
              correct: int | None = None, first_error: str | None = None) -> Summary:
    """Pure: the numbers a run prints, from per-query latencies of the successful queries."""
    lat = np.asarray(latencies_ms, dtype=np.float64)
    ok = int(lat.size)
    pct = (lambda q: float(np.percentile(lat, q))) if ok else (lambda q: float("nan"))
    return Summary(
        kind=kind, model=model, cnum=cnum, batch=batch, loop=loop, ok=ok, failed=failed, e2e_s=e2e_s,
        avg_ms=float(lat.mean()) if ok else float("nan"), p50_ms=pct(50), p99_ms=pct(99),
        tps=(ok * batch / e2e_s) if e2e_s > 0 else float("nan"),
        accuracy=(correct / (ok * batch)) if correct is not None and ok else None,
        first_error=first_error, latencies_ms=list(latencies_ms),
    )


# --- one caller per kind ------------------------------------------------------------------------


def _grpc_options(proxy: str | None, no_proxy: bool) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    if no_proxy:
        opts.append(("grpc.enable_http_proxy", 0))
    elif proxy:
        opts.append(("grpc.http_proxy", proxy if "://" in proxy else f"http://{proxy}"))
    return opts


def make_infer(kind: str, url: str, model: str, input_name: str, proxy: str | None = None, no_proxy: bool = False,
               timeout: float = 60.0) -> tuple[Infer, Callable[[], None]]:
    """A function sending one batch and returning the outputs, and one closing the connection.

    Each concurrent task makes its own (own channel / connection), as Intel's client does.
    """
    if kind == "triton-grpc":
        import tritonclient.grpc as tg

        client = tg.InferenceServerClient(url, channel_args=_grpc_options(proxy, no_proxy))

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            inp = tg.InferInput(input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer(model, [inp], client_timeout=timeout)
            return {o.name: res.as_numpy(o.name) for o in res.get_response().outputs}

        return infer, client.close

    if kind == "triton-http":
        if proxy:
            raise UsageError(Reason.CONFIG_INVALID, TRITON_HTTP_NO_PROXY)
        import tritonclient.http as th

        client = th.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            inp = th.InferInput(input_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            res = client.infer(model, [inp])
            return {o["name"]: res.as_numpy(o["name"]) for o in res.get_response()["outputs"]}

        return infer, client.close

    if kind == "tfs-grpc":
        import grpc

        from client.tfserving import make_ndarray, make_tensor_proto, predict_pb2, prediction_service_pb2_grpc

        channel = grpc.insecure_channel(url, options=_grpc_options(proxy, no_proxy))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = model
            req.model_spec.signature_name = "serving_default"
            req.inputs[input_name].CopyFrom(make_tensor_proto(x))
            resp = stub.Predict(req, timeout=timeout)
            return {k: make_ndarray(v) for k, v in resp.outputs.items()}

        return infer, channel.close

    if kind == "tfs-rest":
        import requests

        session = requests.Session()
        if no_proxy:
            session.trust_env = False
        elif proxy:
            p = proxy if "://" in proxy else f"http://{proxy}"
            session.proxies = {"http": p, "https": p}
        endpoint = f"{url if '://' in url else 'http://' + url}/v1/models/{model}:predict"

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            r = session.post(endpoint, json={"signature_name": "serving_default", "inputs": {input_name: x.tolist()}}, timeout=timeout)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text.strip()[:500]}")
            out = r.json()["outputs"]
            return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else {"output": np.asarray(out)}

        return infer, session.close

    raise UsageError(Reason.CONFIG_INVALID, f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")


# --- the run --------------------------------------------------------------------------------------


def make_inputs(model: str, width: int, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows to send and, for the digits model, the true labels (so the summary reports accuracy)."""
    if model == "digits" and width == 64:
        from client.backends.digits import held_out

        x, y = held_out()
        idx = np.arange(batch) % len(x)
        return np.ascontiguousarray(x[idx]), y[idx]
    return np.random.default_rng(0).random((batch, width), dtype=np.float32), None


def run_load(infer_factory: Callable[[], tuple[Infer, Callable[[], None]]], *, kind: str, model: str, x: np.ndarray,
             labels: np.ndarray | None, cnum: int, loop: int, channel: str, out=None, quiet: bool = False,
             progress: bool | None = None) -> Summary:
    """``cnum`` threads, each with its own client, ``loop`` queries each; prints and summarizes."""
    out = out or sys.stdout
    batch = len(x)
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    correct = [0] if labels is not None else None
    total = cnum * loop
    show_bar = (total >= PROGRESS_FROM) if progress is None else progress
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="q", file=sys.stderr, leave=False, dynamic_ncols=True)

    def emit(text: str) -> None:
        if bar is not None:
            bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def task(task_id: int, start: threading.Barrier) -> None:
        try:
            infer, close = infer_factory()
        except Exception as e:
            with lock:
                failures.extend([f"{type(e).__name__}: {e}"] * loop)
            start.wait()
            return
        try:
            start.wait()
            for i in range(loop):
                t0 = time.perf_counter()
                try:
                    outputs = infer(x)
                except Exception as e:  # a refusal or a fault: counted and reported, the run goes on
                    with lock:
                        failures.append(_error_text(e))
                        if not quiet:
                            emit(f"query: {channel}, task {task_id}, batch {batch}, loop_idx {i}, failed: {_error_text(e)}")
                        if bar is not None:
                            bar.update()
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
                    if correct is not None and "label" in outputs:
                        correct[0] += int((np.asarray(outputs["label"]).reshape(-1) == labels).sum())
                    if not quiet:
                        emit(f"query: {channel}, task {task_id}, batch {batch}, loop_idx {i}, latency(ms) {ms:.1f}, tps: {batch * 1000 / ms:.1f}")
                    if bar is not None:
                        bar.update()
        finally:
            close()

    start = threading.Barrier(cnum + 1)
    threads = [threading.Thread(target=task, args=(t, start), daemon=True) for t in range(cnum)]
    for t in threads:
        t.start()
    start.wait()  # clients are connected-ready; the clock starts when all of them may send
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    e2e = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return summarize(kind, model, cnum, batch, loop, latencies, len(failures), e2e,
                     correct=correct[0] if correct is not None else None, first_error=failures[0] if failures else None)


def _error_text(e: BaseException) -> str:
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):  # grpc.RpcError: the status and the server's (or proxy's) words
        return f"gRPC {code().name}: {details()}"
    text = str(e).strip().replace("\n", " ")
    return f"{type(e).__name__}: {text[:400]}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, default="triton-grpc", help="protocol (default triton-grpc)")
    parser.add_argument("--url", required=True, help="the service as clients name it, HOST:PORT (a proxy route), or a --map port")
    parser.add_argument("--model", default="digits", help="model name (default digits)")
    parser.add_argument("--input", dest="input_name", help="input tensor name (default: known for the example models)")
    parser.add_argument("--width", type=int, help="values per row, FP32 (default: known for the example models)")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--cnum", type=int, default=1, help="concurrent clients (default 1)")
    parser.add_argument("--loop", type=int, default=10, help="requests per client (default 10)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--proxy", help="proxy HOST:PORT or URL (default: the grpc_proxy / http_proxy environment)")
    group.add_argument("--no-proxy", action="store_true", help="connect straight to --url, ignoring proxy variables (baseline runs)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--quiet", action="store_true", help="no per-query lines, only the summary")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"progress bar on stderr (default: from {PROGRESS_FROM} queries)")
    parser.add_argument("--json", dest="json_out", help="also write the summary as JSON to this file")


def _channel(kind: str, proxy: str | None, no_proxy: bool) -> str:
    if no_proxy:
        return "direct"
    if kind == "triton-http":
        return "via port map"
    if proxy:
        return f"via proxy {proxy}"
    names = ("grpc_proxy", "https_proxy", "http_proxy") if kind.endswith("grpc") else ("http_proxy",)
    for n in names:
        v = os.environ.get(n) or os.environ.get(n.upper())
        if v:
            return f"via proxy {v} (${n})"
    return "direct (no proxy set)"


def run(args: argparse.Namespace) -> int:
    for name in ("batch", "cnum", "loop"):
        if getattr(args, name) < 1:
            raise UsageError(Reason.CONFIG_INVALID, f"--{name} must be at least 1")
    input_name, width = KNOWN_MODELS.get(args.model, (None, None))
    input_name, width = args.input_name or input_name, args.width or width
    if input_name is None or width is None:
        raise UsageError(Reason.CONFIG_INVALID, f"model {args.model!r} is not one of the examples: give --input NAME and --width N")
    if args.kind == "triton-http" and args.proxy:
        raise UsageError(Reason.CONFIG_INVALID, TRITON_HTTP_NO_PROXY)
    x, labels = make_inputs(args.model, width, args.batch)

    def factory() -> tuple[Infer, Callable[[], None]]:
        return make_infer(args.kind, args.url, args.model, input_name, proxy=args.proxy, no_proxy=args.no_proxy, timeout=args.timeout)

    summary = run_load(factory, kind=args.kind, model=args.model, x=x, labels=labels, cnum=args.cnum, loop=args.loop,
                       channel=_channel(args.kind, args.proxy, args.no_proxy), quiet=args.quiet, progress=args.progress)
    print(summary.line(), flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(summary.to_dict(), f, indent=1)
    return 0 if summary.failed == 0 else 1
