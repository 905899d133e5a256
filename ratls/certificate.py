"""RA-TLS certificates: issue one around TEE evidence, and verify one back to a vendor root.

Issue: a fresh EC key made in the TEE, a claims map naming the hash of that key's
SubjectPublicKeyInfo (and an optional nonce), report_data = SHA-512(claims bytes), the evidence
in OID 2.23.133.5.4.9 and its endorsements in 2.23.133.5.4.2, self-signed.

Verify, in this order, each a named step a reviewer reads in the log:
``certificate`` (parses, self-signed, valid at ``now``), ``evidence-extension`` (present and
well-formed), ``key-binding`` (the claims name *this* certificate's key), then the evidence
verifier's own steps, then ``report-data-binding`` (the signed report_data commits to exactly
these claims), ``nonce`` (if one is expected), ``evidence-age`` and ``policy``. A certificate whose
evidence does not bind its own key is refused whatever else it holds: evidence moved to another
certificate fails ``key-binding`` or ``report-data-binding``.

Gramine's legacy extension (raw SGX quote, report_data[0:32] = SHA-256(DER SPKI)) is read too.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import wire
from .errors import EvidenceError, ParseError, Reason, VerificationError
from .evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from .policy import DEFAULT_MAX_AGE_S, EVIDENCE_AGE, Policy, PolicyResult
from .trail import Step, Trail

_CURVES = {"P-256": (ec.SECP256R1, hashes.SHA256), "P-384": (ec.SECP384R1, hashes.SHA384)}


def new_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    """A fresh key pair; it lives in this process's memory only."""
    return ec.generate_private_key(_CURVES[curve][0]())


def spki_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def encode_claims(spki: bytes, nonce: bytes | None = None) -> bytes:
    claims: dict[str, Any] = {wire.CLAIM_PUBKEY_HASH: [wire.HASH_ALG_SHA256, hashlib.sha256(spki).digest()]}
    if nonce is not None:
        claims[wire.CLAIM_NONCE] = nonce
    return cbor2.dumps(claims, canonical=True)


def report_data_for(claims_bytes: bytes) -> bytes:
    return hashlib.sha512(claims_bytes).digest()


def issue_certificate(
    key: ec.EllipticCurvePrivateKey,
    attest: Callable[[bytes], Evidence],
    *,
    now: datetime,
    lifetime: timedelta = timedelta(hours=1),
    subject_cn: str = "ratls-sidecar",
    dns_names: Sequence[str] = (),
    nonce: bytes | None = None,
) -> x509.Certificate:
    """Self-signed RA-TLS certificate for ``key``; ``attest(report_data)`` produces the evidence."""
    spki = spki_der(key.public_key())
    claims_bytes = encode_claims(spki, nonce)
    evidence = attest(report_data_for(claims_bytes))
    tagged = cbor2.dumps(cbor2.CBORTag(wire.TAG_FOR_TYPE[evidence.type], [evidence.data, claims_bytes]))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        # a minute of slack for clocks that disagree; evidence age counts from here
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + lifetime)
        .add_extension(x509.UnrecognizedExtension(wire.EVIDENCE_OID, tagged), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if evidence.endorsements:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(wire.ENDORSEMENTS_OID, cbor2.dumps(list(evidence.endorsements))), critical=False
        )
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
    curve_hash = hashes.SHA384 if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256
    return builder.sign(key, curve_hash())


