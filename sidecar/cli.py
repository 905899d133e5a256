"""``ratls sidecar``: run the TEE-side RA-TLS sidecar, or ``ratls sidecar unseal`` (the init step).

Every option can also come from ``--config FILE.yaml`` (keys are the option names, ``-`` or
``_``); the command line wins over the file.

TDX/SGX evidence carries its DCAP collateral (TCB info, QE identity, CRLs, TCB Signing chain) in
the certificate's endorsement extension when ``--collateral-dir`` and/or ``--pccs-url`` is given,
so proxies verify it offline, revocation and QE identity included.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from datetime import timedelta
from typing import Any

from proxy.obs import install_uvloop, parse_hostport
from ratls.errors import Reason, UsageError

TEES = ("sim", "snp", "tdx", "sgx", "auto")
DEFAULTS: dict[str, Any] = {
    "tee": "auto",
    "listen": "0.0.0.0:8443",
    "lifetime": 3600.0,
    "rotate_at": 0.5,
    "curve": "P-256",
    "max_connections": 10000,
    "idle_timeout": 3600.0,
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of these options (command line wins)")
    parser.add_argument("--tee", choices=TEES, help="evidence provider (default auto: the hardware found, else refuse)")
    parser.add_argument("--sim-measurement", help="simulated TEE launch measurement, hex (48 bytes)")
    parser.add_argument("--sim-host-data", help="simulated TEE host data, hex (32 bytes)")
    parser.add_argument("--sim-dir", help="simulated TEE directory (default: ratls sim's, env RATLS_SIM_DIR)")
    parser.add_argument("--sim-debug", action="store_true", default=None, help="simulate a debuggable TEE (policies refuse it by default)")
    parser.add_argument("--listen", help="TLS listen address HOST:PORT (default 0.0.0.0:8443)")
    parser.add_argument("--http-backend", help="HTTP/1.1 backend HOST:PORT (ALPN http/1.1)")
    parser.add_argument("--grpc-backend", help="gRPC (h2c) backend HOST:PORT (ALPN h2)")
    parser.add_argument("--admin", help="admin HOST:PORT for /healthz, /readyz, /metrics")
    parser.add_argument("--log", help="JSON lines log file (one line per connection)")
    parser.add_argument("--lifetime", type=float, help="certificate lifetime in seconds (default 3600)")
    parser.add_argument("--rotate-at", type=float, help="rotate after this fraction of the lifetime (default 0.5)")
    parser.add_argument("--curve", choices=("P-256", "P-384"), help="key curve (default P-256)")
    parser.add_argument("--dns-name", action="append", help="DNS name for the certificate's SAN (repeatable)")
    parser.add_argument("--reuse-port", action="store_true", default=None, help="SO_REUSEPORT on the listener (several processes)")
    parser.add_argument("--max-connections", type=int, help="connections served at once (default 10000): past it, 503 / gRPC UNAVAILABLE")
    parser.add_argument("--idle-timeout", type=float, help="seconds a connection may carry no byte before it is closed (default 3600; 0: never)")
    parser.add_argument("--workers", type=int, help="processes sharing the listener via SO_REUSEPORT, each with its own key and certificate (default 1)")
    parser.add_argument("--collateral-dir", help="DCAP collateral cache directory: TDX/SGX certificates carry it in their endorsements")
    parser.add_argument("--pccs-url", help="PCCS/PCS base URL for the DCAP collateral the certificates carry (cached in --collateral-dir if given)")
    sub = parser.add_subparsers(dest="sidecar_command", metavar="unseal")
    sub.required = False
    try:
        unseal = importlib.import_module("sidecar.unseal")
    except ImportError:
        unseal = None
    p = sub.add_parser("unseal", help="init step: attest to the keybroker and decrypt the model bundle into memory")
    if unseal is not None:
        unseal.configure(p)


def load_config(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"config {path} is not YAML: {e}") from e
    if not isinstance(doc, dict):
        raise UsageError(Reason.CONFIG_INVALID, f"config {path} must be a mapping of option -> value")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def merged(args: argparse.Namespace, known: set[str]) -> dict[str, Any]:
    """Command line over config file over defaults; unknown config keys are an error, not ignored."""
    conf = load_config(getattr(args, "config", None))
    unknown = set(conf) - known
    if unknown:
        raise UsageError(Reason.CONFIG_INVALID, f"unknown config keys: {', '.join(sorted(unknown))}")
    out = dict(DEFAULTS)
    out.update({k: v for k, v in conf.items() if v is not None})
    out.update({k: v for k, v in vars(args).items() if v is not None and not k.startswith("_")})
    return out


def _hex(value: Any, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(str(value).removeprefix("0x"))
    except ValueError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"{what} must be hex: {e}") from e


def make_attest(opts: dict[str, Any]) -> tuple[Any, str]:
    """(report_data -> Evidence, evidence type) from the provider the options name."""
    tee = opts["tee"]
    measurement = _hex(opts.get("sim_measurement"), "--sim-measurement")
    host_data = _hex(opts.get("sim_host_data"), "--sim-host-data")
    debug = bool(opts.get("sim_debug"))
    from sidecar.providers import make_provider

    kw: dict[str, Any] = {}
    if tee == "sim":
        from ratls.io import simdir

        kw = {"sim_dir": opts.get("sim_dir") or simdir.default_sim_dir(), "measurement": measurement, "host_data": host_data, "debug": debug}
    elif measurement is not None or host_data is not None or debug:
        raise UsageError(Reason.CONFIG_INVALID, "--sim-measurement, --sim-host-data and --sim-debug apply to --tee sim only")
    if tee != "sim":
        from ratls.io.collateral import service_getter

        kw["collateral"] = service_getter(opts.get("collateral_dir"), opts.get("pccs_url"))
    elif opts.get("collateral_dir") is not None or opts.get("pccs_url") is not None:
        raise UsageError(Reason.CONFIG_INVALID, "--collateral-dir and --pccs-url apply to TDX/SGX evidence, not --tee sim")
    prov = make_provider(tee, **kw)
    etype = getattr(prov, "evidence_type", tee)
    return prov.get_evidence, str(getattr(etype, "value", etype))


def build_config(opts: dict[str, Any]) -> Any:
    from .server import SidecarConfig

    attest, etype = make_attest(opts)
    http_b = parse_hostport(opts["http_backend"], "--http-backend") if opts.get("http_backend") else None
    grpc_b = parse_hostport(opts["grpc_backend"], "--grpc-backend") if opts.get("grpc_backend") else None
    if http_b is None and grpc_b is None:
        raise UsageError(Reason.CONFIG_INVALID, "give --http-backend and/or --grpc-backend")
    lifetime = float(opts["lifetime"])
    if lifetime < 10:
        raise UsageError(Reason.CONFIG_INVALID, "--lifetime must be at least 10 seconds")
    rotate_at = float(opts["rotate_at"])
    if not 0.05 <= rotate_at <= 0.9:
        raise UsageError(Reason.CONFIG_INVALID, "--rotate-at must be between 0.05 and 0.9 of the lifetime")
    if int(opts["max_connections"]) < 1 or float(opts["idle_timeout"]) < 0:
        raise UsageError(Reason.CONFIG_INVALID, "--max-connections must be at least 1 and --idle-timeout at least 0")
    dns = opts.get("dns_name") or ()
    return SidecarConfig(
        listen=parse_hostport(str(opts["listen"]), "--listen"),
        http_backend=http_b,
        grpc_backend=grpc_b,
        attest=attest,
        evidence_type=etype,
        admin=parse_hostport(opts["admin"], "--admin") if opts.get("admin") else None,
        log_path=opts.get("log"),
        lifetime=timedelta(seconds=lifetime),
        rotate_at=rotate_at,
        dns_names=tuple([dns] if isinstance(dns, str) else dns),
        curve=opts["curve"],
        reuse_port=bool(opts.get("reuse_port")) or int(opts.get("workers") or 1) > 1,
        max_connections=int(opts["max_connections"]),
        idle_timeout=float(opts["idle_timeout"]),
    )


_KNOWN = {"config", "tee", "sim_measurement", "sim_host_data", "sim_dir", "sim_debug", "listen", "http_backend", "grpc_backend",
          "admin", "log", "lifetime", "rotate_at", "curve", "dns_name", "reuse_port", "workers", "sidecar_command",
          "max_connections", "idle_timeout",
          "collateral_dir", "pccs_url"}


def run(args: argparse.Namespace) -> int:
    if getattr(args, "sidecar_command", None) == "unseal":
        try:
            unseal = importlib.import_module("sidecar.unseal")
        except ImportError as e:
            raise UsageError(Reason.CONFIG_INVALID, f"sidecar unseal is not available: {e}") from e
        return int(unseal.run(args) or 0)
    opts = merged(args, _KNOWN)
    cfg = build_config(opts)
    workers = int(opts.get("workers") or 1)
    if workers < 1 or (workers > 1 and cfg.listen[1] == 0):
        raise UsageError(Reason.CONFIG_INVALID, "--workers must be at least 1, and more than 1 needs a fixed --listen port")
    from proxy.obs import run_workers

    from .server import serve_forever

    def ready(sc: Any) -> None:
        print(f"ratls sidecar: listening on {cfg.listen[0]}:{sc.port} ({cfg.evidence_type}), cert sha256 {sc.cert_sha256}", flush=True)

    def worker(i: int) -> None:
        import contextlib
        import dataclasses

        install_uvloop()
        wcfg = cfg if i == 0 else dataclasses.replace(cfg, admin=None)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(wcfg, ready if i == 0 else None))

    run_workers(workers, worker)
    return 0
