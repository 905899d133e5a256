"""Azure SEV-SNP CVMs: the SNP report inside the HCL report verifies to the AMD root with its VCEK,
its REPORT_DATA binds the HCL runtime-data JSON, and the runtime claims are exposed; tamper table."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratls.errors import EvidenceError, ParseError, Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel import azure
from tests.vectors import read, ref_time

MILAN = "azure/trustee-az-snp-vtpm-milan"
GENOA = "azure/trustee-az-snp-vtpm-genoa"
#: vector -> (HCL report, VCEK file)
FILES = {MILAN: ("hcl-report.bin", "vcek.pem"), GENOA: ("hcl-report-genoa.bin", "vcek-genoa.pem")}


def run(name: str, hcl: bytes | None = None, report: bytes | None = None):
    hcl_file, vcek_file = FILES[name]
    hcl = read(name, hcl_file) if hcl is None else hcl
    report = read(name, hcl_file)[azure.HW_REPORT_OFFSET : azure.RUNTIME_HEADER_OFFSET] if report is None else report
    return verify_evidence(Evidence(EvidenceType.SNP, report, (hcl, read(name, vcek_file))), VerifyOptions(now=ref_time(name)))


def test_milan_hcl_report_verifies_with_runtime_claims():
    v = run(MILAN)
    assert v.verified, v.error
    c = v.claims
    # SOURCE.md [derived]: the embedded report and its binding
    assert c["x-ms-attestation-type"] == "sevsnpvm"
    assert c["x-ms-sevsnpvm-launchmeasurement"] == "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315"
    assert c["x-ms-sevsnpvm-guestsvn"] == 5
    assert c["x-ms-azurevm-runtime-data-hash"] == "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac"
    assert c["x-ms-sevsnpvm-reportdata"].startswith(c["x-ms-azurevm-runtime-data-hash"])
    assert c["x-ms-runtime-key-ids"][0] == "HCLAkPub"
    assert set(c["x-ms-runtime"]) == {"keys", "vm-configuration", "user-data"}
    assert c["x-ms-runtime-vm-configuration-secure-boot"] is True and c["x-ms-runtime-vm-configuration-tpm-enabled"] is True
    assert c["x-ms-runtime-vm-configuration-vmUniqueId"] == "911B0EF8-9DBA-48B0-B275-4E4DF2D39252"
    step = next(s for s in v.steps if s.name == "azure-hcl-report")
    assert step.ok and "SHA-256" in step.detail
    assert [s.name for s in v.steps][-1] == "azure-hcl-report"


def test_genoa_hcl_report_verifies():
    v = run(GENOA)
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-sevsnpvm-launchmeasurement"] == "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae"
    assert c["x-ms-azurevm-runtime-data-hash"] == "b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f"
    assert c["x-ms-runtime-vm-configuration-tpm-persisted"] is True


def test_snp_evidence_from_hcl_report():
    hcl = read(MILAN, "hcl-report.bin")
    report, endorsements = azure.snp_evidence(hcl, (b"vcek",))
    assert report == read(MILAN, "snp_report.bin") and endorsements == (hcl, b"vcek")


def test_inspect_takes_the_hcl_report(capsys):
    import json

    from ratls.cli import main
    from tests.vectors import vector_dir

    d = vector_dir(MILAN)
    rc = main(["inspect", str(d / "hcl-report.bin"), "--collateral", str(d / "vcek.pem"), "--at", "2024-01-01T00:00:00Z", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["evidence_type"] == "sev-snp"
    assert doc["claims"]["x-ms-azurevm-runtime-data-hash"].startswith("b3fbad65")


def _flip(offset: int):
    def f(b: bytearray) -> None:
        b[offset] ^= 0x01
    return f


def _put_u32(offset: int, value: int):
    def f(b: bytearray) -> None:
        b[offset : offset + 4] = value.to_bytes(4, "little")
    return f


RT = azure.RUNTIME_HEADER_OFFSET
SIG = azure.HW_REPORT_OFFSET + 0x2A0  # the report's signature, inside the HCL report's copy

#: (row, mutation of the HCL report, mutate the verified report the same way too, step, reason)
TAMPER = [
    # trustee test_verify_report_data: a byte of the runtime JSON
    ("runtime-json-byte", _flip(0x06E0), False, "azure-hcl-report", Reason.REPORT_DATA_MISMATCH),
    ("runtime-json-not-json", lambda b: b.__setitem__(azure.RUNTIME_DATA_OFFSET, ord("x")), False, "azure-hcl-report", Reason.BAD_ENCODING),
    ("report-type-tdx", _put_u32(RT + 8, azure.REPORT_TYPE_TDX), False, "azure-hcl-report", Reason.WRONG_PRODUCT),
    ("hash-type-sha384", _put_u32(RT + 12, 2), False, "azure-hcl-report", Reason.REPORT_DATA_MISMATCH),
    ("hash-type-unknown", _put_u32(RT + 12, 9), False, "azure-hcl-report", Reason.UNSUPPORTED_VERSION),
    ("variable-size-past-end", _put_u32(RT + 16, 100_000), False, "azure-hcl-report", Reason.TRUNCATED),
    ("magic", lambda b: b.__setitem__(0, ord("X")), False, None, None),  # no longer an HCL report: nothing bound
    # the HCL report carries another SNP report than the one verified
    ("hcl-copy-of-report", _flip(SIG + 1), False, "azure-hcl-report", Reason.REPORT_DATA_MISMATCH),
    # trustee test_verify_snp_report_failure: byte 0x01a6 of the HCL report, the report changed in both places
    ("report-byte", lambda b: b.__setitem__(0x01A6, 0), True, "report-signature", Reason.BAD_SIGNATURE),
    ("report-data-byte", _flip(azure.HW_REPORT_OFFSET + 0x50), True, "report-signature", Reason.BAD_SIGNATURE),
]


@pytest.mark.parametrize(("row", "mutate", "both", "step", "reason"), TAMPER, ids=[t[0] for t in TAMPER])
@pytest.mark.parametrize("name", [MILAN, GENOA])
def test_tampered_hcl_report_refused(name, row, mutate, both, step, reason):
    hcl = bytearray(read(name, FILES[name][0]))
    mutate(hcl)
    report = bytes(hcl[azure.HW_REPORT_OFFSET : azure.RUNTIME_HEADER_OFFSET]) if both else None
    v = run(name, bytes(hcl), report)
    if step is None:
        assert v.verified and "x-ms-runtime" not in v.claims and not any(s.name == "azure-hcl-report" for s in v.steps)
        return
    assert not v.verified
    assert (v.error.step, v.error.reason) == (step, reason)


def test_hcl_report_of_another_vm_refused():
    """Genoa's HCL report next to Milan's SNP report: its runtime data is not what Milan's report binds."""
    v = run(MILAN, hcl=read(GENOA, "hcl-report-genoa.bin"))
    assert (v.error.step, v.error.reason) == ("azure-hcl-report", Reason.REPORT_DATA_MISMATCH)


def test_snp_hcl_report_with_a_td_quote_refused():
    name = "azure/trustee-az-tdx-vtpm"
    v = verify_evidence(Evidence(EvidenceType.TDX, read(name, "td-quote.bin"), (read(MILAN, "hcl-report.bin"),)), VerifyOptions(now=ref_time(name)))
    assert (v.error.step, v.error.reason) == ("azure-hcl-report", Reason.WRONG_PRODUCT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=2700))
def test_hcl_parser_and_binding_raise_only_typed_errors(pos, byte, cut):
    """Any mutation or truncation of a real HCL report: a result or our typed error, nothing else."""
    hcl = bytearray(read(MILAN, "hcl-report.bin"))
    hcl[pos % len(hcl)] = byte
    data = bytes(hcl[:cut])
    report = read(MILAN, "snp_report.bin")
    try:
        azure.check_hcl(data, report_type=azure.REPORT_TYPE_SNP, report_data=report[0x50:0x90], hw_report=report)
    except EvidenceError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1400))
def test_hcl_parser_on_any_bytes(data):
    try:
        azure.parse_hcl_report(azure.HCL_MAGIC + data)
    except ParseError:
        pass
