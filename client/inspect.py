"""``ratls inspect``: the security reviewer's view of one piece of evidence.

TARGET is an RA-TLS certificate (PEM or DER), a raw SNP report / simulated report / SGX or TDX
quote / Azure SNP CVM HCL report, or ``host:port`` (connect, take the certificate, verify nothing during the handshake).
Collateral files are recognised by content. The clock is read here, at the edge, unless ``--at``
gives the reference time.

Exit codes: 0 verified (and the policy passed, if one was given); 1 verification or policy
failed; 2 unusable input, with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ratls.errors import ParseError, Reason, UsageError
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel import azure
from ratls.io.collateral import service_getter
from ratls.policy import Policy, parse_policy

SNP_REPORT_SIZE = 0x4A0
_SNP_VERSIONS = (2, 3, 5)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="certificate file (PEM/DER), raw report or quote file, or host:port")
    p.add_argument("--collateral", action="append", default=[], metavar="PATH",
                   help="endorsement/collateral file or folder (VCEK/VLEK, chains, TCB info, QE identity, CRLs); repeatable")
    p.add_argument("--collateral-dir", metavar="DIR", help="DCAP collateral cache directory as the proxy and sidecar use it (keys tcbinfo/tdx/<fmspc>, crl/root, ...)")
    p.add_argument("--pccs-url", metavar="URL", help="PCCS/PCS base URL for DCAP collateral the evidence and the directory lack")
    p.add_argument("--at", metavar="TIME", help="ISO-8601 reference time (default: now)")
    p.add_argument("--policy", metavar="FILE", help="claim policy (JSON or YAML) to evaluate")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--type", dest="evidence_type", default="auto", choices=["auto", *[t.value for t in EvidenceType]],
                   help="type of a raw report/quote (default: by content)")
    p.add_argument("--sim-dir", metavar="DIR", help="simulated TEE directory whose root to trust for sim evidence")
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout for host:port targets")


def _reference_time(at: str | None) -> datetime:
    if not at:
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"--at {at!r} is not an ISO-8601 time") from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _read_collateral(paths: list[str]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file() and not f.name.endswith(".md"))
        elif path.is_file():
            out.append(path.read_bytes())
        else:
            raise UsageError(Reason.CONFIG_INVALID, f"--collateral {p}: no such file or folder")
    return tuple(out)


def _sim_root(sim_dir: str | None) -> bytes | None:
    from ratls.io import simdir

    d = Path(sim_dir) if sim_dir else simdir.default_sim_dir()
    if sim_dir and not d.exists():
        raise UsageError(Reason.CONFIG_INVALID, f"--sim-dir {sim_dir}: no such directory")
    try:
        return simdir.load_root(d) if d.exists() else None
    except FileNotFoundError:
        return None


def fetch_certificate(target: str, timeout: float) -> bytes:
    """Take the server's certificate without judging it: judging is verify_certificate's job."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock, ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot take a certificate from {target}: {e}") from e
    if not der:
        raise UsageError(Reason.CONFIG_INVALID, f"{target} sent no certificate")
    return der


def _looks_like_certificate(data: bytes) -> bool:
    head = data.lstrip()[:64]
    return head.startswith(b"-----BEGIN CERTIFICATE") or (len(data) > 2 and data[0] == 0x30 and data[1] in (0x82, 0x83))


def _raw_type(data: bytes, endorsements: tuple[bytes, ...], forced: str) -> EvidenceType:
    if forced != "auto":
        return EvidenceType(forced)
    if len(data) >= 8:
        version = int.from_bytes(data[0:2], "little")
        tee = int.from_bytes(data[4:8], "little")
        if version in (3, 4, 5) and tee == 0x81:
            return EvidenceType.TDX
        if version in (3, 4) and tee == 0 and int.from_bytes(data[2:4], "little") in (2, 3):
            return EvidenceType.SGX
    if len(data) >= SNP_REPORT_SIZE and int.from_bytes(data[0:4], "little") in _SNP_VERSIONS:
        from ratls.sim import is_sim_endorsement

        return EvidenceType.SIM if any(is_sim_endorsement(e) for e in endorsements) else EvidenceType.SNP
    raise UsageError(Reason.UNSUPPORTED_EVIDENCE, "target is neither a certificate, an SNP report nor an SGX/TDX quote (use --type)")


