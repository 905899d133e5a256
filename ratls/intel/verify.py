"""DCAP verification of TDX and SGX quotes, with named steps and typed errors.

Two paths, one verdict:

* **Engine** -- with complete, fresh collateral (TCB info, QE identity, root and PCK CRLs) the
  verdict comes from ``dcap-qvl`` (Phala's verifier: signatures, PCK chain with CRLs, collateral
  signatures, TCB levels). When it refuses, the step-by-step path below runs to name the step
  that failed; if that finds nothing, the refusal is kept at step ``dcap-qvl`` with a reason
  mapped from its message.
* **Step by step** -- what dcap-qvl cannot do because it insists on complete, unexpired collateral:
  evidence with partial or no collateral, or stale collateral. Every check that the available
  collateral allows runs here; what cannot be checked is said in a step detail and in the claims
  (``tcb-status: Unknown``, ``crl-checked: false``, ``qe-identity-checked: false``,
  ``collateral-stale: true``), so the policy decides: its implicit rules refuse each of these
  unless the policy names that claim (:mod:`ratls.policy`).

Steps (the order reviewers read): parse-quote, pck-chain, qe-report-signature, qe-report-data,
quote-signature, collateral, crl-revocation, tcb-info-signature, qe-identity-signature,
qe-identity-match, tcb-level-match, and dcap-qvl when the engine ran.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import CollateralError, EvidenceError, ParseError, Reason, VerificationError
from ..evidence import Evidence, EvidenceType, VerifyOptions, run_verifier
from ..trail import Step, Trail, Verification
from . import azure
from . import claims as claims_mod
from .collateral import Collateral, SignedJson, gather, parse_pem_chain, to_dcap_qvl
from .pck import PckExtension, pck_extension
from .quote import INTEL_QE_VENDOR_ID, TD_ATTRIBUTES, TEE_TDX, Quote, TdReport, parse_quote
from .roots import intel_root, intel_root_spki, spki_der, tcb_signing_certs
from .tcb import TcbStatus, TcbVerdict, match_isvsvn_level, match_platform_level, verdict_of

STEPS = (
    "parse-quote",
    "pck-chain",
    "collateral",
    "qe-report-signature",
    "qe-report-data",
    "quote-signature",
    "crl-revocation",
    "tcb-info-signature",
    "qe-identity-signature",
    "qe-identity-match",
    "tcb-level-match",
)


def verify_tdx_evidence(evidence: Evidence, opts: VerifyOptions) -> Verification:
    return run_verifier(EvidenceType.TDX.value, lambda t: verify_quote(evidence, opts, t, expect_tdx=True))


def verify_sgx_evidence(evidence: Evidence, opts: VerifyOptions) -> Verification:
    return run_verifier(EvidenceType.SGX.value, lambda t: verify_quote(evidence, opts, t, expect_tdx=False))


# --------------------------------------------------------------------------- primitives


def _p256_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)
    except ValueError as e:
        raise VerificationError(Reason.BAD_SIGNATURE, "attestation key is not a point on P-256") from e


def _ecdsa_ok(key: Any, sig_rs: bytes, msg: bytes) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(sig_rs) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(sig_rs[:32], "big"), int.from_bytes(sig_rs[32:], "big"))
    try:
        key.verify(der, msg, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError(Reason.CERT_NOT_YET_VALID, f"{what} valid from {cert.not_valid_before_utc.isoformat()}, now {now.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise VerificationError(Reason.CERT_EXPIRED, f"{what} expired {cert.not_valid_after_utc.isoformat()}, now {now.isoformat()}")


@lru_cache(maxsize=256)
def _cn(name: x509.Name) -> str:
    """Common name of a certificate name (memoised: names repeat on every verification)."""
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


@lru_cache(maxsize=256)
def _chain(chain_pem: bytes, root_spki: bytes) -> tuple[tuple[x509.Certificate, ...], PckExtension]:
    """Parse and verify the PCK chain's signatures up to a root with the pinned key (cached: pure)."""
    try:
        return _chain_unmemoised(chain_pem, root_spki)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # cryptography parses keys and fields lazily
        raise ParseError(Reason.BAD_ENCODING, f"PCK chain: malformed certificate: {e}") from e


