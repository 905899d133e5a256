"""Azure TDX CVM: the HCL report's runtime data is bound to the TD quote and exposed as claims."""

from __future__ import annotations

import pytest

from ratls.errors import ParseError, Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.azure import parse_hcl_report
from tests.vectors import read, ref_time

AZ = "azure/trustee-az-tdx-vtpm"


def run(hcl: bytes):
    return verify_evidence(Evidence(EvidenceType.TDX, read(AZ, "td-quote.bin"), (hcl,)), VerifyOptions(now=ref_time(AZ)))


def test_hcl_runtime_data_bound_and_exposed():
    v = run(read(AZ, "hcl-report.bin"))
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-azurevm-runtime-data-hash"] == "9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839"
    assert c["x-ms-runtime-key-ids"][0] == "HCLAkPub"
    assert set(c["x-ms-runtime"]) == {"keys", "vm-configuration", "user-data"}
    assert isinstance(c["x-ms-runtime-vm-configuration-secure-boot"], bool)
    assert next(s for s in v.steps if s.name == "azure-hcl-report").ok


def test_hcl_mutation_refused():
    """trustee's test_verify_hcl_var_data: mutating byte 0x0880 breaks the binding."""
    hcl = bytearray(read(AZ, "hcl-report.bin"))
    hcl[0x0880] ^= 0x01
    v = run(bytes(hcl))
    assert (v.error.step, v.error.reason) == ("azure-hcl-report", Reason.REPORT_DATA_MISMATCH)


def test_hcl_truncated():
    with pytest.raises(ParseError) as e:
        parse_hcl_report(read(AZ, "hcl-report.bin")[:1300])
    assert e.value.reason is Reason.TRUNCATED
    v = run(read(AZ, "hcl-report.bin")[:1300])
    assert (v.error.step, v.error.reason) == ("azure-hcl-report", Reason.TRUNCATED)
