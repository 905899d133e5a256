"""``ratls sidecar unseal``: the init step that turns an encrypted bundle into a model in memory.

1. Check that ``--out`` is memory-backed (tmpfs/ramfs per ``/proc/self/mountinfo``) before any
   key is fetched, unless ``--allow-disk``: the decrypted model must not reach a disk the host reads.
2. Make an ephemeral key pair (EC P-384) in this process's memory.
3. ``POST /kbs/v0/auth`` -> nonce; evidence from the TEE with report data
   ``SHA-512(nonce || public-key-bytes)``; ``POST /kbs/v0/attest`` -> session;
   ``GET /kbs/v0/resource/<key-id>`` -> the content key as a JWE only our private key opens.
4. Verify the owner's signature on the bundle, decrypt all-or-nothing into ``--out``, exit 0.

A broker that cannot be reached (or answers 5xx) is retried with exponential backoff, each try a
fresh exchange (nonces are single-use); then unseal fails with one line, exit 1. A refusal (4xx)
is final: it names the failed step and rules.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ratls.errors import RatlsError, Reason, UsageError, VerificationError
from ratls.evidence import Evidence
from ratls.kbs import PROTOCOL_VERSION, b64url, encode_evidence, expected_report_data, public_key_bytes, unb64url, unwrap_secret

MEMORY_FS = frozenset({"tmpfs", "ramfs"})
MOUNTINFO = Path("/proc/self/mountinfo")
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
HTTP_TIMEOUT_S = 15.0


class KeybrokerUnreachable(RatlsError):
    """The broker did not answer (or answered 5xx) after every retry: not a refusal."""


# -- memory-backed output check (pure parser + edge) -------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_type_of(path: str, mountinfo: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding absolute, resolved ``path``."""
    best = ("", "")
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5 or not right.split():
            continue
        mnt, fstype = _unescape(fields[4]), right.split()[0]
        inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best[0]):  # later lines over-mount earlier ones
            best = (mnt, fstype)
    return best


def check_memory_backed(out: Path, *, mountinfo: Path = MOUNTINFO) -> str:
    """The fs type of ``out`` (or its nearest existing parent); UsageError unless tmpfs/ramfs."""
    p = out.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    try:
        text = mountinfo.read_text()
    except OSError as e:
        raise UsageError(
            Reason.CONFIG_INVALID, f"cannot read {mountinfo} to check that {out} is memory-backed: {e.strerror}; use --allow-disk"
        ) from e
    mnt, fstype = fs_type_of(real, text)
    if fstype not in MEMORY_FS:
        raise UsageError(
            Reason.CONFIG_INVALID,
            f"{out} is on {fstype or 'an unknown filesystem'} (mount {mnt or '?'}), not tmpfs/ramfs: the decrypted model would reach a disk; "
            "mount an emptyDir with medium: Memory there, or pass --allow-disk",
        )
    return fstype


# -- the exchange ------------------------------------------------------------------------------


@dataclass
class HttpResult:
    status: int
    body: Any


def _http(url: str, *, data: Any = None, headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None) -> HttpResult:
    """One JSON request. Transport failures raise OSError (retried); any HTTP status returns."""
    raw = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=raw, method="POST" if raw is not None else "GET")
    req.add_header("Accept", "application/json")
    if raw is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S, context=ctx) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except urllib.error.URLError as e:
        reason = e.reason
        raise OSError(str(reason)) from e
    try:
        return HttpResult(status, json.loads(body) if body else None)
    except ValueError:
        return HttpResult(status, {"error": "bad-format", "detail": body[:200].decode(errors="replace")})


class _Transient(Exception):
    pass


def _refusal(step: str, res: HttpResult) -> RatlsError:
    body = res.body if isinstance(res.body, dict) else {}
    try:
        reason = Reason(body.get("error"))
    except ValueError:
        reason = Reason.POLICY_FAILED
    failed = body.get("failed_rules") or []
    rules = "; ".join(f"{r.get('claim')}: expected {r.get('expected')!r}, got {r.get('actual')!r}" for r in failed)
    detail = f"keybroker refused ({res.status}) at {body.get('step') or step}: {body.get('detail', '')}" + (f" [{rules}]" if rules else "")
    return VerificationError(reason, detail, step=step)


@dataclass(frozen=True)
class Released:
    key: bytes
    #: the release policy's rules as the broker evaluated them (expected, actual, ok)
    rules: list[Any]
    attempts: int


def fetch_key(
    url: str,
    key_id: str,
    get_evidence: Callable[[bytes], Evidence],
    tee: str,
    *,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    ctx: ssl.SSLContext | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _m: None,
) -> Released:
    """Attest to the broker at ``url`` and return the released secret ``key_id``.

    Each attempt makes a new ephemeral key and asks for a new nonce. Raises
    :class:`KeybrokerUnreachable` after ``retries`` retries, VerificationError on a refusal.
    """
    from jwcrypto import jwk

    base = url.rstrip("/")
    delay = backoff_s
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            log(f"keybroker unreachable ({last}); retry {attempt}/{retries} in {delay:.2f}s")
            sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        try:
            eph = jwk.JWK.generate(kty="EC", crv="P-384")
            pub = json.loads(eph.export_public())
            res = _call(f"{base}/kbs/v0/auth", {"version": PROTOCOL_VERSION, "tee": tee, "extra-params": {}}, ctx)
            if res.status != 200:
                raise _refusal("auth", res)
            nonce = unb64url(res.body.get("nonce"), "nonce")
            evidence = get_evidence(expected_report_data(nonce, public_key_bytes(pub)))
            res = _call(
                f"{base}/kbs/v0/attest", {"nonce": b64url(nonce), "tee-pubkey": pub, "tee-evidence": encode_evidence(evidence)}, ctx
            )
            if res.status != 200:
                raise _refusal("attest", res)
            session = _field(res, "session", "attest")
            res = _call(f"{base}/kbs/v0/resource/{key_id}", None, ctx, headers={"Authorization": f"Bearer {session}"})
            if res.status != 200:
                raise _refusal("resource", res)
            key = unwrap_secret(_field(res, "jwe", "resource"), eph, secret_id=key_id)
            return Released(key, res.body.get("rules") or [], attempt + 1)
        except _Transient as e:
            last = str(e)
    raise KeybrokerUnreachable(Reason.UNREACHABLE, f"keybroker {base} unreachable after {retries + 1} attempts: {last}", step="keybroker")