def _chain_unmemoised(chain_pem: bytes, root_spki: bytes) -> tuple[tuple[x509.Certificate, ...], PckExtension]:
    try:
        certs = parse_pem_chain(chain_pem)
    except CollateralError as e:
        raise ParseError(Reason.BAD_ENCODING, f"PCK chain: {e.detail}") from e
    if len(certs) < 3:
        raise VerificationError(Reason.MISSING_ENDORSEMENT, f"PCK chain has {len(certs)} certificates, expected leaf, PCK CA, root")
    leaf, ca, root = certs[0], certs[1], certs[-1]
    if spki_der(root) != root_spki:
        raise VerificationError(Reason.UNTRUSTED_ROOT, f"PCK chain ends in {root.subject.rfc4514_string()} whose key is not the pinned Intel SGX Root CA key")
    if not _signed_by(root, root):
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, "root CA is not self-signed with its key")
    if not _signed_by(ca, root):
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{ca.subject.rfc4514_string()} is not signed by the root CA")
    if not _signed_by(leaf, ca):
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, "PCK certificate is not signed by the PCK CA")
    return (leaf, ca, root), pck_extension(leaf)


@lru_cache(maxsize=256)
def _crl_signed_by(crl_der: bytes, issuer_spki: bytes) -> bool:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    crl = x509.load_der_x509_crl(crl_der)
    return crl.is_signature_valid(load_der_public_key(issuer_spki))  # type: ignore[arg-type]


@lru_cache(maxsize=256)
def _json_signed_by(signed: bytes, sig: bytes, signer_spki: bytes) -> bool:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    return _ecdsa_ok(load_der_public_key(signer_spki), sig, signed)


@lru_cache(maxsize=64)
def _tcb_signer_ok(cert: x509.Certificate, root_spki: bytes) -> bool:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(root_spki)
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[call-arg,arg-type]
        return True
    except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
        return False


# --------------------------------------------------------------------------- the verifier


class _Ctx:
    """What the steps share: the parsed quote, chain, collateral and the running verdict."""

    def __init__(self, quote: Quote, opts: VerifyOptions, root_spki: bytes) -> None:
        self.q = quote
        self.opts = opts
        self.now = opts.now
        self.root_spki = root_spki
        self.chain: tuple[x509.Certificate, ...] = ()
        self.ext: PckExtension | None = None
        self.col = Collateral()
        self.stale: list[str] = []
        self.next_updates: list[datetime] = []
        self.crl_checked = False
        #: the QE report was matched against a signed QE identity (by our step or by dcap-qvl)
        self.qe_identity_checked = False
        self.verdict = TcbVerdict(TcbStatus.UNKNOWN)
        self.qe_verdict: TcbVerdict | None = None

    @property
    def tee(self) -> str:
        return "tdx" if self.q.header.tee_type == TEE_TDX else "sgx"


def verify_quote(evidence: Evidence, opts: VerifyOptions, trail: Trail, *, expect_tdx: bool) -> tuple[dict, bytes]:
    """Verify a quote; an Azure HCL report among the endorsements is checked and its runtime claims added."""
    claims, report_data = _verify_quote(evidence, opts, trail, expect_tdx=expect_tdx)
    hcl_items = [e for e in evidence.endorsements if azure.is_hcl_report(e)]
    if hcl_items:
        with trail.step(azure.STEP) as s:
            if not expect_tdx:
                raise VerificationError(Reason.WRONG_PRODUCT, "an Azure HCL report does not go with an SGX quote")
            runtime, s.detail = azure.check_hcl(hcl_items[0], report_type=azure.REPORT_TYPE_TDX, report_data=report_data)
            claims.update(runtime)
    return claims, report_data


