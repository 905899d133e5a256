"""RA-TLS certificates end to end: simulated TEE evidence, real SNP evidence, every binding."""

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from ratls import wire
from ratls.certificate import encode_claims, issue_certificate, new_key, parse_ratls_certificate, spki_der, verify_certificate
from ratls.errors import Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions
from ratls.policy import Policy
from ratls.sim import SimAuthority
from tests import vectors

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MEAS = bytes.fromhex("11" * 48)


@pytest.fixture(scope="module")
def sim():
    return SimAuthority.generate(now=NOW - timedelta(days=1))


def policy(**extra):
    return Policy.from_mapping({"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": MEAS.hex(), **extra})


def issue(sim, *, key=None, nonce=None, debug=False, measurement=MEAS, now=NOW, lifetime=timedelta(hours=1)):
    key = key or new_key()
    cert = issue_certificate(key, lambda rd: sim.report(rd, measurement=measurement, debug=debug), now=now, nonce=nonce, lifetime=lifetime, dns_names=("svc.test",))
    return cert.public_bytes(Encoding.DER), key


def test_round_trip_admits_with_policy_naming_sim(sim):
    der, _ = issue(sim)
    v = verify_certificate(der, VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert v.ok, v.to_log()
    names = [s.name for s in v.steps]
    assert names[:3] == ["certificate", "evidence-extension", "key-binding"]
    assert names[-3:] == ["report-data-binding", "evidence-age", "policy"]
    assert {"chain-to-root", "report-signature"} <= set(names)
    assert v.evidence_type == "sim"
    assert v.claims["x-ms-attestation-type"] == "sim"
    assert v.claims["x-ms-sevsnpvm-launchmeasurement"] == MEAS.hex()
    assert v.claims["evidence-age-seconds"] == 60  # notBefore is one minute before issue
    assert v.expires_at == NOW + timedelta(hours=1)
    log = v.to_log()
    assert log["decision"] == "admit" and log["failed_step"] is None


def test_sim_without_configured_root_is_untrusted(sim):
    der, _ = issue(sim)
    v = verify_certificate(der, VerifyOptions(now=NOW), policy())
    assert not v.ok and v.error.reason is Reason.UNTRUSTED_ROOT


def test_sim_from_another_authority_is_untrusted(sim):
    other = SimAuthority.generate(now=NOW - timedelta(days=1))
    der, _ = issue(other)
    v = verify_certificate(der, VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert not v.verified and v.error.reason in (Reason.UNTRUSTED_ROOT, Reason.BAD_CHAIN_SIGNATURE)


def test_no_policy_means_no_traffic(sim):
    der, _ = issue(sim)
    v = verify_certificate(der, VerifyOptions(now=NOW, sim_root=sim.root_der), None)
    assert v.verified and not v.ok
    assert v.reason == "no-policy" and v.failed_step == "policy"
    assert "no policy" in v.refusal("svc:1")["error"]


def test_measurement_not_allowed_names_the_claim(sim):
    der, _ = issue(sim, measurement=bytes(48))
    v = verify_certificate(der, VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert v.verified and not v.ok
    body = v.refusal("triton.svc:8001")
    assert body["step"] == "policy" and body["reason"] == "policy-failed"
    assert body["failed"] == [{"claim": "x-ms-sevsnpvm-launchmeasurement", "expected": MEAS.hex(), "actual": "00" * 48}]


def test_policy_that_does_not_name_sim_refuses_it(sim):
    der, _ = issue(sim)
    v = verify_certificate(der, VerifyOptions(now=NOW, sim_root=sim.root_der), Policy.from_mapping({"x-ms-sevsnpvm-launchmeasurement": MEAS.hex()}))
    assert not v.ok and [r.claim for r in v.policy.failed] == ["x-ms-attestation-type"]


def test_debug_sim_refused_unless_policy_admits_it(sim):
    der, _ = issue(sim, debug=True)
    opts = VerifyOptions(now=NOW, sim_root=sim.root_der)
    assert not verify_certificate(der, opts, policy()).ok
    assert verify_certificate(der, opts, policy(**{"x-ms-sevsnpvm-is-debuggable": True})).ok


def _rebuild(cert_der: bytes, key, *, evidence_ext: bytes | None = None) -> bytes:
    """Re-sign a certificate with ``key``, optionally swapping in another evidence extension."""
    src = x509.load_der_x509_certificate(cert_der)
    b = (
        x509.CertificateBuilder()
        .subject_name(src.subject)
        .issuer_name(src.issuer)
        .public_key(key.public_key())
        .serial_number(src.serial_number)
        .not_valid_before(src.not_valid_before_utc)
        .not_valid_after(src.not_valid_after_utc)
    )
    for ext in src.extensions:
        value = ext.value
        if ext.oid == wire.EVIDENCE_OID and evidence_ext is not None:
            value = x509.UnrecognizedExtension(wire.EVIDENCE_OID, evidence_ext)
        b = b.add_extension(value, ext.critical)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_evidence_moved_to_another_certificate_fails_key_binding(sim):
    der_a, _ = issue(sim)
    thief = new_key()
    moved = _rebuild(der_a, thief)  # same extensions, other key
    v = verify_certificate(moved, VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert not v.verified and v.failed_step == "key-binding" and v.error.reason is Reason.KEY_BINDING


def test_claims_rewritten_for_another_key_fail_report_data_binding(sim):
    import cbor2

    der_a, _ = issue(sim)
    rc = parse_ratls_certificate(der_a)
    thief = new_key()
    forged_claims = encode_claims(spki_der(thief.public_key()))
    ext = cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [rc.evidence.data, forged_claims]))
    v = verify_certificate(_rebuild(der_a, thief, evidence_ext=ext), VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert not v.verified and v.failed_step == "report-data-binding" and v.error.reason is Reason.REPORT_DATA_MISMATCH
    # the evidence itself did verify: the refusal is about binding, not about the TEE
    assert any(s.name == "report-signature" and s.ok for s in v.steps)


def test_real_snp_report_in_a_certificate_does_not_bind_a_new_key():
    name = "snp/gsg-milan-v2-noidblock"
    report, vcek = vectors.read(name, "attestation.bin"), vectors.read(name, "vcek.der")
    t = vectors.ref_time(name)
    key = new_key("P-384")
    cert = issue_certificate(key, lambda rd: Evidence(EvidenceType.SNP, report, (vcek,)), now=t + timedelta(minutes=1))
    v = verify_certificate(cert.public_bytes(Encoding.DER), VerifyOptions(now=t + timedelta(minutes=2)), Policy.from_mapping({"x-ms-sevsnpvm-vmpl": 0}))
    assert any(s.name == "report-signature" and s.ok for s in v.steps), v.to_log()  # genuine AMD evidence
    assert not v.ok and v.error.reason is Reason.REPORT_DATA_MISMATCH


def test_nonce_checked_when_expected(sim):
    der, _ = issue(sim, nonce=b"conn-1")
    opts = VerifyOptions(now=NOW, sim_root=sim.root_der)
    assert verify_certificate(der, opts, policy(), expected_nonce=b"conn-1").ok
    v = verify_certificate(der, opts, policy(), expected_nonce=b"conn-2")
    assert not v.ok and v.error.reason is Reason.NONCE_MISMATCH and v.failed_step == "nonce"


def test_evidence_age_bounded_by_policy(sim):
    der, _ = issue(sim, lifetime=timedelta(hours=5))
    later = NOW + timedelta(hours=2)
    opts = VerifyOptions(now=later, sim_root=sim.root_der)
    v = verify_certificate(der, opts, policy(**{"evidence-age-seconds": {"max": 3600}}))
    assert v.verified and not v.ok and v.policy.failed[0].claim == "evidence-age-seconds"
    assert v.expires_at == NOW - timedelta(minutes=1) + timedelta(seconds=3600)
    assert verify_certificate(der, opts, policy()).ok  # default bound is 24 h


def test_certificate_past_its_lifetime_is_refused(sim):
    der, _ = issue(sim)
    v = verify_certificate(der, VerifyOptions(now=NOW + timedelta(hours=2), sim_root=sim.root_der), policy())
    assert v.failed_step == "certificate" and v.error.reason is Reason.CERT_EXPIRED


def test_flipped_byte_in_evidence_is_refused(sim):
    der, key = issue(sim)
    rc = parse_ratls_certificate(der)
    import cbor2

    data = bytearray(rc.evidence.data)
    data[0x90] ^= 1  # measurement
    ext = cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [bytes(data), rc.claims_bytes]))
    v = verify_certificate(_rebuild(der, key, evidence_ext=ext), VerifyOptions(now=NOW, sim_root=sim.root_der), policy())
    assert not v.verified and v.error.reason is Reason.BAD_SIGNATURE and v.failed_step == "report-signature"


def test_extra_endorsements_complement_but_never_replace_binding():
    name = "snp/gsg-milan-v2-noidblock"
    report, vcek = vectors.read(name, "attestation.bin"), vectors.read(name, "vcek.der")
    t = vectors.ref_time(name)
    cert = issue_certificate(new_key(), lambda rd: Evidence(EvidenceType.SNP, report, ()), now=t + timedelta(minutes=1))
    der = cert.public_bytes(Encoding.DER)
    opts = VerifyOptions(now=t + timedelta(minutes=2))
    bare = verify_certificate(der, opts, None)
    assert bare.failed_step == "find-endorsement" and bare.error.reason is Reason.MISSING_ENDORSEMENT
    helped = verify_certificate(der, opts, None, extra_endorsements=(vcek,))
    assert any(s.name == "chain-to-root" and s.ok for s in helped.steps)
    assert helped.failed_step == "report-data-binding" and not helped.verified
