"""The scenarios of issue 6 and the command that runs them all (see bench/README.md).

Each scenario starts what it needs (or reuses what an earlier one started), measures its subject and
baselines one after the other under the same load, and records requests/s, p50/p99, CPU per request
(utime+stime of the measured servers' process trees over the run) and, where asked, RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import configs, report
from .env import REPO, SIZES, Env, triton_body
from .loadgen import GRPC_HEADERS, GRPC_PATH, LoadResult, run_client, run_h2load, run_wrk
from .procs import CLK_TCK, RssSampler, Server, free_port
from .resnet import IMAGE_BYTES, TritonResNet, request_body

Load = Callable[[float], LoadResult]
#: seconds after a memory subject's last round before its "after" RSS sample (> the proxy's pool idle timeout + sweep)
AFTER_S = 8.0


def h1_tls_port(server: Server) -> int:
    """The HTTP/1.1-over-TLS port of a sidecar (``tls``) or an nginx / HAProxy terminator (``h1``)."""
    return server.ports["tls" if "tls" in server.ports else "h1"]


@dataclass(eq=False)
class Spec:
    """A subject to measure: its servers and its load (both started lazily), and what it is compared with."""

    name: str
    role: str  # "subject" or "baseline"
    servers: Callable[[], list[Server]]
    load: Callable[[], Load]
    warm: bool = True
    group: str | None = None
    memory: bool = False
    idle: dict = field(default_factory=dict)
    peak: dict = field(default_factory=dict)
    watched: list = field(default_factory=list)


class Suite:
    def __init__(self, env: Env, duration: float, warmup: float, only: set[str] | None, h2_streams: int = 4, rounds: int = 3):
        self.env, self.duration, self.warmup, self.only, self.rounds = env, duration, warmup, only, rounds
        # the GPU machine's scenarios (issue 6 item 4); main() sets them from the command line
        self.resnet_batches: tuple[int, ...] = (1, 8, 32)
        self.resnet_conns = 16
        self.resnet_device = "auto"
        self.scale_workers: tuple[int, ...] = (1, 4, 8)
        self.scale_conns = 64
        self.h2_streams = h2_streams
        self.scenarios: dict[str, dict] = {}
        self._started: dict[str, Server | Exception] = {}

    # -- bookkeeping ------------------------------------------------------------------------------
    def want(self, sid: str) -> bool:
        return not self.only or any(sid.startswith(o) for o in self.only)

    def server(self, key: str, factory: Callable[[], Server]) -> Server:
        """Start once, reuse after; a failure to start is remembered and re-raised for every user."""
        got = self._started.get(key)
        if got is None:
            try:
                got = factory()
            except Exception as e:
                got = e
            self._started[key] = got
        if isinstance(got, Exception):
            raise got
        return got

    def measure(self, name: str, role: str, servers: Callable[[], list[Server]], load: Callable[[], Load],
                warm: bool = True, group: str | None = None, memory: bool = False) -> Spec:
        """One subject of a scenario, run later by `record` (interleaved with the others, `rounds` times)."""
        return Spec(name, role, servers, load, warm, group, memory)

    def _once(self, spec: Spec) -> dict:
        """One round of one subject: start its servers, warm up, then load with CPU accounting."""
        try:
            srv = spec.servers()
            fn = spec.load()
            if spec.memory and not spec.idle:  # before any load of this subject, warm-up included
                spec.idle = {s.name: s.rss_bytes() for s in srv}
            if spec.warm and self.warmup:
                fn(self.warmup)
            before = sum(s.cpu_ticks() for s in srv)
            t0 = time.monotonic()
            if spec.memory:
                with RssSampler(srv) as sampler:
                    res = fn(self.duration)
                for k, v in sampler.peak.items():
                    spec.peak[k] = max(spec.peak.get(k, 0), v)
                spec.watched = srv
            else:
                res = fn(self.duration)
            wall = time.monotonic() - t0
            cpu_s = (sum(s.cpu_ticks() for s in srv) - before) / CLK_TCK
            if res.requests == 0:
                raise RuntimeError(f"no successful request ({res.errors} errors)")
            d = res.to_dict()
            # CPU seconds per wall second over requests per second: the tools' internal warm-up counts evenly.
            d["cpu_ms_per_req"] = round(cpu_s / wall / res.rps * 1000, 4) if res.rps else None
            d["cpu_cores"] = round(cpu_s / wall, 2)
            return d
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}", "rps": 0}

    @staticmethod
    def _combine(spec: Spec, rounds: list[dict]) -> dict:
        """The median round (by requests/s) stands for the subject; every round's rate is kept."""
        head = {"name": spec.name, "role": spec.role, "group": spec.group}
        ok = [r for r in rounds if not r.get("error")]
        if not ok:
            return {**head, **rounds[-1]}
        ok.sort(key=lambda r: r["rps"])
        mid = ok[(len(ok) - 1) // 2] if len(ok) % 2 else ok[len(ok) // 2 - 1]
        out = {**head, **mid, "errors": sum(r["errors"] for r in ok), "rounds_rps": [r["rps"] for r in rounds]}
        if len(ok) < len(rounds):
            out["round_errors"] = [r["error"] for r in rounds if r.get("error")]
        return out

    def record(self, sid: str, title: str, specs: list[Spec], params: dict, **extra) -> None:
        results: dict[str, list[dict]] = {s.name: [] for s in specs}
        for _ in range(self.rounds):
            for spec in specs:
                results[spec.name].append(self._once(spec))
        runs = [self._combine(spec, results[spec.name]) for spec in specs]
        memory = {}
        watched = [s for s in specs if s.memory and s.watched]
        if watched:
            time.sleep(AFTER_S)
            for spec in watched:
                for srv in spec.watched:
                    memory[srv.name] = {"idle_mb": round(srv.rss_at_start / 2**20, 1), "before_mb": round(spec.idle[srv.name] / 2**20, 1),
                                        "peak_mb": round(spec.peak[srv.name] / 2**20, 1), "after_mb": round(srv.rss_bytes() / 2**20, 1)}
        if memory:
            extra["memory"] = memory
        sc = {"id": sid, "title": title, "params": {**params, "rounds": self.rounds, "seconds_per_round": self.duration}, "runs": runs, **extra}
        report.add_ratios(sc)
        self.scenarios[sid] = sc
        line = "  ".join(f"{r['name']}={'ERR' if r.get('error') else format(r['rps'], ',.0f')}" for r in runs)
        print(f"[bench] {sid}: {line}", flush=True)
        for r in runs:
            if r.get("error"):
                last = [ln for ln in r["error"].splitlines() if ln.strip()][-1]
                print(f"[bench]   {r['name']}: {r['error'].splitlines()[0][:200]} ... {last[:200]}", flush=True)

    def skip(self, sid: str, title: str, why: str) -> None:
        self.scenarios[sid] = {"id": sid, "title": title, "skipped": why, "runs": []}
        print(f"[bench] {sid}: skipped: {why}", flush=True)

    def need(self, *tools: str) -> str | None:
        missing = [t for t in tools if not self.env.tools.get(t)]
        return f"not installed: {', '.join(missing)}" if missing else None

    # -- servers ----------------------------------------------------------------------------------
    def sidecar(self) -> Server:
        return self.server("sidecar", lambda: self.env.start_sidecar())

    def nginx_tls(self) -> Server:
        return self.server("nginx-tls", lambda: self.env.start_nginx_tls())

    def haproxy(self) -> Server:
        return self.server("haproxy", lambda: self.env.start_haproxy())

    def nginx_fwd(self) -> Server:
        return self.server("nginx-fwd", lambda: self.env.start_nginx_forward(self.nginx_tls().ports["h1"]))

    def proxy(self) -> Server:
        def make() -> Server:
            sc = self.sidecar()
            self.grpc_map_port = free_port()
            return self.env.start_proxy({"bench-http:80": sc.ports["tls"], "bench-grpc:50051": sc.ports["tls"]},
                                        {self.grpc_map_port: "bench-grpc:50051"})
        return self.server("proxy", make)

    # -- scenarios --------------------------------------------------------------------------------
    def wrk(self, url: str, script: str, name: str, conns: int, threads: int = 2) -> Load:
        return lambda d: run_wrk(url, script, self.env.work, name, conns, d, threads=threads)

    @staticmethod
    def wide_threads() -> int:
        """wrk threads for the scenarios meant to outrun one core (2 here; up to 8 on a 16+ core machine)."""
        return max(2, min(8, (os.cpu_count() or 1) // 4))

    def tls_h1(self) -> None:
        for size in ("1k", "600k"):
            for conns in (16, 64):
                sid = f"tls-h1-{size}-c{conns}"
                if not self.want(sid):
                    continue
                title = f"TLS termination + relay, HTTP/1.1, {'1 KB GET' if size == '1k' else '600 KB POST'}, {conns} connections"
                if why := self.need("wrk", "nginx"):
                    self.skip(sid, title, why)
                    continue
                if size == "1k":
                    script = configs.wrk_script("/1k")
                else:
                    script = configs.wrk_script("/upload", method="POST", body_file=self.env.bodies["600k"],
                                                headers={"Content-Type": "application/octet-stream"})
                runs = []
                for name, role, srv in (("sidecar", "subject", self.sidecar), ("nginx", "baseline", self.nginx_tls),
                                        ("haproxy", "baseline", self.haproxy)):
                    if name == "haproxy" and not self.env.tools["haproxy"]:
                        continue

                    runs.append(self.measure(name, role, lambda srv=srv: [srv()],
                                             lambda srv=srv, name=name: self.wrk(f"https://127.0.0.1:{h1_tls_port(srv())}", script,
                                                                                 f"{sid}-{name}", conns),
                                             memory=name == "sidecar" and size == "600k" and conns == 64))
                self.record(sid, title, runs, {"connections": conns, "size": size, "tool": "wrk"})

    def tls_h2(self) -> None:
        for size in ("1k", "600k"):
            sid = f"tls-h2-{size}"
            if not self.want(sid):
                continue
            # POST even at 1 KB: nginx grpc_pass stalls a bodiless GET ~40 ms (Nagle + delayed ACK), which would flatter the sidecar.
            title = f"TLS termination + relay, HTTP/2 (ALPN h2 → h2c backend), {size.upper()}B POST, 16 conns × {self.h2_streams} streams"
            if why := self.need("h2load", "nginx"):
                self.skip(sid, title, why)
                continue
            body = self.env.bodies[size]
            path = "/upload"
            runs = []
            for name, role, srv in (("sidecar", "subject", self.sidecar), ("nginx", "baseline", self.nginx_tls),
                                    ("haproxy", "baseline", self.haproxy)):
                if name == "haproxy" and not self.env.tools["haproxy"]:
                    continue
                def port(srv=srv):
                    return (srv().ports["tls" if "tls" in srv().ports else "h2"])
                runs.append(self.measure(name, role, lambda srv=srv: [srv()], lambda port=port, name=name: (
                    lambda d: run_h2load(f"https://127.0.0.1:{port()}{path}", self.env.work, f"{sid}-{name}", 16, self.h2_streams, d,
                                         body_file=body)), warm=False))
            self.record(sid, title, runs, {"connections": 16, "streams": self.h2_streams, "size": size, "tool": "h2load"})

    def pair(self) -> None:
        for size in ("1k", "600k"):
            for conns in (16, 64):
                sid = f"pair-{size}-c{conns}"
                if not self.want(sid):
                    continue
                title = (f"whole pair (proxy → TLS → sidecar) vs nginx forward → TLS → nginx vs tinyproxy (no TLS), "
                         f"HTTP/1.1 absolute-form, {'1 KB GET' if size == '1k' else '600 KB POST'}, {conns} connections")
                if why := self.need("wrk", "nginx"):
                    self.skip(sid, title, why)
                    continue
                kw = {} if size == "1k" else {"method": "POST", "body_file": self.env.bodies["600k"],
                                              "headers": {"Content-Type": "application/octet-stream"}}
                path = "/1k" if size == "1k" else "/upload"
                be = f"127.0.0.1:{self.env.be_http}"
                subjects = [
                    ("pair", "subject", lambda: [self.proxy(), self.sidecar()], lambda: self.proxy().ports["http"], f"http://bench-http{path}", "bench-http"),
                    ("nginx-chain", "baseline", lambda: [self.nginx_fwd(), self.nginx_tls()], lambda: self.nginx_fwd().ports["http"],
                     f"http://{be}{path}", be),
                ]
                if self.env.tools["tinyproxy"]:
                    subjects.append(("tinyproxy", "baseline", lambda: [self.server("tinyproxy", self.env.start_tinyproxy)],
                                     lambda: self.server("tinyproxy", self.env.start_tinyproxy).ports["http"], f"http://{be}{path}", be))
                runs = []
                for name, role, srvs, port, url, host in subjects:
                    script = configs.wrk_script(url, host=host, **kw)
                    runs.append(self.measure(name, role, srvs, lambda port=port, script=script, name=name:
                                             self.wrk(f"http://127.0.0.1:{port()}", script, f"{sid}-{name}", conns),
                                             memory=name == "pair" and size == "600k" and conns == 64))
                self.record(sid, title, runs, {"connections": conns, "size": size, "tool": "wrk"})

    def grpc(self) -> None:
        for size in ("1k", "600k"):
            sid = f"grpc-{size}"
            if not self.want(sid):
                continue
            n = 1024 if size == "1k" else 600 * 1024
            title = (f"gRPC unary {size.upper()}B (grpcio client, 4 channels × 16 calls): pair via CONNECT (h2c in the tunnel) "
                     "vs nginx grpc_pass with TLS; h2load variants where the proxy has a port map")
            if why := self.need("nginx"):
                self.skip(sid, title, why)
                continue
            common = ["--size", str(n), "--duration", str(self.duration), "--warmup", "1", "--channels", "4", "--concurrency", "16"]
            to = self.duration + 60
            runs = [
                self.measure("pair", "subject", lambda: [self.proxy(), self.sidecar()], lambda: (
                    lambda d: run_client(["grpc", "--target", "bench-grpc:50051", "--proxy", f"http://127.0.0.1:{self.proxy().ports['http']}",
                                          *common], to)), warm=False, group="grpcio"),
                self.measure("nginx", "baseline", lambda: [self.server("nginx-grpc", self.env.start_nginx_grpc)], lambda: (
                    lambda d: run_client(["grpc", "--target", f"127.0.0.1:{self.server('nginx-grpc', self.env.start_nginx_grpc).ports['h2']}",
                                          "--ca", str(self.env.tls["ca"]), *common], to)), warm=False, group="grpcio"),
            ]
            if self.env.tools["h2load"]:
                body = self.env.bodies[f"grpc-{size}"]
                runs.append(self.measure("pair-h2load-map", "subject", lambda: [self.proxy(), self.sidecar()], lambda: (
                    lambda d: run_h2load(f"http://127.0.0.1:{self.grpc_map_port}{GRPC_PATH}", self.env.work, f"{sid}-pair-map", 16, 4, d,
                                         body_file=body, headers=GRPC_HEADERS)), warm=False, group="h2load"))
                runs.append(self.measure("nginx-h2load", "baseline", lambda: [self.server("nginx-grpc", self.env.start_nginx_grpc)], lambda: (
                    lambda d: run_h2load(f"https://127.0.0.1:{self.server('nginx-grpc', self.env.start_nginx_grpc).ports['h2']}{GRPC_PATH}",
                                         self.env.work, f"{sid}-nginx-h2load", 16, 4, d, body_file=body, headers=GRPC_HEADERS)), warm=False,
                    group="h2load"))
            self.record(sid, title, runs, {"size": n}, notes=(
                "`pair`/`nginx` use the same grpcio client (the goal's ratio); `pair-h2load-map`/`nginx-h2load` drive "
                "the proxy's port-mapping listener (h2c) and nginx (TLS h2) with h2load and gRPC-framed bodies, a faster client."))

    def triton(self) -> None:
        sid = "triton-602k"
        if not self.want(sid):
            return
        title = "real Triton (nvidia-pytriton), KServe v2 binary tensor 602 KB in (mean_fp32), 16 connections: direct / pair / nginx chain"
        if why := self.need("wrk", "nginx"):
            self.skip(sid, title, why)
            return
        try:
            from client.backends.triton_digits import TritonDigits
        except Exception as e:
            self.skip(sid, title, f"client.backends.triton_digits not importable: {e}")
            return
        body, hlen = triton_body(self.env.work)
        tport = free_port()
        triton = TritonDigits(tport, free_port(), free_port(), log_path=self.env.work / "triton.log")
        try:
            triton.start()
            triton.wait_ready(180)
        except Exception as e:
            triton.stop()
            self.skip(sid, title, f"Triton did not start: {str(e)[:300]}")
            return
        try:
            runs = self.inference_subjects(sid, "triton", tport, "/v2/models/mean_fp32/infer", body, hlen, 16)
            self.record(sid, title, runs, {"connections": 16, "bytes": body.stat().st_size})
        finally:
            self.stop_started("triton")
            triton.stop()

    def inference_subjects(self, sid: str, tag: str, tport: int, path: str, body: Path, hlen: int, conns: int,
                           threads: int = 2) -> list[Spec]:
        """direct / pair / nginx chain in front of one inference server, each sent the same binary-tensor request."""
        hdr = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(hlen)}
        tb, svc = f"127.0.0.1:{tport}", f"bench-{tag}:8000"
        sidecar = lambda: self.server(f"sidecar-{tag}", lambda: self.env.start_sidecar(f"sidecar-{tag}", http_backend=tport))  # noqa: E731
        proxy = lambda: self.server(f"proxy-{tag}", lambda: self.env.start_proxy({svc: sidecar().ports["tls"]}, name=f"proxy-{tag}"))  # noqa: E731
        ntls = lambda: self.server(f"nginx-tls-{tag}", lambda: self.env.start_nginx_tls(f"nginx-tls-{tag}", http_backend=tport))  # noqa: E731
        nfwd = lambda: self.server(f"nginx-fwd-{tag}", lambda: self.env.start_nginx_forward(ntls().ports["h1"], f"nginx-fwd-{tag}"))  # noqa: E731
        post = {"method": "POST", "body_file": body, "headers": hdr}
        return [
            self.measure("direct", "baseline", lambda: [], lambda: self.wrk(
                f"http://{tb}", configs.wrk_script(path, **post), f"{sid}-direct", conns, threads)),
            self.measure("pair", "subject", lambda: [proxy(), sidecar()], lambda: self.wrk(
                f"http://127.0.0.1:{proxy().ports['http']}", configs.wrk_script(f"http://{svc}{path}", host=svc, **post), f"{sid}-pair", conns, threads)),
            self.measure("nginx-chain", "baseline", lambda: [nfwd(), ntls()], lambda: self.wrk(
                f"http://127.0.0.1:{nfwd().ports['http']}", configs.wrk_script(f"http://{tb}{path}", host=tb, **post), f"{sid}-nginx-chain", conns, threads)),
        ]

    def stop_started(self, tag: str) -> None:
        """Stop the pair and nginx chain that `inference_subjects` started for `tag`."""
        for k in (f"proxy-{tag}", f"sidecar-{tag}", f"nginx-fwd-{tag}", f"nginx-tls-{tag}"):
            s = self._started.pop(k, None)
            if isinstance(s, Server):
                self.env.stop(s)

    def resnet(self) -> None:
        """Issue 6 item 4: ResNet-50 in Triton at batch 1/8/32 (CUDA fp16 on the GPU machine), direct / pair / nginx chain."""
        sids = {b: f"resnet50-b{b}" for b in self.resnet_batches}
        sids = {b: sid for b, sid in sids.items() if self.want(sid)}
        if not sids:
            return
        conns = self.resnet_conns

        def title(b: int) -> str:
            return (f"ResNet-50 (random weights) in real Triton, batch {b} ({b * IMAGE_BYTES / 1e6:.1f} MB of FP32 in per request), "
                    f"{conns} connections: direct / pair / nginx chain")

        why = self.need("wrk", "nginx")
        if not why:
            try:
                import torch
            except Exception as e:
                why = f"torch not importable ({e}); the GPU machine has it, here `pip install torch` for a CPU smoke run"
            else:
                if self.resnet_device != "cpu" and not torch.cuda.is_available():
                    why = "no CUDA device (the GPU machine's scenario; `--resnet-device cpu` runs it here as a smoke test)"
        if why:
            for b, sid in sids.items():
                self.skip(sid, title(b), why)
            return
        tport = free_port()
        info = self.env.work / "resnet-device.json"
        triton = TritonResNet(tport, free_port(), free_port(), device=self.resnet_device, log_path=self.env.work / "triton-resnet.log",
                              info=info)
        try:
            triton.start()
            triton.wait_ready(600)
        except Exception as e:
            triton.stop()
            for b, sid in sids.items():
                self.skip(sid, title(b), f"Triton (resnet50) did not start: {str(e)[:300]}")
            return
        try:
            device = json.loads(info.read_text()) if info.exists() else {}
            for b, sid in sids.items():
                body = self.env.work / f"resnet-b{b}.bin"
                hlen = request_body(b, body)
                runs = self.inference_subjects(sid, "resnet", tport, "/v2/models/resnet50/infer", body, hlen, conns, self.wide_threads())
                self.record(sid, title(b), runs, {"batch": b, "connections": conns, "bytes": body.stat().st_size,
                                                  "wrk_threads": self.wide_threads(), "workers": self.env.workers}, device=device)
                for r in self.scenarios[sid]["runs"]:
                    if not r.get("error"):
                        r["images_per_s"] = round(r["rps"] * b, 1)
                        r["input_gb_per_s"] = round(r["rps"] * body.stat().st_size / 1e9, 3)
        finally:
            self.stop_started("resnet")
            triton.stop()

    def scale(self) -> None:
        """Issue 6 item 4: the sidecar at 1/4/8 workers (those the machine's cores allow) with 600 KB POSTs; nginx at the same counts."""
        sid = "scale-600k"
        if not self.want(sid):
            return
        cores = os.cpu_count() or 1
        workers = sorted({w for w in self.scale_workers if w <= cores} | {1})
        if len(workers) == 1 and cores > 1:
            workers.append(min(2, cores))
        conns = self.scale_conns
        threads = self.wide_threads()
        title = (f"the sidecar's relay across cores: 600 KB POST, HTTP/1.1 over TLS, {conns} connections, wrk -t{threads}, "
                 f"sidecar and nginx at {'/'.join(map(str, workers))} workers each (GB/s of request bodies)")
        if why := self.need("wrk", "nginx"):
            self.skip(sid, title, why)
            return
        sink_workers = max(1, min(4, cores // 4))
        sink = self.server("sink-scale", lambda: self.env.start_sink("sink-scale", workers=sink_workers))
        script = configs.wrk_script("/upload", method="POST", body_file=self.env.bodies["600k"], headers={"Content-Type": "application/octet-stream"})
        runs = []
        for w in workers:
            for name, role, factory in (
                    (f"sidecar-w{w}", "subject", lambda w=w: self.env.start_sidecar(f"sidecar-w{w}", http_backend=sink.ports["http"], workers=w)),
                    (f"nginx-w{w}", "baseline", lambda w=w: self.env.start_nginx_tls(f"nginx-tls-w{w}", http_backend=sink.ports["http"], workers=w))):
                def srv(name=name, factory=factory) -> Server:
                    return self.server(name, factory)

                runs.append(self.measure(name, role, lambda srv=srv: [srv()], lambda srv=srv, name=name: (
                    lambda d: run_wrk(f"https://127.0.0.1:{h1_tls_port(srv())}", script, self.env.work, f"{sid}-{name}", conns, d, threads=threads)),
                    group=f"w{w}"))
        self.record(sid, title, runs, {"connections": conns, "size": "600k", "bytes": SIZES["600k"], "workers": workers, "cores": cores,
                                       "wrk_threads": threads, "sink_workers": sink_workers, "tool": "wrk"})
        sc = self.scenarios[sid]
        for r in sc["runs"]:
            if not r.get("error"):
                r["gb_per_s"] = round(r["rps"] * SIZES["600k"] / 1e9, 3)
        base = report.run_by_name(sc, "sidecar-w1")
        if base and base["rps"]:
            sc["scaling"] = {r["name"]: round(r["rps"] / base["rps"], 2) for r in sc["runs"]
                             if r["name"].startswith("sidecar-w") and not r.get("error")}

    def handshakes(self) -> None:
        sid = "handshakes"
        if not self.want(sid):
            return
        title = ("new TLS connections/s, 8 concurrent (Python asyncio client): full attested (every certificate verified from its "
                 "evidence), cache-hit (verdict looked up by certificate hash), nginx TLS 1.3 (P-256)")
        if why := self.need("nginx"):
            self.skip(sid, title, why)
            return
        to = self.duration + 60
        common = ["--duration", str(self.duration), "--warmup", "1", "--concurrency", "8"]

        def ratls_args(mode: str) -> list[str]:
            return ["handshake", "--port", str(self.sidecar().ports["tls"]), "--mode", mode, "--policy", str(self.env.policy_file()),
                    "--sim-dir", str(self.env.sim_dir), *common]

        runs = [
            self.measure("sidecar-full-attested", "subject", lambda: [self.sidecar()], lambda: (lambda d: run_client(ratls_args("verify"), to)),
                         warm=False, group="python"),
            self.measure("sidecar-cache-hit", "subject", lambda: [self.sidecar()], lambda: (lambda d: run_client(ratls_args("cache"), to)),
                         warm=False, group="python"),
            self.measure("nginx", "baseline", lambda: [self.nginx_tls()], lambda: (lambda d: run_client(
                ["handshake", "--port", str(self.nginx_tls().ports["h1"]), "--mode", "plain", "--ca", str(self.env.tls["ca"]), *common], to)),
                warm=False, group="python"),
        ]
        if self.env.tools["wrk"]:
            close = configs.wrk_script("/1k", headers={"Connection": "close"})
            runs += [
                self.measure("sidecar-wrk-resumed", "subject", lambda: [self.sidecar()], lambda: self.wrk(
                    f"https://127.0.0.1:{self.sidecar().ports['tls']}", close, f"{sid}-sidecar-close", 16), group="wrk"),
                self.measure("nginx-wrk-resumed", "baseline", lambda: [self.nginx_tls()], lambda: self.wrk(
                    f"https://127.0.0.1:{self.nginx_tls().ports['h1']}", close, f"{sid}-nginx-close", 16), group="wrk"),
            ]
        self.record(sid, title, runs, {"concurrency": 8}, notes=(
            "CPU ms/req counts the server only (sidecar or nginx); the client-side verification runs in the load client's process. "
            "The Python client (same for all three) makes full handshakes and is CPU-bound itself, so its ratios understate the server "
            "gap. The `*-wrk-resumed` runs use wrk with `Connection: close` (a new connection and one 1 KB GET each): wrk resumes "
            "TLS sessions (checked: 495 of 497 reconnects resumed against a Python server), and both servers allow it by their "
            "defaults (session tickets), so those rows are resumed TLS 1.3 handshakes."))

    def run_all(self) -> None:
        self.env.start_backend()
        for step in (self.tls_h1, self.tls_h2, self.pair, self.grpc, self.handshakes, self.triton, self.scale, self.resnet):
            try:
                step()
            except Exception:
                print(f"[bench] {step.__name__} crashed:\n{traceback.format_exc()}", flush=True)
        for k, v in self._started.items():
            if isinstance(v, Exception):
                self.env.skips[k] = f"{type(v).__name__}: {str(v)[:400]}"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def commit() -> str:
    try:
        h = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "proxy", "sidecar", "ratls", "bench/suite"],
                               capture_output=True, text=True, cwd=REPO).stdout.strip()
        return h + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def tool_versions(env: Env) -> str:
    out = []
    for t, args in (("nginx", ["-v"]), ("haproxy", ["-v"]), ("tinyproxy", ["-v"]), ("wrk", ["-v"]), ("h2load", ["--version"])):
        if not env.tools.get(t):
            out.append(f"{t} missing")
            continue
        p = subprocess.run([env.tools[t], *args], capture_output=True, text=True)
        first = ((p.stdout or "") + (p.stderr or "")).strip().splitlines()
        out.append(first[0][:60] if first else t)
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description="ratls benchmark suite (issue 6): subject and baselines in one run")
    p.add_argument("--duration", type=float, default=3.0, help="seconds of measured load per subject and round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario, subjects interleaved; the median round counts (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up load before each wrk measurement")
    p.add_argument("--workers", type=int, default=1, help="workers for every server under test (nginx, HAProxy, sidecar, proxy)")
    p.add_argument("--only", action="append", help="run scenarios whose id starts with this (repeatable)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--work", type=Path, help="keep configs and logs here (default: a temp dir, removed)")
    p.add_argument("--notes", type=Path, help="markdown appended to the results README under Notes")
    p.add_argument("--ratls-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the sidecar and proxy processes (e.g. MALLOC_MMAP_THRESHOLD_=131072)")
    p.add_argument("--resnet-batches", default="1,8,32", help="batch sizes of the ResNet-50 scenarios (default 1,8,32)")
    p.add_argument("--resnet-connections", type=int, default=16, help="connections of the ResNet-50 scenarios (default 16)")
    p.add_argument("--resnet-device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: run the ResNet-50 scenarios only where CUDA is; cpu: a smoke run here")
    p.add_argument("--scale-workers", default="1,4,8", help="worker counts of the scale scenario, capped at the cores (default 1,4,8)")
    p.add_argument("--scale-connections", type=int, default=64, help="connections of the scale scenario (default 64)")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="ratls-bench-"))
    env = Env(work, workers=a.workers, ratls_env=dict(kv.split("=", 1) for kv in a.ratls_env))
    suite = Suite(env, a.duration, a.warmup, set(a.only) if a.only else None, rounds=a.rounds)
    suite.resnet_batches = tuple(int(b) for b in a.resnet_batches.split(","))
    suite.resnet_conns, suite.resnet_device = a.resnet_connections, a.resnet_device
    suite.scale_workers = tuple(int(w) for w in a.scale_workers.split(","))
    suite.scale_conns = a.scale_connections
    try:
        suite.run_all()
    finally:
        env.stop_all()
    goals = [report.evaluate(g, suite.scenarios) for g in report.GOALS if suite.want(g.scenario)]
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "commit": commit(),
            "command": "python bench/run.py " + " ".join(argv or []), "duration_s": a.duration, "rounds": a.rounds, "workers": a.workers,
            "tools": tool_versions(env), "skips": env.skips, "ratls_env": env.ratls_env,
            "notes": a.notes.read_text() if a.notes and a.notes.exists() else ""}
    report.write_json(a.out, suite.scenarios, goals, meta)
    (a.out / "README.md").write_text(report.markdown(suite.scenarios, goals, meta))
    if not a.only and a.out.resolve() == (REPO / "bench" / "results").resolve():  # a full run into the committed results
        readme = REPO / "README.md"
        readme.write_text(report.update_readme(readme.read_text(), report.readme_section(goals, meta)))
    chart = report.write_chart(a.out, suite.scenarios, goals)
    print(f"[bench] wrote {a.out}/README.md, suite-*.json{', ' + str(chart) if chart else ' (no chart: matplotlib missing)'}")
    for g in goals:
        print(f"[bench] goal {g['goal']}: {g['measured']} ({'met' if g['met'] else 'MISSED' if g['met'] is False else g['note']})")
    if not a.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0