def _verify_quote(evidence: Evidence, opts: VerifyOptions, trail: Trail, *, expect_tdx: bool) -> tuple[dict, bytes]:
    root_spki = opts.intel_root_spki or intel_root_spki()
    with trail.step("parse-quote") as s:
        q = parse_quote(evidence.data)
        if (q.header.tee_type == TEE_TDX) != expect_tdx:
            raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"evidence type {evidence.type.value} but the quote is {'TDX' if q.header.tee_type == TEE_TDX else 'SGX'}")
        if q.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
            raise VerificationError(Reason.WRONG_PRODUCT, f"QE vendor id {q.header.qe_vendor_id.hex()} is not Intel's {INTEL_QE_VENDOR_ID.hex()}")
        s.detail = f"v{q.header.version} {'TDX' if expect_tdx else 'SGX'} quote, {q.trailing} trailing bytes"
    ctx = _Ctx(q, opts, root_spki)
    _chain_step(ctx, trail)
    with trail.step("collateral") as s:
        ca_kind = "processor" if "Processor" in _cn(ctx.chain[1].subject) else "platform"
        assert ctx.ext is not None
        ctx.col = gather(evidence.endorsements, opts.collateral, tee=ctx.tee, fmspc=ctx.ext.fmspc.hex(), pck_ca=ca_kind)
        have = [n for n, v in (("tcb-info", ctx.col.tcb_info), ("qe-identity", ctx.col.qe_identity)) if v is not None]
        s.detail = f"{', '.join(have) or 'no TCB info or QE identity'}; {len(ctx.col.crls)} CRLs"
    if _engine_applies(ctx):
        message = _engine(ctx, trail)
        if message is None:
            return _claims(ctx), q.report_data
        _signature_steps(ctx, trail)
        if any(frag.lower() in message.lower() for frag in _ENGINE_POLICY_REFUSALS):
            # a claim check dcap-qvl hard-codes (TD attributes): ours is the policy's call
            trail.add("dcap-qvl", True, f"declined on a claim check left to the policy ({message}); verdict from the steps below")
            return _steps(ctx, trail)
        _steps(ctx, trail)  # dcap-qvl refused: our steps name the failing check if they can
        step, reason = engine_reason(message)
        with trail.step("dcap-qvl"):
            raise VerificationError(reason, f"dcap-qvl refused ({step}): {message}")
    _signature_steps(ctx, trail)
    return _steps(ctx, trail)


def _chain_step(ctx: _Ctx, trail: Trail) -> None:
    q = ctx.q
    with trail.step("pck-chain") as s:
        ctx.chain, ctx.ext = _chain(q.pck_chain_pem, ctx.root_spki)
        for cert, what in zip(ctx.chain, ("PCK certificate", "PCK CA", "root CA"), strict=True):
            _check_validity(cert, ctx.now, what)
        s.detail = f"PCK FMSPC {ctx.ext.fmspc.hex()}, PCESVN {ctx.ext.pce_svn}, via {_cn(ctx.chain[1].subject)}"


def _signature_steps(ctx: _Ctx, trail: Trail) -> None:
    q = ctx.q
    with trail.step("qe-report-signature"):
        if not _ecdsa_ok(ctx.chain[0].public_key(), q.qe_report_signature, q.qe_report.raw):
            raise VerificationError(Reason.BAD_SIGNATURE, "QE report signature does not verify with the PCK certificate's key")
    with trail.step("qe-report-data"):
        want = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
        got = q.qe_report.report_data
        if got[:32] != want or any(got[32:]):
            raise VerificationError(Reason.KEY_BINDING, f"QE report data {got[:32].hex()} != SHA-256(attestation key || QE auth data) {want.hex()}")
    with trail.step("quote-signature"):
        if not _ecdsa_ok(_p256_key(q.attestation_key), q.signature, q.signed):
            raise VerificationError(Reason.BAD_SIGNATURE, "quote signature over header and body does not verify with the attestation key")


def _steps(ctx: _Ctx, trail: Trail) -> tuple[dict, bytes]:
    _crl_step(ctx, trail)
    tcb_signer = None
    with trail.step("tcb-info-signature") as s:
        if ctx.col.tcb_info is None:
            s.detail = "no TCB info: TCB status Unknown"
        else:
            tcb_signer = _check_signed_json(ctx, ctx.col.tcb_info)
            _check_tcb_info_subject(ctx, ctx.col.tcb_info)
            s.detail = f"TCB info {ctx.col.tcb_info.id} v{ctx.col.tcb_info.body.get('version')} by {tcb_signer}"
    with trail.step("qe-identity-signature") as s:
        if ctx.col.qe_identity is None:
            s.detail = "no QE identity: QE TCB not ranked"
        else:
            s.detail = f"QE identity {ctx.col.qe_identity.id} by {_check_signed_json(ctx, ctx.col.qe_identity)}"
    with trail.step("qe-identity-match") as s:
        if ctx.col.qe_identity is not None:
            ctx.qe_verdict = _match_qe_identity(ctx, ctx.col.qe_identity)
            ctx.qe_identity_checked = True
            s.detail = f"QE ISVSVN {ctx.q.qe_report.isv_svn}: {ctx.qe_verdict.status.value}"
        else:
            s.detail = "skipped: no QE identity"
    with trail.step("tcb-level-match") as s:
        if ctx.col.tcb_info is not None:
            ctx.verdict = _match_tcb(ctx, ctx.col.tcb_info)
            if ctx.qe_verdict is not None:
                ctx.verdict = ctx.verdict.merge(ctx.qe_verdict)
            s.detail = f"{ctx.verdict.status.value} (tcbDate {ctx.verdict.tcb_date}); advisories {list(ctx.verdict.advisory_ids)}"
        else:
            s.detail = "skipped: no TCB info; tcb-status Unknown"
    return _claims(ctx), ctx.q.report_data


