"""The simulated TEE's directory (the edge of :mod:`ratls.sim`) and the ``ratls sim`` subcommand.

Layout of a sim directory (default :func:`default_sim_dir`, or ``$RATLS_SIM_DIR``):

* ``authority.pem`` -- the private keys and certificates of the simulated chain, mode 0600;
* ``root.der``      -- the public ARK-Sim certificate that verifiers trust (``VerifyOptions.sim_root``).

A sidecar (which signs) and a proxy (which verifies) on one machine use the same default
directory, so they agree without configuration. Creation is atomic and safe when two processes
race: each writes a private temporary file and hard-links it into place; the loser discards its
own authority and loads the winner's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from ..errors import Reason, UsageError
from ..sim import SimAuthority
from ..snp.der import split_certs

ENV_DIR = "RATLS_SIM_DIR"
AUTHORITY_FILE = "authority.pem"
ROOT_FILE = "root.der"


def default_sim_dir() -> Path:
    """``$RATLS_SIM_DIR`` if set, else ``<user data dir>/ratls/sim`` (platformdirs)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("ratls", appauthor=False)) / "sim"


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` atomically; False (and nothing written) if it already exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_authority(file: Path) -> SimAuthority:
    st = file.stat()
    if st.st_mode & 0o077:
        raise UsageError(Reason.CONFIG_INVALID, f"{file} holds private keys but is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    return SimAuthority.from_bytes(file.read_bytes())


def load_or_create(path: str | os.PathLike[str] | None = None) -> SimAuthority:
    """The authority in ``path`` (default :func:`default_sim_dir`), created on first use."""
    d = Path(path) if path is not None else default_sim_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    file = d / AUTHORITY_FILE
    if not file.exists():
        fresh = SimAuthority.generate(now=datetime.now(UTC))
        _write_new(file, fresh.to_bytes(), 0o600)
    auth = _read_authority(file)
    root = d / ROOT_FILE
    if not root.exists() or root.read_bytes() != auth.root_der:
        _replace(root, auth.root_der, 0o644)
    return auth


def load_root(path: str | os.PathLike[str] | None = None) -> bytes:
    """DER of the simulated ARK in ``path`` (default :func:`default_sim_dir`), for verifiers.

    Needs only the public ``root.der`` (falls back to the certificates in ``authority.pem``).
    Raises UsageError when the directory holds no simulated TEE.
    """
    d = Path(path) if path is not None else default_sim_dir()
    root = d / ROOT_FILE
    if root.is_file():
        return root.read_bytes()
    auth = d / AUTHORITY_FILE
    if auth.is_file():
        ders = split_certs(auth.read_bytes())
        if ders:
            return ders[0]
    raise UsageError(Reason.CONFIG_INVALID, f"no simulated TEE in {d}: run `ratls sim init --dir {d}`")


# -- CLI ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sim_command", metavar="ACTION")
    sub.required = True
    for name, help_ in (("init", "create the simulated TEE's chain (if absent) and print its root fingerprint"), ("show", "describe the simulated TEE")):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--dir", type=Path, default=None, help=f"sim directory (default: ${ENV_DIR} or the user data dir)")
        if name == "show":
            p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("report", help="write a raw simulated SNP report", description="write a raw simulated SNP report")
    p.add_argument("--dir", type=Path, default=None, help=f"sim directory (default: ${ENV_DIR} or the user data dir)")
    p.add_argument("--report-data", required=True, help="hex, at most 64 bytes (zero-padded)")
    p.add_argument("--measurement", default=None, help="hex, at most 48 bytes (default: the sim's fixed measurement)")
    p.add_argument("--host-data", default=None, help="hex, at most 32 bytes")
    p.add_argument("--debug", action="store_true", help="set the guest policy's DEBUG bit")
    p.add_argument("-o", "--output", type=Path, required=True, help="file for the 1184-byte report")
    p.add_argument("--certs", type=Path, default=None, help="also write the VCEK-Sim and ASK-Sim (PEM) here, for `ratls inspect --collateral`")


def _hex(label: str, text: str | None, size: int) -> bytes | None:
    if text is None:
        return None
    t = text[2:] if text.lower().startswith("0x") else text
    try:
        b = bytes.fromhex(t)
    except ValueError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"--{label} is not hex: {e}") from e
    if len(b) > size:
        raise UsageError(Reason.CONFIG_INVALID, f"--{label} is {len(b)} bytes, at most {size}")
    return b


def _describe(d: Path, auth: SimAuthority) -> dict:
    from ..snp.der import parse_cert

    vcek = parse_cert(auth.vcek_der)
    return {
        "dir": str(d),
        "root_sha256": auth.root_fingerprint,
        "chip_id": auth.chip_id.hex(),
        "tcb": auth.tcb,
        "vcek_valid": [vcek.not_before.isoformat(), vcek.not_after.isoformat()],
    }


def run(args: argparse.Namespace) -> int:
    d = args.dir if args.dir is not None else default_sim_dir()
    if args.sim_command == "init":
        existed = (d / AUTHORITY_FILE).exists()
        auth = load_or_create(d)
        print(f"simulated TEE {'already present' if existed else 'created'} in {d}")
        print(f"root sha256: {auth.root_fingerprint}")
        print("trusted only by policies naming it: {\"x-ms-attestation-type\": \"sim\"}")
        return 0
    if args.sim_command == "show":
        if not (d / AUTHORITY_FILE).exists():
            raise UsageError(Reason.CONFIG_INVALID, f"no simulated TEE in {d}: run `ratls sim init`")
        info = _describe(d, _read_authority(d / AUTHORITY_FILE))
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for k, v in info.items():
                print(f"{k:12} {v}")
        return 0
    # report
    report_data = _hex("report-data", args.report_data, 64) or b""
    kw: dict = {"debug": args.debug}
    m = _hex("measurement", args.measurement, 48)
    if m is not None:
        kw["measurement"] = m
    h = _hex("host-data", args.host_data, 32)
    if h is not None:
        kw["host_data"] = h
    auth = load_or_create(d)
    ev = auth.report(report_data, **kw)
    args.output.write_bytes(ev.data)
    if args.certs is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        args.certs.write_bytes(b"".join(x509.load_der_x509_certificate(c).public_bytes(Encoding.PEM) for c in ev.endorsements))
    print(f"wrote {len(ev.data)}-byte simulated report to {args.output} (root sha256 {auth.root_fingerprint[:16]}…)", file=sys.stderr)
    return 0