def inspect(target: str, *, collateral: tuple[bytes, ...], now: datetime, policy: Policy | None, sim_root: bytes | None,
            evidence_type: str = "auto", timeout: float = 10.0, getter: Any = None) -> dict[str, Any]:
    from ratls.certificate import verify_certificate

    path = Path(target)
    if path.is_file():
        data = path.read_bytes()
        source = "file"
    elif ":" in target and os.sep not in target:
        data = fetch_certificate(target, timeout)
        source = "tls"
    else:
        raise UsageError(Reason.CONFIG_INVALID, f"{target}: no such file, and not host:port")
    opts = VerifyOptions(now=now, sim_root=sim_root, collateral=getter)
    if source == "tls" or _looks_like_certificate(data):
        v = verify_certificate(data, opts, policy, extra_endorsements=collateral)
        out = {
            "target": target,
            "kind": "certificate",
            "verified": v.verified,
            "evidence_type": v.evidence_type,
            "cert_sha256": v.cert_sha256,
            "claims": v.claims,
            "steps": [s.to_dict() for s in v.steps if s.name != "policy"],
            "policy": v.policy.to_list() if v.policy else None,
            "policy_ok": v.policy.ok if v.policy else None,
            "error": v.error.to_dict() if v.error else None,
        }
        return out
    try:
        if azure.is_hcl_report(data):  # an Azure SNP CVM's HCL report: verify the SNP report inside it
            data, collateral = azure.snp_evidence(data, collateral)
        kind = _raw_type(data, collateral, evidence_type)
    except ParseError as e:
        raise UsageError(Reason.UNSUPPORTED_EVIDENCE, str(e)) from e
    return _raw_result(Evidence(kind, data, collateral), opts, policy, target, "raw")


def _raw_result(ev: Evidence, opts: VerifyOptions, policy: Policy | None, target: str, kind: str) -> dict[str, Any]:
    res = verify_evidence(ev, opts)
    pres = policy.evaluate(res.claims) if (policy and res.verified) else None
    return {
        "target": target,
        "kind": kind,
        "verified": res.verified,
        "evidence_type": res.evidence_type,
        "claims": res.claims,
        "steps": [s.to_dict() for s in res.steps],
        "policy": pres.to_list() if pres else ([] if policy else None),
        "policy_ok": (pres.ok if pres else False) if policy else None,
        "error": res.error.to_dict() if res.error else None,
    }


def _fmt(v: Any) -> str:
    """JSON spelling (true, null, "x"), so what a reviewer reads is what a policy file says."""
    return v if isinstance(v, str) and v else json.dumps(v, default=str)


def render(out: dict[str, Any]) -> str:
    lines = [f"target         {out['target']} ({out['kind']})", f"evidence type  {out['evidence_type']}"]
    if out.get("cert_sha256"):
        lines.append(f"certificate    sha256 {out['cert_sha256']}")
    lines.append("")
    lines.append("verification steps")
    for i, s in enumerate(out["steps"], 1):
        mark = "ok  " if s["ok"] else "FAIL"
        reason = f" [{s['reason']}]" if s.get("reason") else ""
        lines.append(f"  {i:>2}. {mark} {s['name']:<22} {s['detail']}{reason}")
    if out["error"]:
        e = out["error"]
        lines.append(f"  => refused at step '{e['step']}': {e['reason']}: {e['detail']}")
    if out["claims"]:
        lines.append("")
        lines.append("claims")
        width = max(len(k) for k in out["claims"])
        for k in sorted(out["claims"]):
            lines.append(f"  {k:<{width}}  {_fmt(out['claims'][k])}")
    if out["policy"] is not None:
        lines.append("")
        lines.append("policy")
        if not out["policy"]:
            lines.append("  not evaluated: evidence did not verify")
        for r in out["policy"]:
            mark = "ok  " if r["ok"] else "FAIL"
            tag = " (default)" if r.get("implicit") else ""
            note = f"  -- {r['note']}" if r.get("note") else ""
            lines.append(f"  {mark} {r['claim']}{tag}: expected {_fmt(r['expected'])}, actual {_fmt(r['actual'])}{note}")
    lines.append("")
    verdict = "VERIFIED" if out["verified"] else "NOT VERIFIED"
    if out["policy"] is not None:
        verdict += ", policy " + ("PASSED" if out["policy_ok"] else "FAILED")
    lines.append(f"verdict        {verdict}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    now = _reference_time(args.at)
    policy = None
    if args.policy:
        try:
            text = Path(args.policy).read_bytes()
        except OSError as e:
            raise UsageError(Reason.CONFIG_INVALID, f"--policy {args.policy}: {e.strerror}") from e
        policy = parse_policy(text, name=Path(args.policy).name)
    out = inspect(args.target, collateral=_read_collateral(args.collateral), now=now, policy=policy,
                  sim_root=_sim_root(args.sim_dir), evidence_type=args.evidence_type, timeout=args.timeout,
                  getter=service_getter(args.collateral_dir, args.pccs_url))
    out["reference_time"] = now.isoformat()
    if args.json:
        json.dump(out, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(render(out))
    ok = out["verified"] and (out["policy_ok"] is not False)
    return 0 if ok else 1