def _crl_step(ctx: _Ctx, trail: Trail) -> None:
    with trail.step("crl-revocation") as s:
        if not ctx.col.crls:
            s.detail = "no CRLs: revocation not checked (crl-checked: false)"
            return
        leaf, ca, root = ctx.chain
        checked = []
        for crl in ctx.col.crls:
            issuer = next((c for c in (ca, root) if c.subject == crl.issuer), None)
            if issuer is None:
                raise CollateralError(Reason.COLLATERAL_MISMATCH, f"CRL issued by {crl.issuer.rfc4514_string()} matches no CA of the PCK chain")
            if not _crl_signed_by(crl.public_bytes(Encoding.DER), spki_der(issuer)):
                raise CollateralError(Reason.COLLATERAL_SIGNATURE, f"CRL of {issuer.subject.rfc4514_string()} is not signed by that CA")
            subject = ca if issuer is root else leaf
            if crl.get_revoked_certificate_by_serial_number(subject.serial_number) is not None:
                raise VerificationError(Reason.REVOKED, f"{subject.subject.rfc4514_string()} serial {subject.serial_number:x} is revoked by the CRL of {issuer.subject.rfc4514_string()}")
            name = "root CRL" if issuer is root else "PCK CRL"
            if crl.last_update_utc > ctx.now:
                raise CollateralError(Reason.COLLATERAL_EXPIRED, f"{name} thisUpdate {crl.last_update_utc.isoformat()} is after the reference time")
            if crl.next_update_utc is not None:
                ctx.next_updates.append(crl.next_update_utc)
                if crl.next_update_utc < ctx.now:
                    ctx.stale.append(f"{name} nextUpdate {crl.next_update_utc.isoformat()}")
            checked.append(name)
        ctx.crl_checked = "root CRL" in checked and "PCK CRL" in checked
        s.detail = f"checked {', '.join(checked)}" + ("" if ctx.crl_checked else " (incomplete: crl-checked false)")


def _check_signed_json(ctx: _Ctx, sj: SignedJson) -> str:
    """Verify a PCS body's signature by a TCB Signing certificate chained to the pinned root."""
    candidates = [c for c in ctx.col.certs if "TCB Signing" in _cn(c.subject)] + list(tcb_signing_certs())
    usable = [c for c in candidates if _tcb_signer_ok(c, ctx.root_spki)]
    if not usable:
        raise CollateralError(Reason.UNTRUSTED_ROOT, f"no TCB Signing certificate chained to the pinned root for {sj.kind}")
    valid = [c for c in usable if c.not_valid_before_utc <= ctx.now <= c.not_valid_after_utc]
    if not valid:
        raise CollateralError(Reason.CERT_EXPIRED, f"no TCB Signing certificate valid at {ctx.now.isoformat()} for {sj.kind}")
    if not any(_json_signed_by(sj.signed, sj.signature, spki_der(c)) for c in valid):
        raise CollateralError(Reason.COLLATERAL_SIGNATURE, f"{sj.kind} signature does not verify with the Intel TCB Signing key")
    if sj.issue_date > ctx.now:
        raise CollateralError(Reason.COLLATERAL_EXPIRED, f"{sj.kind} issueDate {sj.issue_date.isoformat()} is after the reference time")
    ctx.next_updates.append(sj.next_update)
    if sj.next_update < ctx.now:
        ctx.stale.append(f"{sj.kind} nextUpdate {sj.next_update.isoformat()}")
    return "Intel SGX TCB Signing"


