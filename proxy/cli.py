"""``ratls proxy``: the client-side verifying forward proxy.

Routes name a service as clients address it and the sidecar that serves it::

    ratls proxy --route inference.example:8000=10.0.0.5:8443 --policy policy.json \\
                --map 127.0.0.1:18000=inference.example:8000

``--config FILE.yaml`` may give the same options, and a policy per route::

    listen: 127.0.0.1:15001
    policy: policy.json            # for routes without their own
    routes:
      - {service: "inference.example:8000", sidecar: "10.0.0.5:8443", policy: other.json}
      - {service: "inference.example:8001", sidecar: "10.0.0.5:8443", policy: {x-ms-attestation-type: sim}}
    maps: ["127.0.0.1:18000=inference.example:8000"]
    collateral-dir: /var/cache/ratls/collateral   # DCAP collateral (TDX/SGX), relative to this file
    pccs-url: https://pccs.example:8081            # fetched into the directory (or memory) when missing or old

The command line wins over the file for scalar options; routes and maps from both are combined.
A route without a policy is refused (no policy, no traffic), and said so at start-up. SIGHUP reads
the files again and applies new routes and policies without dropping open connections (pooled ones
are re-verified); listen addresses and maps need a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from ratls.errors import Reason, UsageError
from ratls.policy import Policy, parse_policy

from .obs import install_uvloop, parse_hostport, run_workers


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with these options and per-route policies")
    parser.add_argument("--listen", help="proxy listen HOST:PORT (default 127.0.0.1:15001)")
    parser.add_argument("--route", action="append", default=[], metavar="SERVICE_HOST:PORT=SIDECAR_HOST:PORT",
                        help="relay this service to that sidecar (repeatable)")
    parser.add_argument("--policy", help="claim policy file (JSON or YAML) for routes without their own")
    parser.add_argument("--map", action="append", default=[], metavar="LOCAL_HOST:PORT=SERVICE_HOST:PORT",
                        help="plain listener relayed to a routed service, for clients that cannot use a proxy (repeatable)")
    parser.add_argument("--sim-dir", help="simulated TEE directory whose root to trust (default: ratls sim's, env RATLS_SIM_DIR)")
    parser.add_argument("--admin", help="admin HOST:PORT for /healthz, /readyz, /metrics")
    parser.add_argument("--log", help="JSON lines log file (one line per attested handshake)")
    parser.add_argument("--max-header-bytes", type=int, help="request/response head limit (default 65536): over it, 431")
    parser.add_argument("--max-connections", type=int, help="client connection limit (default 10000): over it, 503")
    parser.add_argument("--idle-timeout", type=float, help="seconds a client connection may idle between requests (default 120)")
    parser.add_argument("--connect-timeout", type=float, help="seconds for TCP + TLS to a sidecar (default 10)")
    parser.add_argument("--pool-idle-timeout", type=float, help="seconds a verified upstream connection may idle in the pool (default 60)")
    parser.add_argument("--tunnel-idle-timeout", type=float, help="seconds a CONNECT or --map tunnel may carry no byte before it is closed (default 3600; 0: never)")
    parser.add_argument("--response-timeout", type=float, help="seconds to wait for a response head (default 300): over it, 504")
    parser.add_argument("--reuse-port", action="store_true", default=None, help="SO_REUSEPORT on the listeners (several processes)")
    parser.add_argument("--workers", type=int, help="processes sharing the listeners via SO_REUSEPORT (default 1); admin on the first")
    parser.add_argument("--collateral-dir", help="DCAP collateral cache directory (TDX/SGX TCB info, QE identity, CRLs), "
                        "consulted after the certificate's own endorsements")
    parser.add_argument("--pccs-url", help="PCCS/PCS base URL for DCAP collateral the certificate and --collateral-dir lack")


_SCALARS = {"listen", "policy", "sim_dir", "admin", "log", "max_header_bytes", "max_connections", "idle_timeout", "connect_timeout",
            "response_timeout", "pool_idle_timeout", "tunnel_idle_timeout", "reuse_port", "workers", "collateral_dir", "pccs_url"}


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"config {path} is not YAML: {e}") from e
    if not isinstance(doc, dict):
        raise UsageError(Reason.CONFIG_INVALID, f"config {path} must be a mapping")
    doc = {str(k).replace("-", "_"): v for k, v in doc.items()}
    unknown = set(doc) - _SCALARS - {"routes", "route", "maps", "map"}
    if unknown:
        raise UsageError(Reason.CONFIG_INVALID, f"unknown config keys in {path}: {', '.join(sorted(unknown))}")
    return doc


def _policy(spec: Any, base: Path) -> Policy:
    if isinstance(spec, dict):
        return Policy.from_mapping(spec)
    p = Path(str(spec))
    if not p.is_absolute():
        p = base / p
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read policy {p}: {e}") from e
    return parse_policy(text, name=p.stem)


def _split_eq(text: str, what: str) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep:
        raise UsageError(Reason.CONFIG_INVALID, f"{what}: expected A=B, got {text!r}")
    return left.strip(), right.strip()


def build_config(args: argparse.Namespace) -> Any:
    from .server import ProxyConfig, Route

    conf = _load_yaml(args.config) if args.config else {}
    base = Path(args.config).parent if args.config else Path.cwd()
    opts = {k: conf.get(k) for k in _SCALARS}
    for k in _SCALARS:
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    default_policy = _policy(opts["policy"], Path.cwd() if args.policy else base) if opts.get("policy") else None

    specs: list[dict[str, Any]] = []
    for item in list(conf.get("routes") or []) + list(conf.get("route") or []):
        if isinstance(item, str):
            svc, sc = _split_eq(item, "route")
            specs.append({"service": svc, "sidecar": sc})
        elif isinstance(item, dict) and "service" in item and "sidecar" in item:
            specs.append(item)
        else:
            raise UsageError(Reason.CONFIG_INVALID, f"a route is 'SERVICE=SIDECAR' or {{service, sidecar, policy}}, got {item!r}")
    for text in args.route:
        svc, sc = _split_eq(text, "--route")
        specs.append({"service": svc, "sidecar": sc})

    routes: dict[tuple[str, int], Any] = {}
    for spec in specs:
        host, port = parse_hostport(str(spec["service"]), "route service")
        sidecar = parse_hostport(str(spec["sidecar"]), "route sidecar")
        policy = _policy(spec["policy"], base) if spec.get("policy") is not None else default_policy
        key = (host.lower(), port)
        if key in routes:
            raise UsageError(Reason.CONFIG_INVALID, f"route for {host}:{port} given twice")
        routes[key] = Route(service=f"{host.lower()}:{port}", sidecar=sidecar, policy=policy, sni=spec.get("sni"))
    if not routes:
        raise UsageError(Reason.CONFIG_INVALID, "no routes: give --route SERVICE_HOST:PORT=SIDECAR_HOST:PORT")

    maps = []
    for text in list(conf.get("maps") or []) + list(conf.get("map") or []) + list(args.map):
        local, svc = _split_eq(str(text), "--map")
        lh, lp = parse_hostport(local, "map listen address")
        sh, sp = parse_hostport(svc, "map service")
        if (sh.lower(), sp) not in routes:
            raise UsageError(Reason.CONFIG_INVALID, f"--map {text}: {sh}:{sp} has no --route")
        maps.append(((lh, lp), f"{sh.lower()}:{sp}"))

    cfg = ProxyConfig(
        listen=parse_hostport(str(opts.get("listen") or "127.0.0.1:15001"), "--listen"),
        routes=routes,
        maps=maps,
        sim_root=load_sim_root(opts.get("sim_dir")),
        admin=parse_hostport(str(opts["admin"]), "--admin") if opts.get("admin") else None,
        log_path=opts.get("log"),
        reuse_port=bool(opts.get("reuse_port")) or int(opts.get("workers") or 1) > 1,
    )
    cfg.collateral = collateral_getter(opts, from_file=getattr(args, "collateral_dir", None) is None, base=base)
    cfg.workers = int(opts.get("workers") or 1)
    if cfg.workers < 1:
        raise UsageError(Reason.CONFIG_INVALID, "--workers must be at least 1")
    if cfg.workers > 1 and (cfg.listen[1] == 0 or any(port == 0 for (_, port), _ in maps)):
        raise UsageError(Reason.CONFIG_INVALID, "--workers > 1 needs fixed listen ports (port 0 would differ per worker)")
    for name, attr in (("max_header_bytes", "max_head"), ("max_connections", "max_connections"), ("idle_timeout", "idle_timeout"),
                       ("connect_timeout", "connect_timeout"), ("response_timeout", "response_timeout"),
                       ("pool_idle_timeout", "pool_idle_timeout"), ("tunnel_idle_timeout", "tunnel_idle_timeout")):
        if opts.get(name) is not None:
            setattr(cfg, attr, type(getattr(cfg, attr))(opts[name]))
    return cfg


def collateral_getter(opts: dict[str, Any], *, from_file: bool, base: Path) -> Any:
    """``--collateral-dir`` / ``--pccs-url`` as the verifier's collateral getter (None: neither given).

    A directory named in the config file is relative to that file, like its policies."""
    from ratls.io.collateral import service_getter

    d = opts.get("collateral_dir")
    if d is not None and from_file and not Path(str(d)).is_absolute():
        d = base / str(d)
    return service_getter(None if d is None else str(d), None if opts.get("pccs_url") is None else str(opts["pccs_url"]))


def load_sim_root(sim_dir: str | None) -> bytes | None:
    """The simulated TEE's root, if a simulated TEE exists here; None means sim evidence never verifies."""
    try:
        from ratls.io import simdir
    except ImportError:
        return None
    d = sim_dir or simdir.default_sim_dir()
    try:
        return simdir.load_root(d)
    except (OSError, UsageError):
        return None


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    from .server import serve_forever

    for r in cfg.routes.values():
        if r.policy is None:
            print(f"ratls proxy: warning: {r.service} has no policy; every connection to it will be refused", file=sys.stderr)

    def ready(p: Any) -> None:
        maps = ", ".join(f"{listen} -> {svc} (port {port})" for listen, svc, port in p.maps_bound)
        print(f"ratls proxy: listening on {cfg.listen[0]}:{p.port}" + (f"; maps {maps}" if maps else "")
              + (f"; {cfg.workers} workers" if cfg.workers > 1 else "")
              + ("" if cfg.sim_root is None else "; trusting the local simulated TEE root for policies that name sim"), flush=True)

    def worker(i: int) -> None:
        import dataclasses

        install_uvloop()
        wcfg = cfg if i == 0 else dataclasses.replace(cfg, admin=None)

        def reload() -> Any:  # SIGHUP: the same files and flags, read again
            return build_config(args)

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_forever(wcfg, ready if i == 0 else None, reload=reload))

    run_workers(cfg.workers, worker)
    return 0
