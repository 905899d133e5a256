"""DCAP under a test-only PKI (root passed via ``intel_root_spki``): revocation, the dcap-qvl engine.

We cannot sign as Intel, so the revocation path and the engine's success path are shown on a quote
re-signed under a generated root: a real TDX quote's header and body, a fresh attestation key, the
QE report re-bound and signed by a test PCK whose SGX extension is copied from the real PCK, and
TCB info / QE identity re-signed by a test TCB Signing key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ratls.errors import Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.collateral import parse_pem_chain
from ratls.intel.pck import SGX_EXTENSION_OID
from ratls.intel.quote import HEADER_SIZE, SGX_REPORT_DATA, TD_ATTRIBUTES, encode_quote, parse_quote
from tests.vectors import read

SPR = "tdx/gtg-spr-v4-collateral"
NOW = datetime(2024, 3, 1, tzinfo=UTC)


def _rs(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _cert(subject, issuer, key, signer, *, ca: bool, serial: int, exts=()):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=365 * 5))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    for e in exts:
        b = b.add_extension(e, critical=False)
    return b.sign(signer, hashes.SHA256())


def _crl(issuer_cert, key, revoked=(), next_update=NOW + timedelta(days=30)):
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer_cert.subject).last_update(NOW - timedelta(days=1)).next_update(next_update)
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(days=2)).build())
    b = b.add_extension(x509.CRLNumber(1), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


@dataclass
class DcapTestPki:
    status: str = "UpToDate"
    advisories: list[str] = field(default_factory=list)
    revoke_leaf: bool = False
    revoke_ca: bool = False
    crl_next_update: datetime = NOW + timedelta(days=30)
    #: TD attribute SEPT_VE_DISABLE (bit 28): dcap-qvl insists on it, our policy decides
    sept_ve_disable: bool = True

    def build(self) -> tuple[Evidence, VerifyOptions]:
        real = parse_quote(read(SPR, "tdx_prod_quote_SPR_E4.dat"))
        real_chain = parse_pem_chain(real.pck_chain_pem)
        root_k, ca_k, leaf_k, tcb_k, ak = (ec.generate_private_key(ec.SECP256R1()) for _ in range(5))
        root = _cert(real_chain[2].subject, real_chain[2].subject, root_k, root_k, ca=True, serial=1)
        ca = _cert(real_chain[1].subject, root.subject, ca_k, root_k, ca=True, serial=2)
        sgx_ext = real_chain[0].extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        leaf = _cert(real_chain[0].subject, ca.subject, leaf_k, ca_k, ca=False, serial=3, exts=[sgx_ext])
        tcb_name = x509.Name(
            [a for a in real_chain[2].subject if a.oid != x509.NameOID.COMMON_NAME] + [x509.NameAttribute(x509.NameOID.COMMON_NAME, "Intel SGX TCB Signing")]
        )
        tcb = _cert(tcb_name, root.subject, tcb_k, root_k, ca=False, serial=4)
        ak_xy = ak.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        qe = bytearray(real.qe_report.raw)
        qe[SGX_REPORT_DATA] = hashlib.sha256(ak_xy + real.qe_auth_data).digest() + bytes(32)
        chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, ca, root))
        signed = bytearray(real.signed)
        if self.sept_ve_disable:
            signed[HEADER_SIZE + TD_ATTRIBUTES.start + 3] |= 0x10
        signed = bytes(signed)
        quote = encode_quote(signed, _rs(ak, signed), ak_xy, bytes(qe), _rs(leaf_k, bytes(qe)), real.qe_auth_data, chain_pem)

        tcb_info = json.loads(read(SPR, "sample_tcbInfo_response.json"))["tcbInfo"]
        tcb_info["issueDate"] = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        tcb_info["nextUpdate"] = (NOW + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        zero = [{"svn": 0} for _ in range(16)]
        # the platform's level first, so it is the one matched; a better level above it for realism
        better = {"tcb": {"sgxtcbcomponents": [{"svn": 99}] * 16, "pcesvn": 99, "tdxtcbcomponents": [{"svn": 99}] * 16},
                  "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
        mine = {"tcb": {"sgxtcbcomponents": zero, "pcesvn": 0, "tdxtcbcomponents": zero}, "tcbDate": "2023-01-01T00:00:00Z", "tcbStatus": self.status}
        if self.advisories:
            mine["advisoryIDs"] = self.advisories
        tcb_info["tcbLevels"] = [mine] if self.status == "UpToDate" else [better, mine]
        qe_id = json.loads(read(SPR, "sample_qeIdentity_response.json"))["enclaveIdentity"]
        qe_id["issueDate"], qe_id["nextUpdate"] = tcb_info["issueDate"], tcb_info["nextUpdate"]

        def signed_body(key: str, obj: dict) -> bytes:
            text = json.dumps(obj, separators=(",", ":"))
            return (f'{{"{key}":{text},"signature":"{_rs(tcb_k, text.encode()).hex()}"}}').encode()

        endorsements = (
            signed_body("tcbInfo", tcb_info),
            signed_body("enclaveIdentity", qe_id),
            _crl(root, root_k, [ca.serial_number] if self.revoke_ca else [], self.crl_next_update),
            _crl(ca, ca_k, [leaf.serial_number] if self.revoke_leaf else [], self.crl_next_update),
            tcb.public_bytes(Encoding.PEM) + root.public_bytes(Encoding.PEM),
        )
        spki = root.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return Evidence(EvidenceType.TDX, quote, endorsements), VerifyOptions(now=NOW, intel_root_spki=spki)


def test_engine_path_verifies_up_to_date():
    ev, opts = DcapTestPki().build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    assert v.claims["tcb-status"] == "UpToDate"
    assert v.claims["crl-checked"] is True and v.claims["collateral-stale"] is False
    engine = next(s for s in v.steps if s.name == "dcap-qvl")
    assert engine.ok


def test_revoked_pck_refused():
    ev, opts = DcapTestPki(revoke_leaf=True).build()
    v = verify_evidence(ev, opts)
    assert (v.error.step, v.error.reason) == ("crl-revocation", Reason.REVOKED)


def test_revoked_pck_ca_refused():
    ev, opts = DcapTestPki(revoke_ca=True).build()
    v = verify_evidence(ev, opts)
    assert (v.error.step, v.error.reason) == ("crl-revocation", Reason.REVOKED)


def test_revoked_pck_refused_even_with_stale_crl():
    ev, opts = DcapTestPki(revoke_leaf=True, crl_next_update=NOW - timedelta(days=1)).build()
    v = verify_evidence(ev, opts)
    assert (v.error.step, v.error.reason) == ("crl-revocation", Reason.REVOKED)


def test_stale_crl_reported_not_refused():
    ev, opts = DcapTestPki(crl_next_update=NOW - timedelta(days=1)).build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    assert v.claims["collateral-stale"] is True
    assert not any(s.name == "dcap-qvl" for s in v.steps), "dcap-qvl refuses stale collateral: the step path reports it instead"


@pytest.mark.parametrize(
    ("status", "advisories"),
    [("UpToDate", []), ("SWHardeningNeeded", ["INTEL-SA-00615"]), ("ConfigurationNeeded", ["INTEL-SA-00161"]), ("OutOfDate", ["INTEL-SA-00837", "INTEL-SA-00233"])],
)
def test_engine_and_steps_agree(status, advisories):
    """The same collateral through dcap-qvl (complete) and through our steps (root CRL withheld)."""
    ev, opts = DcapTestPki(status=status, advisories=advisories).build()
    engine = verify_evidence(ev, opts)
    steps = verify_evidence(Evidence(ev.type, ev.data, tuple(e for i, e in enumerate(ev.endorsements) if i != 2)), opts)
    assert engine.verified and steps.verified, (engine.error, steps.error)
    assert any(s.name == "dcap-qvl" for s in engine.steps) and not any(s.name == "dcap-qvl" for s in steps.steps)
    for v in (engine, steps):
        assert v.claims["tcb-status"] == status
        assert v.claims["advisory-ids"] == sorted(advisories)


def test_engine_td_attribute_refusal_left_to_policy():
    """dcap-qvl refuses a TD without SEPT_VE_DISABLE; that is a claim, so our steps give the verdict."""
    ev, opts = DcapTestPki(sept_ve_disable=False).build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    assert v.claims["x-ms-tdxvm-tdattributes"] == "0000004000000000"
    engine = next(s for s in v.steps if s.name == "dcap-qvl")
    assert "SEPT_VE_DISABLE" in engine.detail
    assert v.claims["tcb-status"] == "UpToDate" and v.claims["crl-checked"] is True


def test_engine_refusal_named_by_the_steps():
    """Complete fresh collateral, a tampered TCB info: dcap-qvl refuses, our steps name the check."""
    ev, opts = DcapTestPki().build()
    tampered = ev.endorsements[0].replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"OutOfDate"', 1)
    assert tampered != ev.endorsements[0]
    v = verify_evidence(Evidence(ev.type, ev.data, (tampered, *ev.endorsements[1:])), opts)
    assert (v.error.step, v.error.reason) == ("tcb-info-signature", Reason.COLLATERAL_SIGNATURE)


def test_engine_reason_table():
    from ratls.intel.verify import engine_reason

    assert engine_reason("Verification failed: No matching TCB level found") == ("tcb-level-match", Reason.TCB_LEVEL_NOT_FOUND)
    assert engine_reason("Verification failed: TCBInfo expired") == ("collateral", Reason.COLLATERAL_EXPIRED)
    assert engine_reason("Signature is invalid for qe_report in quote") == ("qe-report-signature", Reason.BAD_SIGNATURE)
    assert engine_reason("QE report hash mismatch") == ("qe-report-data", Reason.KEY_BINDING)
    assert engine_reason("Reserved bits in TD attributes") == ("dcap-qvl", Reason.MUST_BE_ZERO)
    assert engine_reason("something new") == ("dcap-qvl", Reason.BAD_SIGNATURE)