def _check_tcb_info_subject(ctx: _Ctx, sj: SignedJson) -> None:
    body = sj.body
    want_id = "TDX" if ctx.tee == "tdx" else "SGX"
    if body.get("id", "SGX") != want_id:
        raise CollateralError(Reason.COLLATERAL_MISMATCH, f"TCB info id {body.get('id')!r}, expected {want_id!r}")
    assert ctx.ext is not None
    if str(body.get("fmspc", "")).lower() != ctx.ext.fmspc.hex():
        raise CollateralError(Reason.COLLATERAL_MISMATCH, f"TCB info FMSPC {body.get('fmspc')}, PCK FMSPC {ctx.ext.fmspc.hex()}")
    if str(body.get("pceId", "")).lower() != ctx.ext.pce_id.hex():
        raise CollateralError(Reason.COLLATERAL_MISMATCH, f"TCB info PCEID {body.get('pceId')}, PCK PCEID {ctx.ext.pce_id.hex()}")


def _masked_eq(value: bytes, expected_hex: str, mask_hex: str) -> bool:
    exp, mask = bytes.fromhex(expected_hex), bytes.fromhex(mask_hex)
    return len(exp) == len(mask) == len(value) and all((v & m) == (e & m) for v, e, m in zip(value, exp, mask, strict=True))


def _match_qe_identity(ctx: _Ctx, sj: SignedJson) -> TcbVerdict:
    body, qe = sj.body, ctx.q.qe_report
    want_id = "TD_QE" if ctx.tee == "tdx" else "QE"
    try:
        if body.get("id") != want_id:
            raise CollateralError(Reason.COLLATERAL_MISMATCH, f"QE identity id {body.get('id')!r}, expected {want_id!r}")
        if bytes.fromhex(body["mrsigner"]) != qe.mr_signer:
            raise VerificationError(Reason.QE_IDENTITY_MISMATCH, f"QE MRSIGNER {qe.mr_signer.hex()}, expected {body['mrsigner'].lower()}")
        if int(body["isvprodid"]) != qe.isv_prod_id:
            raise VerificationError(Reason.QE_IDENTITY_MISMATCH, f"QE ISVPRODID {qe.isv_prod_id}, expected {body['isvprodid']}")
        # MISCSELECT is a little-endian u32 in the report, a big-endian hex number in the JSON
        misc = int.from_bytes(qe.misc_select, "little")
        if misc & int(body["miscselectMask"], 16) != int(body["miscselect"], 16) & int(body["miscselectMask"], 16):
            raise VerificationError(Reason.QE_IDENTITY_MISMATCH, f"QE MISCSELECT {qe.misc_select.hex()} does not match {body['miscselect']}/{body['miscselectMask']}")
        if not _masked_eq(qe.attributes, body["attributes"], body["attributesMask"]):
            raise VerificationError(Reason.QE_IDENTITY_MISMATCH, f"QE ATTRIBUTES {qe.attributes.hex()} do not match {body['attributes']}/{body['attributesMask']}")
        level = match_isvsvn_level(body["tcbLevels"], qe.isv_svn)
    except (KeyError, ValueError, TypeError) as e:
        raise CollateralError(Reason.BAD_FORMAT, f"QE identity lacks or garbles {e}") from e
    if level is None:
        raise VerificationError(Reason.TCB_LEVEL_NOT_FOUND, f"QE ISVSVN {qe.isv_svn} is below every QE identity TCB level")
    return verdict_of(level)