def _field(res: HttpResult, name: str, step: str) -> str:
    value = res.body.get(name)
    if not isinstance(value, str) or not value:
        raise VerificationError(Reason.BAD_FORMAT, f"keybroker answered 200 without a {name!r}", step=step)
    return value


def _call(url: str, data: Any, ctx: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> HttpResult:
    try:
        res = _http(url, data=data, headers=headers, ctx=ctx)
    except OSError as e:
        raise _Transient(str(e) or type(e).__name__) from e
    if res.status >= 500:
        raise _Transient(f"HTTP {res.status} from {url}")
    if res.status == 200 and not isinstance(res.body, dict):
        raise _Transient(f"non-JSON answer from {url}")
    return res


# -- CLI ---------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keybroker", required=True, metavar="URL", help="e.g. https://keys.example:8443")
    parser.add_argument("--keybroker-ca", metavar="PEM", help="CA bundle for an HTTPS keybroker (default: system trust)")
    parser.add_argument("--bundle", required=True, metavar="BUNDLE")
    parser.add_argument("--key-id", required=True, metavar="ID", help="name of the bundle's content key at the broker")
    parser.add_argument("--out", required=True, metavar="DIR", help="memory-backed directory for the decrypted model")
    parser.add_argument("--signer", metavar="PUBLIC.pem", help="the owner's public key (Ed25519 or EC P-384)")
    parser.add_argument("--dangerous-allow-unsigned", action="store_true", help="decrypt without checking the owner's signature")
    parser.add_argument("--tee", default="auto", choices=["sim", "snp", "tdx", "sgx", "auto"])
    parser.add_argument("--sim-dir", metavar="DIR", help="simulated TEE state (with --tee sim)")
    parser.add_argument("--sim-measurement", metavar="HEX", help="launch measurement the simulated TEE reports (48 bytes hex)")
    parser.add_argument("--allow-disk", action="store_true", help="allow an --out that is not tmpfs/ramfs (logged)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help=f"retries when the broker is down (default {DEFAULT_RETRIES})")
    parser.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF_S, metavar="SECONDS", help="first retry delay, doubled each time")


def _say(msg: str) -> None:
    print(f"ratls sidecar unseal: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from keybroker.bundle_files import decrypt_to_dir
    from ratls.bundle import load_public_key

    out = Path(args.out)
    if args.allow_disk:
        _say(f"--allow-disk: not checking that {out} is memory-backed")
    else:
        check_memory_backed(out)
    if not args.signer and not args.dangerous_allow_unsigned:
        raise UsageError(Reason.CONFIG_INVALID, "--signer PUBLIC.pem is required (or --dangerous-allow-unsigned)")
    if args.dangerous_allow_unsigned and not args.signer:
        _say("--dangerous-allow-unsigned: the owner's signature is NOT checked")
    try:
        signer = load_public_key(Path(args.signer).read_bytes()) if args.signer else None
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read --signer {args.signer}: {e.strerror}") from e
    if not Path(args.bundle).is_file():
        raise UsageError(Reason.CONFIG_INVALID, f"bundle {args.bundle} not found")

    from sidecar.providers import make_provider

    opts: dict[str, Any] = {}
    if args.tee == "sim":
        if not args.sim_dir:
            raise UsageError(Reason.CONFIG_INVALID, "--tee sim needs --sim-dir")
        opts["sim_dir"] = args.sim_dir
        if args.sim_measurement:
            try:
                opts["measurement"] = bytes.fromhex(args.sim_measurement)
            except ValueError as e:
                raise UsageError(Reason.CONFIG_INVALID, f"--sim-measurement is not hex: {e}") from e
    provider = make_provider(args.tee, **opts)
    ctx = None
    if args.keybroker.startswith("https:"):
        ctx = ssl.create_default_context(cafile=args.keybroker_ca) if args.keybroker_ca else ssl.create_default_context()

    released = fetch_key(
        args.keybroker,
        args.key_id,
        provider.get_evidence,
        provider.evidence_type.value,
        retries=max(0, args.retries),
        backoff_s=args.backoff,
        ctx=ctx,
        log=_say,
    )
    key = bytearray(released.key)
    try:
        res = decrypt_to_dir(args.bundle, bytes(key), out, signer=signer, require_signature=not args.dangerous_allow_unsigned)
    finally:
        key[:] = bytes(len(key))
    print(
        json.dumps(
            {
                "action": "unseal",
                "out": str(res.out_dir),
                **res.manifest.summary(),
                "signer_key_id": res.signer_key_id,
                "evidence_type": provider.evidence_type.value,
                "attempts": released.attempts,
            },
            sort_keys=True,
        ),
        flush=True,
    )
    return 0
