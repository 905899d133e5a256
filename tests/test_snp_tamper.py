"""Tamper tables (go-tdx-guest TestNegativeVerification style) and parser property tests.

Every single-byte change in the signed part [0, 0x2A0) of a real report, and in its signature's
r and s, must be rejected; each row names the step and reason it must fail with.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratls.errors import EvidenceError, ParseError, Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.snp import abi
from ratls.snp.der import parse_cert, split_certs
from tests.vectors import read, ref_time

NAME = "snp/trustee-milan-v2-vcek"


@pytest.fixture(scope="module")
def real():
    return read(NAME, "test-report.bin"), read(NAME, "test-vcek.der"), VerifyOptions(now=ref_time(NAME))


def tampered(report: bytes, pos: int, delta: int = 1) -> bytes:
    b = bytearray(report)
    b[pos] = (b[pos] + delta) % 256
    return bytes(b)


def run(report: bytes, vcek: bytes, opts: VerifyOptions):
    return verify_evidence(Evidence(EvidenceType.SNP, report, (vcek,)), opts)


# (offset, field, step, reason): a change there must fail at that step with that reason.
TABLE = [
    (abi.VERSION[0], "version 2 -> 3 (v3 without CPUID is no Milan part)", "find-endorsement", Reason.WRONG_PRODUCT),
    (abi.VERSION[0] + 1, "version high byte", "parse-report", Reason.UNSUPPORTED_VERSION),
    (abi.GUEST_SVN[0], "guest_svn", "report-signature", Reason.BAD_SIGNATURE),
    (21, "policy bit (virtee milan_report_invalid)", "report-signature", Reason.BAD_SIGNATURE),
    (abi.POLICY[0] + 2, "policy byte 2 0x03 -> 0x04 (clears reserved-one bit 17)", "parse-report", Reason.BAD_FORMAT),
    (42, "image_id (trustee check_report_signature_failure)", "report-signature", Reason.BAD_SIGNATURE),
    (abi.VMPL[0], "vmpl", "report-signature", Reason.BAD_SIGNATURE),
    (abi.SIGNATURE_ALGO[0], "signature_algo", "parse-report", Reason.BAD_FORMAT),
    (abi.FLAGS[0], "flags: author_key_en", "report-signature", Reason.BAD_SIGNATURE),
    (abi.RESERVED_04C[0], "reserved 0x4C", "parse-report", Reason.MUST_BE_ZERO),
    (abi.REPORT_DATA[0], "report_data", "report-signature", Reason.BAD_SIGNATURE),
    (abi.MEASUREMENT[0] + 47, "measurement", "report-signature", Reason.BAD_SIGNATURE),
    (abi.HOST_DATA[0], "host_data", "report-signature", Reason.BAD_SIGNATURE),
    (abi.REPORTED_TCB[0], "reported_tcb bootloader (trustee report[384])", "report-signature", Reason.BAD_SIGNATURE),
    (abi.CPUID_FAM_ID[0], "CPUID family in a v2 report (reserved)", "parse-report", Reason.MUST_BE_ZERO),
    (abi.CHIP_ID[0], "chip_id", "report-signature", Reason.BAD_SIGNATURE),
    (abi.COMMITTED_TCB[0], "committed_tcb", "report-signature", Reason.BAD_SIGNATURE),
    (abi.RESERVED_1EB[0], "reserved 0x1EB", "parse-report", Reason.MUST_BE_ZERO),
    (abi.LAUNCH_TCB[0] + 7, "launch_tcb microcode", "report-signature", Reason.BAD_SIGNATURE),
    (abi.SIGNED_SIZE - 1, "last reserved byte of the signed part", "parse-report", Reason.MUST_BE_ZERO),
    (abi.SIG_R[0], "signature r low byte", "report-signature", Reason.BAD_SIGNATURE),
    (abi.SIG_R[0] + 60, "signature r above 384 bits", "report-signature", Reason.BAD_SIGNATURE),
    (abi.SIG_S[0] + 47, "signature s high byte", "report-signature", Reason.BAD_SIGNATURE),
    (abi.SIG_RESERVED[0], "signature reserved", "parse-report", Reason.MUST_BE_ZERO),
]


@pytest.mark.parametrize("pos,field,step,reason", TABLE, ids=[f"0x{t[0]:03x}-{t[1].split()[0]}" for t in TABLE])
def test_tamper_table(real, pos, field, step, reason):
    report, vcek, opts = real
    v = run(tampered(report, pos), vcek, opts)
    assert not v.verified
    assert (v.error.step, v.error.reason) == (step, reason), field


def test_flags_signing_key_change_needs_a_vlek(real):
    report, vcek, opts = real
    b = bytearray(report)
    b[abi.FLAGS[0]] |= abi.SIGNING_KEY_VLEK << abi.FLAG_SIGNING_KEY_SHIFT
    v = run(bytes(b), vcek, opts)
    assert (v.error.step, v.error.reason) == ("find-endorsement", Reason.MISSING_ENDORSEMENT)


# Reasons a single-byte change may legitimately produce, by where it fails.
ALLOWED = {
    ("parse-report", Reason.MUST_BE_ZERO),
    ("parse-report", Reason.UNSUPPORTED_VERSION),
    ("parse-report", Reason.BAD_FORMAT),
    ("find-endorsement", Reason.MISSING_ENDORSEMENT),  # SIGNING_KEY bits now name a VLEK
    ("find-endorsement", Reason.BAD_SIGNATURE),  # SIGNING_KEY bits now name "no key"
    ("find-endorsement", Reason.WRONG_PRODUCT),  # version 2 -> 3: CPUID (zero) no longer matches
    ("report-signature", Reason.BAD_SIGNATURE),
}


def test_every_single_byte_change_is_rejected(real):
    """All 672 positions of the signed part and the 144 bytes of r and s, each +1 (mod 256)."""
    report, vcek, opts = real
    assert run(report, vcek, opts).verified
    positions = list(range(abi.SIGNED_SIZE)) + list(range(abi.SIG_R[0], abi.SIG_S[0] + abi.SIG_S[1]))
    outcomes = {}
    for pos in positions:
        v = run(tampered(report, pos), vcek, opts)
        assert not v.verified, f"byte 0x{pos:03x} changed and the report still verified"
        key = (v.error.step, v.error.reason)
        assert key in ALLOWED, (hex(pos), key)
        outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes[("report-signature", Reason.BAD_SIGNATURE)] > 600


def test_signature_covers_exactly_the_signed_part(real):
    """Changing the reserved tail of the signature field is a parse error, not a silent accept."""
    report, vcek, opts = real
    for pos in (abi.SIG_RESERVED[0], abi.REPORT_SIZE - 1):
        v = run(tampered(report, pos), vcek, opts)
        assert v.error.reason is Reason.MUST_BE_ZERO


def test_mask_chip_key_report_refused(real):
    report, vcek, opts = real
    b = bytearray(report)
    b[abi.FLAGS[0]] |= abi.FLAG_MASK_CHIP_KEY
    v = run(bytes(b), vcek, opts)
    assert (v.error.step, v.error.reason) == ("report-signature", Reason.BAD_SIGNATURE)


# -- property tests: parsers only ever raise ParseError --------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1300))
def test_parse_report_random_bytes(data):
    try:
        abi.parse_report(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, abi.REPORT_SIZE - 1), st.integers(0, 255), st.integers(0, abi.REPORT_SIZE))
def test_parse_report_mutated_and_truncated(pos, value, cut):
    base = bytearray(read(NAME, "test-report.bin"))
    base[pos] = value
    try:
        r = abi.parse_report(bytes(base[: cut if cut else None]))
    except ParseError as e:
        assert e.reason in set(Reason)
    else:
        assert r.raw == bytes(base)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_cert_parser_random_bytes(data):
    try:
        parse_cert(data)
    except ParseError:
        pass
    try:
        split_certs(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1359), st.integers(0, 255), st.integers(1, 1360))
def test_cert_parser_mutated_vcek(pos, value, cut):
    der = bytearray(read(NAME, "test-vcek.der"))
    der[pos] = value
    try:
        c = parse_cert(bytes(der[:cut]))
    except ParseError:
        return
    assert c.der == bytes(der[:cut])


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 1359), st.integers(0, 255))
def test_verifier_never_raises_on_mutated_vcek(pos, value):
    """The whole verifier, on a mutated endorsement: a failed Verification, never an exception."""
    der = bytearray(read(NAME, "test-vcek.der"))
    original = der[pos]
    der[pos] = value
    v = verify_evidence(Evidence(EvidenceType.SNP, read(NAME, "test-report.bin"), (bytes(der),)), VerifyOptions(now=ref_time(NAME)))
    if value != original:
        # a change in the signed TBS or the signature must break the chain; a change elsewhere
        # (outer algorithm identifier) too: a mutated certificate never verifies
        assert not v.verified
        assert isinstance(v.error, EvidenceError)