def _match_tcb(ctx: _Ctx, sj: SignedJson) -> TcbVerdict:
    """Platform TCB level (and, for TDX, the module identity). A TDX 1.5 body with a non-zero
    TEE_TCB_SVN2 (the module after a runtime update) is ranked on both SVNs, the worse wins."""
    assert ctx.ext is not None
    body, q = sj.body, ctx.q
    td = q.body if isinstance(q.body, TdReport) else None
    svns: list[bytes | None] = [None]
    if td is not None:
        svns = [td.tee_tcb_svn]
        if td.tee_tcb_svn2 is not None and any(td.tee_tcb_svn2) and td.tee_tcb_svn2 != td.tee_tcb_svn:
            svns.append(td.tee_tcb_svn2)
    verdict: TcbVerdict | None = None
    try:
        for svn in svns:
            level = match_platform_level(body["tcbLevels"], ctx.ext.cpu_svn, ctx.ext.pce_svn, svn)
            if level is None:
                tee = f", TEE_TCB_SVN {svn.hex()}" if svn is not None else ""
                raise VerificationError(Reason.TCB_LEVEL_NOT_FOUND, f"no TCB level matches CPUSVN {ctx.ext.cpu_svn.hex()}, PCESVN {ctx.ext.pce_svn}{tee}")
            v = verdict_of(level)
            if td is not None and svn is not None:
                v = v.merge(_match_tdx_module(body, td, svn))
            verdict = v if verdict is None else verdict.merge(v)
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise CollateralError(Reason.BAD_FORMAT, f"TCB info lacks or garbles {e}") from e
    assert verdict is not None
    return verdict


def _match_tdx_module(body: dict, td: TdReport, tee_tcb_svn: bytes) -> TcbVerdict:
    """TDX module identity (TDX 1.5: ``tdxModuleIdentities`` by TEE_TCB_SVN[1]) or plain ``tdxModule``."""
    version, isvsvn = tee_tcb_svn[1], tee_tcb_svn[0]
    module = body.get("tdxModule")
    if module is not None:
        if bytes.fromhex(module["mrsigner"]) != td.mr_signer_seam:
            raise VerificationError(Reason.TCB_MISMATCH, f"MRSIGNERSEAM {td.mr_signer_seam.hex()}, TCB info says {module['mrsigner']}")
        if not _masked_eq(td.seam_attributes, module["attributes"], module["attributesMask"]):
            raise VerificationError(Reason.TCB_MISMATCH, f"SEAM attributes {td.seam_attributes.hex()} do not match the TCB info")
    if version == 0:
        return TcbVerdict(TcbStatus.UP_TO_DATE)
    ident = next((m for m in body.get("tdxModuleIdentities", ()) if m.get("id") == f"TDX_{version:02d}"), None)
    if ident is None:
        raise VerificationError(Reason.TCB_LEVEL_NOT_FOUND, f"TCB info has no TDX module identity TDX_{version:02d}")
    level = match_isvsvn_level(ident["tcbLevels"], isvsvn)
    if level is None:
        raise VerificationError(Reason.TCB_LEVEL_NOT_FOUND, f"TDX module TDX_{version:02d} ISVSVN {isvsvn} is below every level")
    v = verdict_of(level)
    # a module level only ever makes the platform verdict worse; its date is not the platform's
    return TcbVerdict(v.status, v.advisory_ids, None)


def _claims(ctx: _Ctx) -> dict[str, Any]:
    assert ctx.ext is not None
    c = claims_mod.tdx_claims(ctx.q) if ctx.tee == "tdx" else claims_mod.sgx_claims(ctx.q)
    c.update(
        {
            "tcb-status": ctx.verdict.status.value,
            "tcb-date": ctx.verdict.tcb_date,
            "advisory-ids": list(ctx.verdict.advisory_ids),
            "collateral-stale": bool(ctx.stale),
            "collateral-next-update": min(ctx.next_updates).isoformat() if ctx.next_updates else None,
            "crl-checked": ctx.crl_checked,
            "qe-identity-checked": ctx.qe_identity_checked,
            "pck-fmspc": ctx.ext.fmspc.hex(),
            "pck-pcesvn": ctx.ext.pce_svn,
            "pck-cpusvn": ctx.ext.cpu_svn.hex(),
            "qe-svn": ctx.q.qe_report.isv_svn,
        }
    )
    if ctx.tee == "tdx":
        c.update(claims_mod.attester_claims(ctx.verdict.status.value, ctx.verdict.advisory_ids))
    if ctx.stale:
        c["collateral-stale-items"] = list(ctx.stale)
    return c


# --------------------------------------------------------------------------- dcap-qvl engine


#: dcap-qvl refusals that are claim policy, not verification: TD attributes it insists on
#: (SEPT_VE_DISABLE set, DEBUG clear ...). ratls emits the attributes as claims instead.
_ENGINE_POLICY_REFUSALS = ("SEPT_VE_DISABLE is not enabled", "Debug mode is enabled", "TD migration is enabled", "TD profiling is enabled", "SERVTD_EXT is enabled")

