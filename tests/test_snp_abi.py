"""The report layout itself: named offsets tile the structure, version-specific fields and checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ratls import sim
from ratls.errors import ParseError, Reason
from ratls.evidence import VerifyOptions, verify_evidence
from ratls.snp import abi
from tests.vectors import read

NOW = datetime(2026, 3, 1, tzinfo=UTC)

# Every field of the v5 layout in order; together they must cover [0, 0x4A0) exactly once.
LAYOUT_V5 = [
    abi.VERSION, abi.GUEST_SVN, abi.POLICY, abi.FAMILY_ID, abi.IMAGE_ID, abi.VMPL, abi.SIGNATURE_ALGO, abi.CURRENT_TCB,
    abi.PLATFORM_INFO, abi.FLAGS, abi.RESERVED_04C, abi.REPORT_DATA, abi.MEASUREMENT, abi.HOST_DATA, abi.ID_KEY_DIGEST,
    abi.AUTHOR_KEY_DIGEST, abi.REPORT_ID, abi.REPORT_ID_MA, abi.REPORTED_TCB, abi.CPUID_FAM_ID, abi.CPUID_MOD_ID,
    abi.CPUID_STEP, abi.RESERVED_18B, abi.CHIP_ID, abi.COMMITTED_TCB, abi.CURRENT_BUILD, abi.CURRENT_MINOR,
    abi.CURRENT_MAJOR, abi.RESERVED_1EB, abi.COMMITTED_BUILD, abi.COMMITTED_MINOR, abi.COMMITTED_MAJOR,
    abi.RESERVED_1EF, abi.LAUNCH_TCB, abi.LAUNCH_MIT_VECTOR, abi.CURRENT_MIT_VECTOR, abi.RESERVED_TAIL_V5,
    abi.SIG_R, abi.SIG_S, abi.SIG_RESERVED,
]  # fmt: skip


def test_named_offsets_tile_the_report():
    pos = 0
    for off, size in LAYOUT_V5:
        assert off == pos, hex(off)
        pos += size
    assert pos == abi.REPORT_SIZE == 1184
    assert abi.SIGNATURE[0] == abi.SIGNED_SIZE == 0x2A0
    assert abi.SIG_S[0] == 0x2E8


@pytest.fixture(scope="module")
def auth():
    return sim.SimAuthority.generate(now=NOW)


def test_v5_report_parses_and_verifies(auth):
    ev = auth.report(b"v5", version=5, mit_vectors=(0x3, 0x7))
    r = abi.parse_report(ev.data)
    assert r.version == 5 and (r.launch_mit_vector, r.current_mit_vector) == (3, 7)
    v = verify_evidence(ev, VerifyOptions(now=NOW + timedelta(days=1), sim_root=auth.root_der))
    assert v.verified, v.error
    assert v.claims["x-ms-sevsnpvm-report-version"] == 5


def test_mitigation_vector_bytes_are_reserved_before_v5(auth):
    data = bytearray(auth.report(b"v3").data)
    data[abi.LAUNCH_MIT_VECTOR[0]] = 1
    with pytest.raises(ParseError) as ei:
        abi.parse_report(bytes(data))
    assert ei.value.reason is Reason.MUST_BE_ZERO
    assert abi.parse_report(auth.report(b"v3").data).launch_mit_vector is None


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_versions(version):
    data = bytearray(read("snp/virtee-milan-v2", "report_milan.bin"))
    abi.put(data, abi.VERSION, version)
    with pytest.raises(ParseError) as ei:
        abi.parse_report(bytes(data))
    assert ei.value.reason is Reason.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    "field,value,reason",
    [
        (abi.SIGNATURE_ALGO, 2, Reason.BAD_FORMAT),
        (abi.VMPL, 4, Reason.BAD_FORMAT),
        (abi.FLAGS, 1 << 5, Reason.MUST_BE_ZERO),
        (abi.POLICY, 0x0, Reason.BAD_FORMAT),  # reserved bit 17 must be one
    ],
)
def test_field_checks(field, value, reason):
    data = bytearray(read("snp/virtee-milan-v2", "report_milan.bin"))
    abi.put(data, field, value)
    with pytest.raises(ParseError) as ei:
        abi.parse_report(bytes(data))
    assert ei.value.reason is reason


def test_sizes():
    good = read("snp/virtee-milan-v2", "report_milan.bin")
    with pytest.raises(ParseError) as ei:
        abi.parse_report(good[:-1])
    assert ei.value.reason is Reason.TRUNCATED
    with pytest.raises(ParseError) as ei:
        abi.parse_report(good + b"\0")
    assert ei.value.reason is Reason.BAD_FORMAT
    with pytest.raises(ParseError):
        abi.parse_report("not bytes")  # type: ignore[arg-type]


def test_policy_and_flag_accessors():
    r = abi.parse_report(read("snp/gsg-milan-v2-noidblock", "attestation.bin"))
    assert r.debug and r.policy & abi.POLICY_SMT and not r.policy & abi.POLICY_MIGRATE_MA
    assert (r.abi_major, r.abi_minor) == (0, 0)
    assert not r.author_key_en and not r.mask_chip_key and r.signing_key == abi.SIGNING_KEY_VCEK
