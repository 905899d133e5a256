"""Every TDX and SGX vector in ../shared/evidence verifies at its reference time with its SOURCE.md facts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ratls.errors import Reason
from ratls.evidence import DictGetter, Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.quote import parse_quote
from ratls.policy import Policy
from tests.vectors import read, ref_time

#: vector -> (quote file, collateral files given as endorsements)
VECTORS = {
    "tdx/gtg-emr-v5-tdx15": ("quote_v5_sample.dat", ["sample_tcbinfo_response_v5.json"]),
    "tdx/gtg-gcp-spr-v4-ccel": ("cos-113-tdx-quote.dat", []),
    "tdx/gtg-spr-v4-collateral": (
        "tdx_prod_quote_SPR_E4.dat",
        ["sample_tcbInfo_response.json", "sample_qeIdentity_response.json", "pckcrl.der", "rootcrl.der", "tcb_info_issuer_chain.pem"],
    ),
    "tdx/trustee-gnr-v4-tcbinfo": ("tdx_quote_6.dat", ["tcbInfo.json", "enclaveIdentity.json"]),
    "tdx/trustee-spr-v4-claims": ("tdx_quote_4.dat", []),
    "azure/trustee-az-tdx-vtpm": ("td-quote.bin", []),
    "sgx/mobilecoin-cfl-v3-collateral": (
        "hw_quote.dat",
        ["tcb_info_fmspc_00906ED50000_2023_07_12.json", "qe_identity.json", "root_crl.der", "processor_crl.der", "tcb_signer.pem"],
    ),
    "sgx/trustee-occlum-icx-v3": ("occlum_quote.dat", []),
}


def evidence(name: str, files: list[str] | None = None) -> Evidence:
    qf, cf = VECTORS[name]
    kind = EvidenceType.SGX if name.startswith("sgx/") else EvidenceType.TDX
    return Evidence(kind, read(name, qf), tuple(read(name, f) for f in (cf if files is None else files)))


def verify(name: str, **kw):
    return verify_evidence(evidence(name), VerifyOptions(now=kw.pop("now", ref_time(name)), **kw))


def test_emr_v5_tdx15():
    v = verify("tdx/gtg-emr-v5-tdx15")
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-attestation-type"] == "tdxvm"
    assert c["x-ms-tdxvm-quote-version"] == 5
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "0b010400000000000000000000000000"
    assert c["x-ms-tdxvm-tee-tcb-svn2"] == "0d010400000000000000000000000000"
    assert c["x-ms-tdxvm-mrseam"].startswith("7bf063280e94fb051f5dd7b1fc59ce9a")
    assert c["x-ms-tdxvm-tdattributes"] == "0000001000000000"
    assert c["x-ms-tdxvm-xfam"] == "e702060000000000"
    assert c["x-ms-tdxvm-mrtd"] == "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"
    assert c["x-ms-tdxvm-rtmr0"].startswith("5c8daf76063a71ac")
    assert c["x-ms-tdxvm-rtmr3"] == "00" * 48
    assert c["x-ms-tdxvm-reportdata"].startswith("945eaacf5abc1f71")
    assert c["pck-fmspc"] == "90c06f000000" and c["pck-pcesvn"] == 13
    assert c["tcb-status"] == "UpToDate" and c["tcb-date"].startswith("2024-11-13")
    assert c["crl-checked"] is False and c["collateral-stale"] is False
    assert c["x-ms-tdxvm-is-debuggable"] is False


def test_gcp_spr_v4_no_collateral_is_unknown():
    v = verify("tdx/gtg-gcp-spr-v4-ccel")
    assert v.verified, v.error
    c = v.claims
    assert c["tcb-status"] == "Unknown"
    assert c["x-ms-tdxvm-rtmr0"] == "3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6"
    assert c["x-ms-tdxvm-mrtd"].startswith("dae67181d3d65e07")
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "04010700000000000000000000000000"
    assert c["x-ms-tdxvm-reportdata"] == read("tdx/gtg-gcp-spr-v4-ccel", "nonce.dat").hex()
    assert c["pck-fmspc"] == "00806f050000"
    step = next(s for s in v.steps if s.name == "tcb-level-match")
    assert "Unknown" in step.detail
    # the implicit policy rules refuse a TCB status that is not UpToDate (under both of its names)
    # unless the policy names it
    pol = Policy.from_mapping({"x-ms-attestation-type": "tdxvm"})
    failed = {r.claim for r in pol.evaluate({**c, "evidence-age-seconds": 0}).failed}
    assert failed == {"tcb-status", "attester_tcb_status", "crl-checked", "qe-identity-checked"}
    # no collateral at all: each unchecked part is admitted only by naming it
    unchecked = {"tcb-status": ["UpToDate", "Unknown"], "crl-checked": False, "qe-identity-checked": False}
    assert Policy.from_mapping({"x-ms-attestation-type": "tdxvm", **unchecked}).evaluate({**c, "evidence-age-seconds": 0}).ok


def test_spr_v4_full_collateral_matches_no_tcb_level():
    v = verify("tdx/gtg-spr-v4-collateral")
    assert not v.verified
    assert v.error.reason is Reason.TCB_LEVEL_NOT_FOUND
    assert v.error.step == "tcb-level-match"
    ok = {s.name for s in v.steps if s.ok}
    assert {"quote-signature", "qe-report-signature", "qe-report-data", "pck-chain", "crl-revocation", "tcb-info-signature", "qe-identity-signature", "qe-identity-match"} <= ok


def test_spr_v4_facts_without_tcb_info():
    name = "tdx/gtg-spr-v4-collateral"
    ev = evidence(name, ["sample_qeIdentity_response.json", "pckcrl.der", "rootcrl.der"])
    v = verify_evidence(ev, VerifyOptions(now=ref_time(name)))
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-tdxvm-mrseam"] == "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "03000400000000000000000000000000"
    assert c["x-ms-tdxvm-tdattributes"] == "0000004000000000" and c["x-ms-tdxvm-is-debuggable"] is False
    assert c["x-ms-tdxvm-xfam"] == "e71a060000000000"
    assert c["x-ms-tdxvm-mrtd"] == "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
    assert c["x-ms-tdxvm-rtmr2"] == "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e"
    assert c["x-ms-tdxvm-mrconfigid"] == c["x-ms-tdxvm-mrowner"] == c["x-ms-tdxvm-mrownerconfig"] == "00" * 48
    assert c["pck-pcesvn"] == 11 and c["pck-cpusvn"].startswith("0303020202010002")
    assert c["qe-svn"] == 4 and c["crl-checked"] is True
    assert c["tcb-status"] == "Unknown"


def test_spr_v4_trailing_bytes_accepted():
    q = parse_quote(read("tdx/gtg-spr-v4-collateral", "tdx_prod_quote_SPR_E4.dat"))
    assert q.trailing == 39


def test_gnr_v4_out_of_date():
    v = verify("tdx/trustee-gnr-v4-tcbinfo")
    assert v.verified, v.error
    c = v.claims
    assert c["tcb-status"] == "OutOfDate"
    assert c["tcb-date"].startswith("2018-01-04")
    assert c["x-ms-tdxvm-mrtd"].startswith("21e8dead92d6c69d")
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "05030200000000000000000000000000"
    assert c["pck-fmspc"] == "00a06d080000" and c["pck-pcesvn"] == 11
    assert c["qe-svn"] == 7


def test_gnr_v4_stale_after_next_update():
    name = "tdx/trustee-gnr-v4-tcbinfo"
    v = verify(name, now=ref_time(name) + timedelta(days=40))
    assert v.verified, v.error
    assert v.claims["collateral-stale"] is True
    assert v.claims["collateral-next-update"].startswith("2025-11-26T13:07:17")
    assert any("nextUpdate" in s for s in v.claims["collateral-stale-items"])


def test_spr_v4_debug_td_refused_by_policy():
    v = verify("tdx/trustee-spr-v4-claims")
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-tdxvm-is-debuggable"] is True
    assert c["x-ms-tdxvm-tdattributes"] == "0100001000000000"
    assert c["x-ms-tdxvm-mrtd"] == "705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031"
    assert c["x-ms-tdxvm-rtmr1"].startswith("559cfcf42716ed6c")
    assert c["x-ms-tdxvm-reportdata"].startswith("7c71fe2c86eff65a")
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "03000500000000000000000000000000"
    pol = Policy.from_mapping({"x-ms-tdxvm-mrtd": c["x-ms-tdxvm-mrtd"], "tcb-status": "Unknown"})
    res = pol.evaluate({**c, "evidence-age-seconds": 0})
    assert not res.ok
    assert any(r.claim == "x-ms-tdxvm-is-debuggable" for r in res.failed)
    # refused under each of its names: Azure's EAT profile ones too (tests/test_azure_eat_claims.py)
    assert {r.claim for r in res.failed} == {"x-ms-tdxvm-is-debuggable", "tdx_td_attributes_debug", "dbgstat", "crl-checked", "qe-identity-checked"}


def test_azure_td_quote():
    v = verify("azure/trustee-az-tdx-vtpm")
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-tdxvm-mrtd"] == "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b"
    assert c["x-ms-tdxvm-tee-tcb-svn"] == "02010600000000000000000000000000"
    assert c["x-ms-tdxvm-reportdata"].startswith("9734504f161d104c74e3165c15f779b06a9bb40dfa71937817d7eee68e593839")
    assert all(c[f"x-ms-tdxvm-rtmr{i}"] == "00" * 48 for i in range(4))


def test_mobilecoin_sgx_sw_hardening_with_stale_crl():
    v = verify("sgx/mobilecoin-cfl-v3-collateral")
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-attestation-type"] == "sgx"
    assert c["x-ms-sgx-mrsigner"] == "9f06df5ca79a23ffdfb6ca0ec85514e21dd1cbd1ed11abc45dbe8dc894efdddf"
    assert c["x-ms-sgx-product-id"] == 0 and c["x-ms-sgx-svn"] == 0
    assert c["x-ms-sgx-attributes"] == "05000000000000000700000000000000"
    assert c["x-ms-sgx-is-debuggable"] is False
    assert c["x-ms-sgx-report-data"] == "00" * 64
    assert c["tcb-status"] == "SWHardeningNeeded"
    assert c["advisory-ids"] == ["INTEL-SA-00334", "INTEL-SA-00615"]
    assert c["tcb-date"].startswith("2023-02-15")
    assert c["pck-fmspc"] == "00906ed50000" and c["qe-svn"] == 9
    # SOURCE.md: the processor CRL is past its nextUpdate at the golden time: reported, not hidden
    assert c["collateral-stale"] is True and c["crl-checked"] is True
    assert any("PCK CRL" in s for s in c["collateral-stale-items"])


def test_occlum_debug_enclave_refused_by_policy():
    v = verify("sgx/trustee-occlum-icx-v3")
    assert v.verified, v.error
    c = v.claims
    assert c["x-ms-sgx-mrenclave"] == "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    assert c["x-ms-sgx-mrsigner"] == "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
    assert c["x-ms-sgx-report-data"] == "74657374" + "00" * 60
    assert c["x-ms-sgx-is-debuggable"] is True
    assert c["x-ms-sgx-miscselect"] == "01000000"
    assert c["pck-fmspc"] == "00606a000000"
    pol = Policy.from_mapping({"x-ms-sgx-mrenclave": c["x-ms-sgx-mrenclave"], "tcb-status": "Unknown", "crl-checked": False, "qe-identity-checked": False})
    res = pol.evaluate({**c, "evidence-age-seconds": 0})
    assert [r.claim for r in res.failed] == ["x-ms-sgx-is-debuggable"]


def test_collateral_from_getter_equals_endorsements():
    name = "tdx/trustee-gnr-v4-tcbinfo"
    getter = DictGetter({"tcbinfo/tdx/00a06d080000": read(name, "tcbInfo.json"), "qeidentity/tdx": read(name, "enclaveIdentity.json")})
    ev = Evidence(EvidenceType.TDX, read(name, "tdx_quote_6.dat"))
    v = verify_evidence(ev, VerifyOptions(now=ref_time(name), collateral=getter))
    assert v.verified and v.claims["tcb-status"] == "OutOfDate"


def test_wrong_evidence_type_refused():
    name = "sgx/trustee-occlum-icx-v3"
    v = verify_evidence(Evidence(EvidenceType.TDX, read(name, "occlum_quote.dat")), VerifyOptions(now=ref_time(name)))
    assert not v.verified and v.error.step == "parse-quote"


@pytest.mark.parametrize("years", [30])
def test_chain_expired_far_future(years):
    name = "tdx/gtg-gcp-spr-v4-ccel"
    v = verify(name, now=ref_time(name) + timedelta(days=365 * years))
    assert v.error.reason is Reason.CERT_EXPIRED and v.error.step == "pck-chain"


def test_tcb_signing_cert_reissue_needed_after_2025():
    """The emr v5 TCB info at 2026 verifies only with the re-issued TCB Signing cert (shipped pinned)."""
    name = "tdx/gtg-emr-v5-tdx15"
    chain_2018 = read(name, "tcb_info_issuer_chain_2018.pem")
    v = verify_evidence(Evidence(EvidenceType.TDX, read(name, "quote_v5_sample.dat"), (read(name, "sample_tcbinfo_response_v5.json"), chain_2018)), VerifyOptions(now=ref_time(name)))
    assert v.verified and v.claims["tcb-status"] == "UpToDate"


def test_emr_default_policy_refuses_unchecked_revocation_and_qe_identity():
    """The auditor's case: TCB info only (no CRLs, no QE identity) must not pass a type-only policy."""
    v = verify("tdx/gtg-emr-v5-tdx15")
    assert v.verified, v.error
    c = {**v.claims, "evidence-age-seconds": 0}
    assert c["crl-checked"] is False and c["qe-identity-checked"] is False
    res = Policy.from_mapping({"x-ms-attestation-type": "tdxvm"}).evaluate(c)
    failed = {r.claim: r for r in res.failed}
    assert set(failed) == {"crl-checked", "qe-identity-checked"}
    assert all(r.implicit and "in the policy to admit it" in r.note for r in failed.values())
    # admitted by name, one at a time
    assert [r.claim for r in Policy.from_mapping({"x-ms-attestation-type": "tdxvm", "crl-checked": False}).evaluate(c).failed] == ["qe-identity-checked"]
    assert Policy.from_mapping({"x-ms-attestation-type": "tdxvm", "crl-checked": False, "qe-identity-checked": False}).evaluate(c).ok


def test_qe_identity_checked_when_matched():
    """The GNR vector's QE identity is matched by our step; the SGX capture's CRLs and QE identity too."""
    assert verify("tdx/trustee-gnr-v4-tcbinfo").claims["qe-identity-checked"] is True
    c = verify("sgx/mobilecoin-cfl-v3-collateral").claims
    assert c["qe-identity-checked"] is True and c["crl-checked"] is True