#: dcap-qvl message fragment -> (step, reason); first match wins
_ENGINE_REASONS: tuple[tuple[str, str, Reason], ...] = (
    ("No matching TCB level", "tcb-level-match", Reason.TCB_LEVEL_NOT_FOUND),
    ("Reserved bits", "dcap-qvl", Reason.MUST_BE_ZERO),
    ("TCB too old", "qe-identity-match", Reason.TCB_LEVEL_NOT_FOUND),
    ("QE MRSIGNER", "qe-identity-match", Reason.QE_IDENTITY_MISMATCH),
    ("QE ATTRIBUTES", "qe-identity-match", Reason.QE_IDENTITY_MISMATCH),
    ("QE ISVSVN", "qe-identity-match", Reason.QE_IDENTITY_MISMATCH),
    ("tcb_info", "tcb-info-signature", Reason.COLLATERAL_SIGNATURE),
    ("qe_identity", "qe-identity-signature", Reason.COLLATERAL_SIGNATURE),
    ("expired", "collateral", Reason.COLLATERAL_EXPIRED),
    ("in the future", "collateral", Reason.COLLATERAL_EXPIRED),
    ("qe_report", "qe-report-signature", Reason.BAD_SIGNATURE),
    ("QE report hash", "qe-report-data", Reason.KEY_BINDING),
    ("Revoked", "crl-revocation", Reason.REVOKED),
    ("certificate chain", "pck-chain", Reason.BAD_CHAIN_SIGNATURE),
    ("enclave report signature", "quote-signature", Reason.BAD_SIGNATURE),
    ("TDX module", "tcb-level-match", Reason.TCB_MISMATCH),
)


def engine_reason(message: str) -> tuple[str, Reason]:
    """Map a dcap-qvl refusal to our step and reason (unknown messages: step dcap-qvl, bad-signature)."""
    for frag, step, reason in _ENGINE_REASONS:
        if frag.lower() in message.lower():
            return step, reason
    return "dcap-qvl", Reason.BAD_SIGNATURE


_ENGINE_FIT: dict[tuple, datetime | None] = {}


def _engine_applies(ctx: _Ctx) -> bool:
    """Complete collateral (root CRL and this PCK CA's CRL among it), none of it past nextUpdate."""
    col = ctx.col
    if not col.complete:
        return False
    key = (tuple(col.crl_raw), ctx.q.pck_chain_pem, col.tcb_info.source, col.qe_identity.source)  # type: ignore[union-attr]
    if key not in _ENGINE_FIT:
        if len(_ENGINE_FIT) > 256:
            _ENGINE_FIT.clear()
        issuers = {c.issuer for c in col.crls}
        if not {ctx.chain[1].subject, ctx.chain[-1].subject} <= issuers:
            _ENGINE_FIT[key] = None  # dcap-qvl needs both CRLs; the steps say what is missing
        else:
            times = [col.tcb_info.next_update, col.qe_identity.next_update]  # type: ignore[union-attr]
            times += [c.next_update_utc for c in col.crls if c.next_update_utc is not None]
            _ENGINE_FIT[key] = min(times)
    earliest = _ENGINE_FIT[key]
    return earliest is not None and earliest >= ctx.now


def _engine_root_der(ctx: _Ctx) -> bytes:
    return _der(intel_root() if ctx.opts.intel_root_spki is None else ctx.chain[-1])


@lru_cache(maxsize=64)
def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


_TCB_DATES: dict[tuple, str | None] = {}


def _tcb_date(ctx: _Ctx, tcb_info: SignedJson) -> str | None:
    """The matched level's date (dcap-qvl does not return it), memoised on what the match reads."""
    td = ctx.q.body if isinstance(ctx.q.body, TdReport) else None
    assert ctx.ext is not None
    key = (tcb_info.signed, ctx.ext.cpu_svn, ctx.ext.pce_svn, td.raw[:TD_ATTRIBUTES.start] if td else None, td.tee_tcb_svn2 if td else None)
    if key not in _TCB_DATES:
        if len(_TCB_DATES) > 256:
            _TCB_DATES.clear()
        try:
            _TCB_DATES[key] = _match_tcb(ctx, tcb_info).tcb_date
        except EvidenceError:
            _TCB_DATES[key] = None
    return _TCB_DATES[key]


