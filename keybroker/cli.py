"""``ratls keybroker``: run the model owner's key broker, or manage its secret store.

    ratls keybroker --listen 127.0.0.1:8443 --store DIR --master-key FILE [--tls-cert C --tls-key K]
                    [--sim-dir D] [--log FILE] [--nonce-ttl 60]
                    [--secret-prov-listen HOST:PORT --secret-prov-id ID]   (Gramine secret_prov endpoint)
    ratls keybroker add-secret --store DIR --master-key FILE --id model-key --secret-file KEY --policy POLICY.json [--replace]
    ratls keybroker list --store DIR --master-key FILE
    ratls keybroker new-master-key FILE

The master key (32 bytes, raw or hex) seals every secret at rest; keep it off the store's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ratls.errors import Reason, UsageError
from ratls.policy import parse_policy

from .bundle_files import read_key_file, write_new_key_file
from .store import SecretStore


def _common(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--store", required=required, metavar="DIR", help="directory of sealed secrets")
    p.add_argument("--master-key", required=required, metavar="FILE", help="owner's 32-byte master key (raw or hex)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT")
    _common(parser, required=False)
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM")
    parser.add_argument("--sim-dir", metavar="DIR", help="trust this simulated TEE's root (tests and demos only)")
    parser.add_argument("--log", metavar="FILE", help="append JSON audit lines here (default: stderr)")
    parser.add_argument("--nonce-ttl", type=float, default=60.0, metavar="SECONDS", help="challenge lifetime (default 60)")
    parser.add_argument(
        "--secret-prov-listen", metavar="HOST:PORT", help="also serve Gramine's secret_prov protocol here (needs --tls-cert)"
    )
    parser.add_argument("--secret-prov-id", metavar="ID", help="the stored secret the secret_prov endpoint releases (under its own policy)")
    sub = parser.add_subparsers(dest="kb_command", metavar="ACTION")

    p = sub.add_parser("add-secret", help="seal a secret into the store with its release policy")
    _common(p, required=True)
    p.add_argument("--id", required=True, help="secret name, e.g. model-key")
    p.add_argument("--secret-file", required=True, metavar="FILE", help="the secret (e.g. a bundle's content key)")
    p.add_argument("--policy", required=True, metavar="POLICY.json", help="release policy (JSON or YAML)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing secret of that id")

    p = sub.add_parser("list", help="list secrets and their release policies (never the secrets)")
    _common(p, required=True)

    p = sub.add_parser("new-master-key", help="write a new random master key (mode 0600)")
    p.add_argument("file", metavar="FILE")


def _store(args: argparse.Namespace) -> SecretStore:
    if not args.store or not args.master_key:
        raise UsageError(Reason.CONFIG_INVALID, "--store and --master-key are required")
    return SecretStore(args.store, read_key_file(args.master_key))


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(Reason.CONFIG_INVALID, f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    from .server import Broker, server_ssl_context

    store = _store(args)
    sim_root = None
    if args.sim_dir:
        from ratls.io.simdir import load_root

        sim_root = load_root(args.sim_dir)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError(Reason.CONFIG_INVALID, "--tls-cert and --tls-key go together")
    ctx = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    log = open(args.log, "a", buffering=1) if args.log else sys.stderr  # noqa: SIM115 - lives as long as the server
    broker = Broker(store, sim_root=sim_root, audit_stream=log, nonce_ttl_s=args.nonce_ttl)
    sp = None
    if args.secret_prov_listen:
        if not (args.tls_cert and args.secret_prov_id):
            raise UsageError(Reason.CONFIG_INVALID, "--secret-prov-listen needs --tls-cert/--tls-key and --secret-prov-id")
        from .secret_prov import SecretProvServer

        store.get(args.secret_prov_id)  # fail now, not at the first enclave, if it is missing
        sp = SecretProvServer(store, args.secret_prov_id, args.tls_cert, args.tls_key, broker.audit, sim_root=sim_root)
    host, port = _hostport(args.listen)
    port = await broker.start(host, port, ctx)
    scheme = "https" if ctx else "http"
    info = {"event": "keybroker.listening", "url": f"{scheme}://{host}:{port}", "secrets": store.ids(), "sim_trusted": sim_root is not None}
    if sp is not None:
        sp_host, sp_port = _hostport(args.secret_prov_listen)
        info["secret_prov"] = f"{sp_host}:{sp.start(sp_host, sp_port)}"
    print(json.dumps(info), file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if sp is not None:
            sp.stop()
        await broker.stop()


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "kb_command", None)
    if cmd == "add-secret":
        policy = parse_policy(Path(args.policy).read_bytes(), name=args.id)
        secret = Path(args.secret_file).read_bytes()
        path = _store(args).put(args.id, secret, policy, replace=args.replace)
        print(json.dumps({"action": "add-secret", "id": args.id, "file": str(path), "policy_digest": policy.digest, "bytes": len(secret)}))
        return 0
    if cmd == "list":
        st = _store(args)
        for sid in st.ids():
            _secret, policy = st.get(sid)  # also proves each still opens under the master key
            print(json.dumps({"id": sid, "policy": dict(policy.rules), "policy_digest": policy.digest}))
        return 0
    if cmd == "new-master-key":
        write_new_key_file(args.file)
        print(json.dumps({"action": "new-master-key", "file": args.file}))
        return 0
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    return 0
