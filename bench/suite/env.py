"""The bench environment: a temp directory with certificates, payload files, the shared backend, the
baseline servers and the ratls pair, all on loopback ports chosen at start-up.

What is missing (a tool not installed, the ratls CLI not able to start) is recorded as a skip reason,
never hidden: the report lists it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import configs
from .loadgen import grpc_frame
from .procs import Server, free_port, start

REPO = Path(__file__).resolve().parents[2]
SERVER_NAME = "bench.local"
SIZES = {"1k": 1024, "600k": 600 * 1024}
TRITON_FLOATS = 3 * 224 * 224
#: the proxy's --pool-idle-timeout in the suite (default 60 s): short, so "after the load" can include the pool's release
POOL_IDLE_S = 4  # client.backends.triton_digits.IMAGE_FLOATS: 602,112 bytes of FP32


def write_tls(d: Path) -> dict[str, Path]:
    """A P-256 CA and leaf (the sidecar's key type), as PEM files for nginx/HAProxy and the clients."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ratls bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    keypem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem", "combined": d / "combined.pem"}
    paths["ca"].write_bytes(pem(ca))
    paths["cert"].write_bytes(pem(leaf))
    paths["key"].write_bytes(keypem)
    paths["combined"].write_bytes(pem(leaf) + keypem)
    return paths


def write_binary_tensor_request(path: Path, input_name: str, shape: list[int], output: str, *, binary_output: bool,
                                seed: int = 1) -> int:
    """A KServe v2 binary-tensor request (JSON header, then random FP32 data) written to ``path``;
    returns the header's length (the ``Inference-Header-Content-Length`` value)."""
    import numpy as np

    data = np.random.default_rng(seed).random(shape, dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": output, "parameters": {"binary_data": binary_output}}]}, separators=(",", ":")).encode()
    path.write_bytes(header + data)
    return len(header)


def triton_body(d: Path) -> tuple[Path, int]:
    """A KServe v2 binary-tensor request for `mean_fp32` (602,112 bytes of FP32) and its JSON header length."""
    p = d / "triton-602k.bin"
    return p, write_binary_tensor_request(p, "input", [1, TRITON_FLOATS], "mean", binary_output=False)


@dataclass
class Env:
    work: Path
    workers: int = 1
    tools: dict[str, str | None] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    skips: dict[str, str] = field(default_factory=dict)
    #: extra environment for the ratls processes (experiments, e.g. glibc malloc tunables)
    ratls_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        for t in ("nginx", "haproxy", "tinyproxy", "wrk", "h2load"):
            self.tools[t] = shutil.which(t) or (f"/usr/sbin/{t}" if Path(f"/usr/sbin/{t}").exists() else None)
        self.tls = write_tls(self.work)
        www = self.work / "www"
        www.mkdir(exist_ok=True)
        (www / "1k").write_bytes(b"x" * 1024)
        (www / "grpc-reply").write_bytes(configs.GRPC_EMPTY_REPLY)
        (www / "ok").write_bytes(b"ok\n")
        self.www = www
        self.bodies = {}
        for name, n in SIZES.items():
            self.bodies[name] = self.work / f"body-{name}.bin"
            self.bodies[name].write_bytes(bytes(range(256)) * (n // 256) + b"\x00" * (n % 256))
            self.bodies[f"grpc-{name}"] = self.work / f"grpc-{name}.bin"
            self.bodies[f"grpc-{name}"].write_bytes(grpc_frame(b"\x5a" * n))

    # -- generic ----------------------------------------------------------------------------------
    def _track(self, s: Server) -> Server:
        self.servers.append(s)
        return s

    def stop_all(self) -> None:
        for s in reversed(self.servers):
            with contextlib.suppress(Exception):
                s.stop()
        self.servers.clear()

    def nginx(self, name: str, render, ports: list[int]) -> Server:
        prefix = self.work / name
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(render(prefix))
        check = subprocess.run([self.tools["nginx"], "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t for {name}: {check.stderr[-1500:]}")
        s = start(name, [self.tools["nginx"], "-p", str(prefix), "-c", str(conf)], prefix / "stdout.log", ports)
        s.ports = dict(zip([f"p{i}" for i in range(len(ports))], ports, strict=True))
        return self._track(s)

    # -- the common backend -----------------------------------------------------------------------
    def start_backend(self) -> None:
        self.backend = self.start_sink("backend")
        self.be_http, self.be_h2c = self.backend.ports["http"], self.backend.ports["h2c"]

    def start_sink(self, name: str, workers: int = 1) -> Server:
        """An nginx backend (1 KB GET, POST sinks); more workers where the load is meant to outrun one core."""
        http, h2c = free_port(), free_port()
        s = self.nginx(name, lambda p: configs.nginx_backend(p, self.www, http, h2c, workers), [http, h2c])
        s.ports = {"http": http, "h2c": h2c}
        return s

    # -- baselines --------------------------------------------------------------------------------
    def start_nginx_tls(self, name: str = "nginx-tls", http_backend: int | None = None, workers: int | None = None) -> Server:
        h1, h2 = free_port(), free_port()
        be = http_backend or self.be_http
        n = workers or self.workers
        s = self.nginx(name, lambda p: configs.nginx_tls_terminator(p, n, self.tls["cert"], self.tls["key"], h1, h2,
                                                                    be, self.be_h2c), [h1, h2])
        s.ports = {"h1": h1, "h2": h2}
        return s

    def start_haproxy(self) -> Server:
        h1, h2 = free_port(), free_port()
        d = self.work / "haproxy"
        d.mkdir(exist_ok=True)
        cfg = d / "haproxy.cfg"
        cfg.write_text(configs.haproxy_tls_terminator(self.workers, self.tls["combined"], h1, h2, self.be_http, self.be_h2c))
        check = subprocess.run([self.tools["haproxy"], "-c", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stdout[-1500:]}{check.stderr[-1500:]}")
        s = start("haproxy", [self.tools["haproxy"], "-db", "-f", str(cfg)], d / "stdout.log", [h1, h2])
        s.ports = {"h1": h1, "h2": h2}
        return self._track(s)

    def start_nginx_forward(self, tls_port: int, name: str = "nginx-forward") -> Server:
        port = free_port()
        s = self.nginx(name, lambda p: configs.nginx_forward(p, self.workers, port, tls_port, self.tls["ca"], SERVER_NAME), [port])
        s.ports = {"http": port}
        return s

    def start_nginx_grpc(self) -> Server:
        port = free_port()
        s = self.nginx("nginx-grpc", lambda p: configs.nginx_grpc_tls(p, self.workers, self.tls["cert"], self.tls["key"], port,
                                                                      self.be_h2c), [port])
        s.ports = {"h2": port}
        return s

    def start_tinyproxy(self) -> Server:
        port = free_port()
        d = self.work / "tinyproxy"
        d.mkdir(exist_ok=True)
        d.chmod(0o777)
        cfg = d / "tinyproxy.conf"
        cfg.write_text(configs.tinyproxy_conf(port, d / "tinyproxy.pid"))
        s = start("tinyproxy", [self.tools["tinyproxy"], "-d", "-c", str(cfg)], d / "stdout.log", [port])
        s.ports = {"http": port}
        return self._track(s)

    # -- the ratls pair ---------------------------------------------------------------------------
    def ratls_argv(self) -> list[str]:
        exe = Path(sys.executable).with_name("ratls")
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "ratls.cli"]

    def ratls_help(self, sub: str) -> str:
        p = subprocess.run([*self.ratls_argv(), sub, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
        return p.stdout + p.stderr if p.returncode == 0 else ""

    def start_sidecar(self, name: str = "sidecar", http_backend: int | None = None, workers: int | None = None) -> Server:
        helptext = self.ratls_help("sidecar")
        if "--http-backend" not in helptext:
            raise RuntimeError("`ratls sidecar` is not available yet (no --http-backend option)")
        self.sim_dir = self.work / "sim"
        port, admin = free_port(), free_port()
        d = self.work / name
        d.mkdir(exist_ok=True)
        argv = [*self.ratls_argv(), "sidecar", "--tee", "sim", "--sim-dir", str(self.sim_dir), "--listen", f"127.0.0.1:{port}",
                "--http-backend", f"127.0.0.1:{http_backend or self.be_http}", "--grpc-backend", f"127.0.0.1:{self.be_h2c}",
                "--admin", f"127.0.0.1:{admin}", "--log", str(d / "handshakes.log")]
        if "--workers" in helptext:
            argv += ["--workers", str(workers or self.workers)]
        s = start(name, argv, d / "stdout.log", [port, admin], cwd=REPO, env={"RATLS_SIM_DIR": str(self.sim_dir), **self.ratls_env}, timeout=60)
        s.ports = {"tls": port, "admin": admin}
        return self._track(s)

    def policy_file(self) -> Path:
        p = self.work / "policy.yaml"
        p.write_text("x-ms-attestation-type: sim\n")
        return p

    def start_proxy(self, routes: dict[str, int], maps: dict[int, str] | None = None, name: str = "proxy") -> Server:
        helptext = self.ratls_help("proxy")
        if "--route" not in helptext:
            raise RuntimeError("`ratls proxy` is not available yet (no --route option)")
        port, admin = free_port(), free_port()
        d = self.work / name
        d.mkdir(exist_ok=True)
        argv = [*self.ratls_argv(), "proxy", "--listen", f"127.0.0.1:{port}", "--policy", str(self.policy_file()),
                "--sim-dir", str(self.sim_dir), "--admin", f"127.0.0.1:{admin}", "--log", str(d / "handshakes.log")]
        for svc, sidecar_port in routes.items():
            argv += ["--route", f"{svc}=127.0.0.1:{sidecar_port}"]
        for local, svc in (maps or {}).items():
            argv += ["--map", f"127.0.0.1:{local}={svc}"]
        if "--workers" in helptext:
            argv += ["--workers", str(self.workers)]
        if "--pool-idle-timeout" in helptext:
            # idle pooled upstream connections go within the memory scenario's after-load wait (runner.AFTER_S)
            argv += ["--pool-idle-timeout", str(POOL_IDLE_S)]
        s = start(name, argv, d / "stdout.log", [port, *(maps or {})], cwd=REPO, env={"RATLS_SIM_DIR": str(self.sim_dir), **self.ratls_env}, timeout=60)
        s.ports = {"http": port, "admin": admin, **{f"map{i}": p for i, p in enumerate(maps or {})}}
        return self._track(s)

    def stop(self, s: Server) -> None:
        s.stop()
        if s in self.servers:
            self.servers.remove(s)