def _engine_collateral(col: Collateral, chain: tuple[x509.Certificate, ...], now_signer: x509.Certificate) -> Any:
    """dcap-qvl's collateral object (built once per collateral set and signer: see _EnginePlan)."""
    root = chain[-1]
    ca_chain = (chain[1].public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM)).decode()
    tcb_chain = (now_signer.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM)).decode()
    return to_dcap_qvl(col, tcb_chain, ca_chain, root=root.subject, ca=chain[1].subject)


class _EnginePlan:
    """What one collateral set means to the engine, worked out once: the TCB Signing certificates
    it offers (with their validity), the nextUpdate times, the root to pass, and dcap-qvl's
    collateral object per signer. ``keep`` holds the certificates whose ids are in the memo key,
    so those ids cannot be reused while the plan lives."""

    __slots__ = ("keep", "next_updates", "qvl", "root_der", "signers", "windows")

    def __init__(self, ctx: _Ctx) -> None:
        col = ctx.col
        assert col.tcb_info is not None and col.qe_identity is not None
        self.keep = tuple(col.certs)
        self.signers = tuple(c for c in [*col.certs, *tcb_signing_certs()] if "TCB Signing" in _cn(c.subject))
        self.windows = tuple((c.not_valid_before_utc, c.not_valid_after_utc) for c in self.signers)
        self.next_updates = (col.tcb_info.next_update, col.qe_identity.next_update, *(c.next_update_utc for c in col.crls if c.next_update_utc))
        self.root_der = _engine_root_der(ctx)
        self.qvl: dict[int, Any] = {}


_ENGINE_PLANS: dict[tuple, _EnginePlan] = {}


def _engine_plan(ctx: _Ctx) -> _EnginePlan:
    col = ctx.col
    assert col.tcb_info is not None and col.qe_identity is not None
    key = (col.tcb_info.source, col.qe_identity.source, tuple(col.crl_raw), ctx.q.pck_chain_pem, ctx.opts.intel_root_spki,
           tuple(map(id, col.certs)))
    plan = _ENGINE_PLANS.get(key)
    if plan is None:
        if len(_ENGINE_PLANS) > 64:
            _ENGINE_PLANS.clear()
        plan = _ENGINE_PLANS[key] = _EnginePlan(ctx)
    return plan


def _engine(ctx: _Ctx, trail: Trail) -> str | None:
    """Run dcap-qvl; on success fill the verdict and the steps it covered; on refusal return its message."""
    import dcap_qvl

    col = ctx.col
    assert col.tcb_info is not None and col.qe_identity is not None
    t0 = time.perf_counter()
    plan = _engine_plan(ctx)
    now = ctx.now
    i = next((i for i, (nb, na) in enumerate(plan.windows) if nb <= now <= na), 0)
    qvl_col = plan.qvl.get(i)
    if qvl_col is None:
        qvl_col = plan.qvl[i] = _engine_collateral(col, ctx.chain, plan.signers[i])
    try:
        report = dcap_qvl.verify_with_root_ca(ctx.q.raw, qvl_col, plan.root_der, int(now.timestamp()))
    except ValueError as e:
        return str(e)
    status = _engine_status(report.status)
    advisories = tuple(sorted(report.advisory_ids))
    ctx.crl_checked = True
    ctx.qe_identity_checked = True
    ctx.next_updates = list(plan.next_updates)
    detail = f"{status.value}; advisories {list(advisories)}"
    trail.steps.append(Step("dcap-qvl", True, detail, (time.perf_counter() - t0) * 1e3))
    for name in _ENGINE_COVERS:
        trail.add(name, True, "by dcap-qvl")
    ctx.verdict = TcbVerdict(status, advisories, _tcb_date(ctx, col.tcb_info))
    return None


#: the steps a dcap-qvl success stands for
_ENGINE_COVERS = ("qe-report-signature", "qe-report-data", "quote-signature", *STEPS[6:])


def _engine_status(text: str) -> TcbStatus:
    norm = text.replace("_", "").lower()
    for st in TcbStatus:
        if st.value.lower() == norm:
            return st
    return {"ok": TcbStatus.UP_TO_DATE}.get(norm, TcbStatus.UNKNOWN)