@dataclass(frozen=True)
class RatlsCertificate:
    """What a certificate carries, parsed but not yet trusted."""

    cert: x509.Certificate
    der: bytes
    spki: bytes
    evidence: Evidence
    claims_bytes: bytes | None  # None for Gramine's legacy extension
    claims: dict[str, Any]
    legacy: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def _intel_type(quote: bytes) -> EvidenceType:
    if len(quote) < wire.QUOTE_TEE_TYPE_OFFSET + 4:
        raise ParseError(Reason.TRUNCATED, f"quote of {len(quote)} bytes has no header")
    tee = int.from_bytes(quote[wire.QUOTE_TEE_TYPE_OFFSET : wire.QUOTE_TEE_TYPE_OFFSET + 4], "little")
    if tee == wire.TEE_TYPE_TDX:
        return EvidenceType.TDX
    if tee == wire.TEE_TYPE_SGX:
        return EvidenceType.SGX
    raise ParseError(Reason.BAD_FORMAT, f"quote header tee_type {tee:#x} is neither SGX (0) nor TDX (0x81)")


def _type_for_tag(tag: int, evidence: bytes) -> EvidenceType:
    if tag == wire.TAG_INTEL_QUOTE:
        return _intel_type(evidence)
    for kind, t in wire.TAG_FOR_TYPE.items():
        if t == tag and kind not in (EvidenceType.SGX, EvidenceType.TDX):
            return kind
    raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"evidence CBOR tag {tag} is not one we know")


def load_certificate(data: bytes) -> x509.Certificate:
    """PEM or DER, by content."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ParseError(Reason.BAD_ENCODING, f"not an X.509 certificate: {e}") from e


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as e:  # duplicate or malformed extensions
        raise ParseError(Reason.BAD_ENCODING, f"certificate extensions do not parse: {e}") from e
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _decode_endorsements(raw: bytes | None) -> tuple[bytes, ...]:
    if raw is None:
        return ()
    try:
        items = cbor2.loads(raw)
    except Exception as e:  # cbor2 raises several types on hostile bytes
        raise ParseError(Reason.BAD_ENCODING, f"endorsements extension is not CBOR: {e}") from e
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, bytes) for i in items):
        raise ParseError(Reason.BAD_FORMAT, "endorsements extension must be a CBOR array of byte strings")
    return tuple(items)


def parse_ratls_certificate(data: bytes) -> RatlsCertificate:
    """Extract evidence, claims and endorsements. Raises ParseError only."""
    cert = load_certificate(data)
    der = cert.public_bytes(serialization.Encoding.DER)
    spki = spki_der(cert.public_key())
    raw = _extension_value(cert, wire.EVIDENCE_OID)
    if raw is None:
        legacy = _extension_value(cert, wire.GRAMINE_LEGACY_OID)
        if legacy is None:
            raise ParseError(Reason.NO_EVIDENCE, "certificate carries no evidence extension (2.23.133.5.4.9 or Gramine's 1.2.840.113741.1337.6)")
        kind = _intel_type(legacy)
        return RatlsCertificate(cert, der, spki, Evidence(kind, legacy, ()), None, {}, legacy=True)
    try:
        tagged = cbor2.loads(raw)
    except Exception as e:
        raise ParseError(Reason.BAD_ENCODING, f"evidence extension is not CBOR: {e}") from e
    if not isinstance(tagged, cbor2.CBORTag):
        raise ParseError(Reason.BAD_FORMAT, "evidence extension must be a tagged CBOR item")
    value = tagged.value
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, bytes) for v in value)):
        raise ParseError(Reason.BAD_FORMAT, "tagged evidence must be [evidence: bstr, claims: bstr]")
    evidence_bytes, claims_bytes = value
    kind = _type_for_tag(tagged.tag, evidence_bytes)
    try:
        claims = cbor2.loads(claims_bytes)
    except Exception as e:
        raise ParseError(Reason.BAD_ENCODING, f"claims are not CBOR: {e}") from e
    if not isinstance(claims, dict):
        raise ParseError(Reason.BAD_FORMAT, "claims must be a CBOR map")
    endorsements = _decode_endorsements(_extension_value(cert, wire.ENDORSEMENTS_OID))
    return RatlsCertificate(cert, der, spki, Evidence(kind, evidence_bytes, endorsements), claims_bytes, claims)


@dataclass
class CertVerdict:
    """The whole story of one certificate: steps, claims, policy rules, and the decision."""

    cert_sha256: str
    evidence_type: str | None
    steps: list[Step]
    claims: dict[str, Any]
    error: EvidenceError | None = None
    policy: PolicyResult | None = None
    policy_name: str | None = None
    expires_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """Evidence verified to a root and bound to this certificate's key (policy aside)."""
        return self.error is None and bool(self.steps) and all(s.ok for s in self.steps if s.name != "policy")

    @property
    def ok(self) -> bool:
        """The only answer that admits traffic: verified, and a policy was given and passed."""
        return self.verified and self.policy is not None and self.policy.ok

    @property
    def failed_step(self) -> str | None:
        if self.error is not None:
            return self.error.step
        s = next((s for s in self.steps if not s.ok), None)
        if s is not None:
            return s.name
        return "policy" if self.policy is None or not self.policy.ok else None

    @property
    def reason(self) -> str | None:
        if self.error is not None:
            return self.error.reason.value
        if self.policy is None:
            return Reason.NO_POLICY.value
        return None if self.policy.ok else Reason.POLICY_FAILED.value

    def to_log(self) -> dict[str, Any]:
        return {
            "cert_sha256": self.cert_sha256,
            "evidence_type": self.evidence_type,
            "decision": "admit" if self.ok else "refuse",
            "failed_step": self.failed_step,
            "reason": self.reason,
            "error": self.error.detail if self.error else None,
            "steps": [s.to_dict() for s in self.steps],
            "claims": self.claims,
            "policy_name": self.policy_name,
            "policy": self.policy.to_list() if self.policy else None,
        }

    def refusal(self, service: str) -> dict[str, Any]:
        """Body of the 502 a client gets: which service, which step, which rules failed."""
        failed = [{"claim": r.claim, "expected": r.expected, "actual": r.actual} for r in self.policy.failed] if self.policy else []
        if self.error is not None:
            message = f"attestation failed at step '{self.error.step}': {self.error.detail}"
        elif self.policy is None:
            message = "no policy configured for this service: no policy, no traffic"
        else:
            message = "attestation policy refused the service: " + "; ".join(
                f"{r.claim} expected {r.expected!r} got {r.actual!r}" for r in self.policy.failed
            )
        return {"error": message, "service": service, "step": self.failed_step, "reason": self.reason, "failed": failed,
                "cert_sha256": self.cert_sha256}


