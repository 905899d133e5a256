"""Parsers on truncated, random and mutated bytes: a result or our typed error, never another exception."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratls.errors import EvidenceError, ParseError, Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.pck import parse_sgx_extension
from ratls.intel.quote import parse_quote
from ratls.intel.tcb import TcbStatus
from tests.vectors import read

QUOTES = [
    ("tdx/gtg-emr-v5-tdx15", "quote_v5_sample.dat"),
    ("tdx/trustee-gnr-v4-tcbinfo", "tdx_quote_6.dat"),
    ("sgx/trustee-occlum-icx-v3", "occlum_quote.dat"),
]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_truncation_is_a_named_error():
    for name, file in QUOTES:
        raw = read(name, file)
        end = len(raw) - parse_quote(raw).trailing
        for cut in range(0, end, 7):
            try:
                parse_quote(raw[:cut])
            except ParseError as e:
                assert e.reason in (Reason.TRUNCATED, Reason.BAD_FORMAT)
            else:
                raise AssertionError(f"{name}: a quote cut at {cut} of {end} bytes parsed")


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    try:
        parse_quote(data)
    except ParseError:
        pass


@FUZZ
@given(st.sampled_from(QUOTES), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_quotes_parse_or_fail_typed_and_verify_never_raises(vec, pos, byte):
    raw = bytearray(read(*vec))
    raw[pos % len(raw)] = byte
    try:
        parse_quote(bytes(raw))
    except ParseError:
        pass
    kind = EvidenceType.SGX if vec[0].startswith("sgx") else EvidenceType.TDX
    v = verify_evidence(Evidence(kind, bytes(raw)), VerifyOptions(now=datetime(2025, 11, 1, tzinfo=UTC)))
    assert v.error is None or isinstance(v.error, EvidenceError)


@FUZZ
@given(st.binary(max_size=300))
def test_sgx_extension_random(data):
    try:
        parse_sgx_extension(data)
    except ParseError:
        pass


def test_status_merge_and_severity():
    S = TcbStatus
    assert S.UP_TO_DATE.merge(S.SW_HARDENING_NEEDED) is S.SW_HARDENING_NEEDED
    assert S.OUT_OF_DATE.merge(S.CONFIGURATION_NEEDED) is S.OUT_OF_DATE_CONFIGURATION_NEEDED
    assert S.CONFIGURATION_AND_SW_HARDENING_NEEDED.merge(S.OUT_OF_DATE) is S.OUT_OF_DATE_CONFIGURATION_NEEDED
    assert S.REVOKED.merge(S.UP_TO_DATE) is S.REVOKED
    assert S.parse("SomethingNew") is S.UNKNOWN
    assert sorted(S, key=lambda s: s.severity)[0] is S.UP_TO_DATE


@FUZZ
@given(st.integers(min_value=0, max_value=1), st.integers(min_value=0), st.binary(min_size=1, max_size=8))
def test_mutated_collateral_through_verify_never_raises(which, pos, junk):
    name = "tdx/trustee-gnr-v4-tcbinfo"
    col = [read(name, "tcbInfo.json"), read(name, "enclaveIdentity.json")]
    b = col[which]
    p = pos % len(b)
    col[which] = b[:p] + junk + b[p + len(junk) :]
    v = verify_evidence(Evidence(EvidenceType.TDX, read(name, "tdx_quote_6.dat"), tuple(col)), VerifyOptions(now=datetime(2025, 11, 1, tzinfo=UTC)))
    assert v.error is None or isinstance(v.error, EvidenceError)
    if v.error is None:
        # still verifying: either the signed bytes are intact, or the item was no longer recognised
        # as collateral at all (then there is nothing to rank the TCB against)
        assert v.claims["tcb-status"] in ("OutOfDate", "Unknown")
