"""RA-TLS certificate parsing and the structural steps, on certificates built here."""

import hashlib
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls import wire
from ratls.certificate import encode_claims, parse_ratls_certificate, spki_der, verify_certificate
from ratls.errors import ParseError, Reason
from ratls.evidence import EvidenceType, VerifyOptions
from ratls.policy import Policy

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make_cert(extensions=(), *, key=None, signer=None, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=1)):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for oid, value in extensions:
        b = b.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return b.sign(signer or key, hashes.SHA256()), key


def der(cert):
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def test_plain_certificate_has_no_evidence():
    cert, _ = make_cert()
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), Policy.from_mapping({"x-ms-attestation-type": "sim"}))
    assert not v.ok and not v.verified
    assert v.error.reason is Reason.NO_EVIDENCE
    assert v.failed_step == "evidence-extension"
    body = v.refusal("svc:80")
    assert body["step"] == "evidence-extension" and body["service"] == "svc:80" and body["reason"] == "no-evidence"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xff", Reason.BAD_ENCODING),
        (cbor2.dumps([b"a", b"b"]), Reason.BAD_FORMAT),
        (cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"a"])), Reason.BAD_FORMAT),
        (cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"a", "not-bytes"])), Reason.BAD_FORMAT),
        (cbor2.dumps(cbor2.CBORTag(12345, [b"a", cbor2.dumps({})])), Reason.UNSUPPORTED_EVIDENCE),
        (cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"a", b"\xff"])), Reason.BAD_ENCODING),
        (cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"a", cbor2.dumps([1])])), Reason.BAD_FORMAT),
        (cbor2.dumps(cbor2.CBORTag(wire.TAG_INTEL_QUOTE, [b"\x04\x00\x02\x00\x07\x00\x00\x00", cbor2.dumps({})])), Reason.BAD_FORMAT),
    ],
)
def test_malformed_evidence_extension(value, reason):
    cert, _ = make_cert([(wire.EVIDENCE_OID, value)])
    with pytest.raises(ParseError) as ei:
        parse_ratls_certificate(der(cert))
    assert ei.value.reason is reason
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert v.error.reason is reason and v.failed_step == "evidence-extension"


def test_claims_naming_another_key_fail_key_binding():
    other = ec.generate_private_key(ec.SECP256R1())
    claims = encode_claims(spki_der(other.public_key()))
    cert, _ = make_cert([(wire.EVIDENCE_OID, cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"x" * 1184, claims])))])
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert v.error.reason is Reason.KEY_BINDING and v.failed_step == "key-binding"


def test_claims_without_pubkey_hash_fail_key_binding():
    cert, _ = make_cert([(wire.EVIDENCE_OID, cbor2.dumps(cbor2.CBORTag(wire.TAG_SIM_REPORT, [b"x", cbor2.dumps({"nonce": b"n"})])))])
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert v.error.reason is Reason.KEY_BINDING


def test_parse_reads_evidence_claims_and_endorsements():
    key = ec.generate_private_key(ec.SECP256R1())
    claims = encode_claims(spki_der(key.public_key()), b"nonce-1")
    cert, _ = make_cert(
        [(wire.EVIDENCE_OID, cbor2.dumps(cbor2.CBORTag(wire.TAG_SNP_REPORT, [b"r" * 1184, claims]))), (wire.ENDORSEMENTS_OID, cbor2.dumps([b"vcek", b"ask"]))],
        key=key,
    )
    rc = parse_ratls_certificate(der(cert))
    assert rc.evidence.type is EvidenceType.SNP
    assert rc.evidence.endorsements == (b"vcek", b"ask")
    assert rc.claims["nonce"] == b"nonce-1"
    assert list(rc.claims["pubkey-hash"]) == [1, hashlib.sha256(spki_der(key.public_key())).digest()]
    assert rc.sha256 == hashlib.sha256(der(cert)).hexdigest()


def test_intel_tag_is_split_by_tee_type():
    for tee, kind in ((0x81, EvidenceType.TDX), (0, EvidenceType.SGX)):
        quote = (4).to_bytes(2, "little") + (2).to_bytes(2, "little") + tee.to_bytes(4, "little") + b"\0" * 40
        cert, _ = make_cert([(wire.EVIDENCE_OID, cbor2.dumps(cbor2.CBORTag(wire.TAG_INTEL_QUOTE, [quote, cbor2.dumps({})])))])
        assert parse_ratls_certificate(der(cert)).evidence.type is kind


def test_gramine_legacy_extension_is_read():
    quote = (3).to_bytes(2, "little") + (2).to_bytes(2, "little") + (0).to_bytes(4, "little") + b"\0" * 40
    cert, _ = make_cert([(wire.GRAMINE_LEGACY_OID, quote)])
    rc = parse_ratls_certificate(der(cert))
    assert rc.legacy and rc.evidence.type is EvidenceType.SGX and rc.evidence.data == quote


def test_not_self_signed_fails_certificate_step():
    other = ec.generate_private_key(ec.SECP256R1())
    cert, _ = make_cert(signer=other)
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert v.failed_step == "certificate" and v.error.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("nb", "na", "reason"),
    [(NOW + timedelta(hours=1), NOW + timedelta(hours=2), Reason.CERT_NOT_YET_VALID), (NOW - timedelta(hours=2), NOW - timedelta(hours=1), Reason.CERT_EXPIRED)],
)
def test_certificate_validity_window(nb, na, reason):
    cert, _ = make_cert(not_before=nb, not_after=na)
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert v.failed_step == "certificate" and v.error.reason is reason


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_parser_raises_only_parse_error_on_random_bytes(data):
    try:
        parse_ratls_certificate(data)
    except ParseError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_extension_payload_only_parse_error(payload):
    cert, _ = make_cert([(wire.EVIDENCE_OID, payload)])
    try:
        parse_ratls_certificate(der(cert))
    except ParseError:
        pass
    v = verify_certificate(der(cert), VerifyOptions(now=NOW), None)
    assert not v.ok