def _check_self_signed(cert: x509.Certificate, now: datetime) -> None:
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise VerificationError(Reason.BAD_SIGNATURE, f"certificate is not validly self-signed: {e}") from e
    if now < cert.not_valid_before_utc:
        raise VerificationError(Reason.CERT_NOT_YET_VALID, f"certificate valid from {cert.not_valid_before_utc.isoformat()}, now {now.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise VerificationError(Reason.CERT_EXPIRED, f"certificate expired {cert.not_valid_after_utc.isoformat()}, now {now.isoformat()}")


def _max_age(policy: Policy | None) -> int:
    rule = policy.rules.get(EVIDENCE_AGE) if policy else None
    if isinstance(rule, dict) and "max" in rule:
        return int(rule["max"])
    return DEFAULT_MAX_AGE_S


def verify_certificate(
    data: bytes,
    options: VerifyOptions,
    policy: Policy | None,
    *,
    expected_nonce: bytes | None = None,
    extra_endorsements: tuple[bytes, ...] = (),
) -> CertVerdict:
    """Never raises on hostile input: the verdict carries the failed step and reason.

    ``extra_endorsements`` (a reviewer's ``--collateral``, a local cache) complement the ones the
    certificate carries; they can only help a chain verify, never replace a binding check.
    """
    trail = Trail()
    digest = hashlib.sha256(data).hexdigest()
    claims: dict[str, Any] = {}
    etype: str | None = None
    try:
        with trail.step("certificate") as s:
            cert = load_certificate(data)
            digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
            _check_self_signed(cert, options.now)
            s.detail = f"self-signed, valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}..{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        with trail.step("evidence-extension") as s:
            rc = parse_ratls_certificate(data)
            etype = rc.evidence.type.value
            s.detail = f"{etype} evidence ({len(rc.evidence.data)} bytes), {len(rc.evidence.endorsements)} endorsements" + (
                " [Gramine legacy extension]" if rc.legacy else ""
            )
        if not rc.legacy:
            with trail.step("key-binding") as s:
                ph = rc.claims.get(wire.CLAIM_PUBKEY_HASH)
                if not (isinstance(ph, (list, tuple)) and len(ph) == 2 and ph[0] == wire.HASH_ALG_SHA256 and isinstance(ph[1], bytes)):
                    raise VerificationError(Reason.KEY_BINDING, f"claims carry no sha-256 pubkey-hash: {ph!r}")
                want = hashlib.sha256(rc.spki).digest()
                if not secrets.compare_digest(ph[1], want):
                    raise VerificationError(Reason.KEY_BINDING, f"evidence is bound to key {ph[1].hex()[:16]}..., certificate key is {want.hex()[:16]}...")
                s.detail = f"claims name this certificate's key (sha256 {want.hex()[:16]}...)"
        evidence = rc.evidence
        if extra_endorsements:
            evidence = Evidence(evidence.type, evidence.data, evidence.endorsements + tuple(extra_endorsements))
        result = verify_evidence(evidence, options)
        trail.steps.extend(result.steps)
        if result.error is not None:
            raise result.error
        claims = dict(result.claims)
        with trail.step("report-data-binding") as s:
            if rc.legacy:
                want = hashlib.sha256(rc.spki).digest()
                if not secrets.compare_digest(result.report_data[:32], want):
                    raise VerificationError(Reason.KEY_BINDING, "Gramine quote report_data[0:32] is not SHA-256 of this certificate's public key")
                s.detail = "report_data[0:32] = SHA-256(SubjectPublicKeyInfo) (Gramine legacy)"
            else:
                want = report_data_for(rc.claims_bytes or b"")
                if not secrets.compare_digest(result.report_data[: len(want)], want):
                    raise VerificationError(Reason.REPORT_DATA_MISMATCH, f"signed report_data {result.report_data.hex()[:16]}... does not commit to these claims ({want.hex()[:16]}...)")
                s.detail = "report_data = SHA-512(claims)"
        if expected_nonce is not None:
            with trail.step("nonce"):
                got = rc.claims.get(wire.CLAIM_NONCE)
                if not isinstance(got, bytes) or not secrets.compare_digest(got, expected_nonce):
                    raise VerificationError(Reason.NONCE_MISMATCH, "certificate was not made for this connection's nonce")
        with trail.step("evidence-age") as s:
            age = max(0, int((options.now - rc.cert.not_valid_before_utc).total_seconds()))
            claims[EVIDENCE_AGE] = age
            s.detail = f"{age} s since the certificate's notBefore (issuers backdate it for clock skew: ours by 60 s)"
    except EvidenceError as e:
        return CertVerdict(digest, etype, trail.steps, claims, e)

    expires = min(rc.cert.not_valid_after_utc, rc.cert.not_valid_before_utc + timedelta(seconds=_max_age(policy)))
    verdict = CertVerdict(digest, etype, trail.steps, claims, None, None, policy.name if policy else None, expires)
    if policy is not None:
        verdict.policy = policy.evaluate(claims)
        failed = verdict.policy.failed
        trail.add("policy", not failed, f"{len(verdict.policy.rules)} rules, {len(failed)} failed" + (": " + ", ".join(r.claim for r in failed) if failed else ""),
                  None if not failed else Reason.POLICY_FAILED.value)
    else:
        trail.add("policy", False, "no policy configured: no policy, no traffic", Reason.NO_POLICY.value)
    return verdict
