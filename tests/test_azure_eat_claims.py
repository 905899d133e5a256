"""Azure Attestation's claim names for TDX (its EAT profile) and SGX, next to ratls's aliases.

The real TDX vectors yield the Azure EAT profile names with the values their SOURCE.md gives and
with the same bytes as the ``x-ms-tdxvm-*`` aliases; a policy in Azure's format admits the right
vector and names the claim it refuses; the debug and TCB-status defaults treat the aliases as one
decision. SGX claim names and value types are checked against a real Azure Attestation SGX token.
"""

from __future__ import annotations

import base64
import itertools
import json

import pytest

from ratls.evidence import VerifyOptions, verify_evidence
from ratls.policy import Policy, is_debug_claim
from tests.dcap_pki import DcapTestPki
from tests.test_intel_vectors import evidence, verify
from tests.vectors import read, ref_time

#: Azure EAT profile name -> ratls alias (same value, same bytes)
ALIASES = {
    "tdx_mrtd": "x-ms-tdxvm-mrtd",
    "tdx_rtmr0": "x-ms-tdxvm-rtmr0",
    "tdx_rtmr1": "x-ms-tdxvm-rtmr1",
    "tdx_rtmr2": "x-ms-tdxvm-rtmr2",
    "tdx_rtmr3": "x-ms-tdxvm-rtmr3",
    "tdx_mrseam": "x-ms-tdxvm-mrseam",
    "tdx_mrsignerseam": "x-ms-tdxvm-mrsignerseam",
    "tdx_mrconfigid": "x-ms-tdxvm-mrconfigid",
    "tdx_mrowner": "x-ms-tdxvm-mrowner",
    "tdx_mrownerconfig": "x-ms-tdxvm-mrownerconfig",
    "tdx_report_data": "x-ms-tdxvm-reportdata",
    "tdx_td_attributes": "x-ms-tdxvm-tdattributes",
    "tdx_td_attributes_debug": "x-ms-tdxvm-is-debuggable",
    "tdx_tee_tcb_svn": "x-ms-tdxvm-tee-tcb-svn",
    "tdx_xfam": "x-ms-tdxvm-xfam",
    "attester_tcb_status": "tcb-status",
    "attester_advisory_ids": "advisory-ids",
}
#: hex claims of the profile -> byte length
HEX_BYTES = {
    **{k: 48 for k in ("tdx_mrtd", "tdx_mrseam", "tdx_mrsignerseam", "tdx_mrconfigid", "tdx_mrowner", "tdx_mrownerconfig")},
    **{f"tdx_rtmr{i}": 48 for i in range(4)},
    "tdx_report_data": 64,
    "tdx_seam_attributes": 8,
    "tdx_td_attributes": 8,
    "tdx_xfam": 8,
    "tdx_tee_tcb_svn": 16,
}
BITS = ("debug", "septve_disable", "protection_keys", "key_locker", "perfmon")
DEBUG_CLAIMS = ("x-ms-tdxvm-is-debuggable", "tdx_td_attributes_debug", "dbgstat")
AGE = {"evidence-age-seconds": 0}


def tdx_vector_claims(name: str) -> dict:
    if name == "tdx/gtg-spr-v4-collateral":  # its TCB info matches no level (SOURCE.md): verified without it
        ev = evidence(name, ["sample_qeIdentity_response.json", "pckcrl.der", "rootcrl.der"])
        v = verify_evidence(ev, VerifyOptions(now=ref_time(name)))
    else:
        v = verify(name)
    assert v.verified, v.error
    return v.claims


TDX_VECTORS = ["tdx/gtg-emr-v5-tdx15", "tdx/gtg-gcp-spr-v4-ccel", "tdx/gtg-spr-v4-collateral", "tdx/trustee-gnr-v4-tcbinfo", "tdx/trustee-spr-v4-claims", "azure/trustee-az-tdx-vtpm"]


@pytest.fixture(scope="module")
def vectors() -> dict[str, dict]:
    return {name: tdx_vector_claims(name) for name in TDX_VECTORS}


# --------------------------------------------------------------------------- names and values


@pytest.mark.parametrize("name", TDX_VECTORS)
def test_azure_names_carry_the_alias_values(vectors, name):
    c = vectors[name]
    assert c["x-ms-attestation-type"] == "tdxvm"
    for azure, alias in ALIASES.items():
        assert c[azure] == c[alias], azure
    for claim, n in HEX_BYTES.items():
        v = c[claim]
        assert isinstance(v, str) and len(v) == 2 * n and v == v.lower() and bytes.fromhex(v), claim
    attrs = int.from_bytes(bytes.fromhex(c["tdx_td_attributes"]), "little")
    for flag, bit in zip(BITS, (0, 28, 30, 31, 63), strict=True):
        assert c[f"tdx_td_attributes_{flag}"] is bool(attrs >> bit & 1), flag
    svn = bytes.fromhex(c["tdx_tee_tcb_svn"])
    assert type(c["tdx_seamsvn"]) is int and c["tdx_seamsvn"] == svn[1] << 8 | svn[0]
    assert c["dbgstat"] == ("enabled" if c["tdx_td_attributes_debug"] else "disabled")
    assert isinstance(c["attester_advisory_ids"], list)


def test_emr_v5_source_facts(vectors):
    c = vectors["tdx/gtg-emr-v5-tdx15"]
    assert c["tdx_mrtd"] == "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"
    assert c["tdx_rtmr0"] == "5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619"
    assert c["tdx_rtmr1"] == "463acaace1b6e97c76e92e41fe312aa66f3fd4dad60ec7acf169859db0343e3d1e591646795cdc80fbc0ca5f7041d253"
    assert c["tdx_rtmr2"] == "6369b9c9a3b791ebcbdc5a0bb9536cfb57f50df2b393b33c8b29616d3568baa61f4b59dc6092e31ea8764bcbdfc69f20"
    assert c["tdx_rtmr3"] == c["tdx_mrconfigid"] == c["tdx_mrowner"] == c["tdx_mrownerconfig"] == "00" * 48
    assert c["tdx_mrseam"] == "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d"
    assert c["tdx_report_data"] == (
        "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a"
    )
    assert c["tdx_tee_tcb_svn"] == "0b010400000000000000000000000000" and c["tdx_seamsvn"] == 0x010B
    assert c["tdx_td_attributes"] == "0000001000000000" and c["tdx_xfam"] == "e702060000000000"
    assert c["tdx_td_attributes_septve_disable"] is True
    assert not any(c[f"tdx_td_attributes_{f}"] for f in ("debug", "protection_keys", "key_locker", "perfmon"))
    assert c["attester_tcb_status"] == "UpToDate" and c["dbgstat"] == "disabled"


def test_gcp_spr_v4_source_facts(vectors):
    c = vectors["tdx/gtg-gcp-spr-v4-ccel"]
    assert c["tdx_rtmr0"] == "3fa2f61f395b7f5feefb4ec2df61297f109ad8abcd6410c1b7df60f21f37b19297fc35e544039c7e1edece752afd17f6"
    assert c["tdx_rtmr1"] == "f62dbc072bd5d3f3438b7b35c39a727f5aea2ffc2473f43723953f530daf62504f0a7944aa62c41a86e8a878c2b122c1"
    assert c["tdx_rtmr2"] == "4969684dc87381fc3b3134176c8d8806eaf0a901859f5f70cfae8d17714b46c10a8de219048c9fc09f11f381a6fbe7c1"
    assert c["tdx_mrtd"] == "dae67181d3d65e073ad8f95b7907d5e927bfe9761c9ff3e9b89734a45d8954dba41394c7717cb2735396c1d04231f94a"
    assert c["tdx_mrseam"] == "ffc97a88587660fb04e1f7c851300c96ae0b5a463ac46d035d16c2d9f36d0ed1d23775bcbd27deb219e3a3cc28023895"
    assert c["tdx_tee_tcb_svn"] == "04010700000000000000000000000000" and c["tdx_seamsvn"] == 0x0104
    assert c["tdx_td_attributes"] == "0000001000000000" and c["tdx_xfam"] == "e700060000000000"
    assert c["tdx_report_data"] == read("tdx/gtg-gcp-spr-v4-ccel", "nonce.dat").hex()
    assert c["attester_tcb_status"] == "Unknown"


def test_spr_v4_source_facts(vectors):
    """Same TDX module as Azure's sample TDX token (MRSEAM 2fd279c1..., TEE_TCB_SVN 03 00 ..., seamsvn 3)."""
    c = vectors["tdx/gtg-spr-v4-collateral"]
    assert c["tdx_mrseam"] == "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"
    assert c["tdx_tee_tcb_svn"] == "03000400000000000000000000000000" and c["tdx_seamsvn"] == 3
    assert c["tdx_td_attributes"] == "0000004000000000"
    assert c["tdx_td_attributes_protection_keys"] is True  # bit 30 (SOURCE.md: PKS set)
    assert c["tdx_td_attributes_debug"] is False and c["tdx_td_attributes_septve_disable"] is False
    assert c["tdx_xfam"] == "e71a060000000000"
    assert c["tdx_mrtd"] == "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
    assert c["tdx_rtmr0"] == "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a"
    assert c["tdx_rtmr1"] == "2c700b8ba9b85783f8be9fb9443647bdc0bb3c50747f06297cc6538c25a5f589c4b56d035c59107c6bc5800db2cacb61"
    assert c["tdx_rtmr2"] == "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e"
    assert c["tdx_rtmr3"] == c["tdx_mrconfigid"] == c["tdx_mrowner"] == c["tdx_mrownerconfig"] == "00" * 48
    assert c["tdx_report_data"] == (
        "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
    )


def test_gnr_v4_source_facts(vectors):
    c = vectors["tdx/trustee-gnr-v4-tcbinfo"]
    assert c["tdx_mrtd"].startswith("21e8dead92d6c69d") and c["tdx_report_data"].startswith("26cae1c77185617f")
    assert c["tdx_tee_tcb_svn"] == "05030200000000000000000000000000" and c["tdx_seamsvn"] == 0x0305
    assert c["attester_tcb_status"] == "OutOfDate"


def test_debug_td_matches_trustee_golden_claims(vectors):
    """trustee's golden parse of the same quote: every body field and TD attribute flag, by Azure's name."""
    c = vectors["tdx/trustee-spr-v4-claims"]
    golden = json.loads(read("tdx/trustee-spr-v4-claims", "parse_tdx_claims_expected.json"))
    body = golden["quote"]["body"]
    ours = {
        "mr_td": "tdx_mrtd", "mr_seam": "tdx_mrseam", "mrsigner_seam": "tdx_mrsignerseam", "mr_config_id": "tdx_mrconfigid",
        "mr_owner": "tdx_mrowner", "mr_owner_config": "tdx_mrownerconfig", "report_data": "tdx_report_data",
        "seam_attributes": "tdx_seam_attributes", "tcb_svn": "tdx_tee_tcb_svn", "td_attributes": "tdx_td_attributes", "xfam": "tdx_xfam",
        **{f"rtmr_{i}": f"tdx_rtmr{i}" for i in range(4)},
    }  # fmt: skip
    assert {k: body[k] for k in ours} == {k: c[v] for k, v in ours.items()}
    assert golden["td_attributes"] == {f: c[f"tdx_td_attributes_{f}"] for f in BITS}
    assert c["tdx_td_attributes_debug"] is True and c["dbgstat"] == "enabled" and c["tdx_seamsvn"] == 3


def test_engine_path_and_tcb_verdict_under_azure_names():
    """The dcap-qvl path (test PKI) yields the same names; attester_* follow the TCB verdict."""
    ev, opts = DcapTestPki(status="OutOfDate", advisories=["INTEL-SA-00837"]).build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    c = v.claims
    assert c["attester_tcb_status"] == c["tcb-status"] == "OutOfDate"
    assert c["attester_advisory_ids"] == c["advisory-ids"] == ["INTEL-SA-00837"]
    assert c["tdx_mrtd"] == c["x-ms-tdxvm-mrtd"] and c["tdx_td_attributes_septve_disable"] is True


# --------------------------------------------------------------------------- a policy in Azure's format


def azure_policy(c: dict, **changes) -> dict:
    return {"x-ms-attestation-type": "tdxvm", "tdx_mrtd": c["tdx_mrtd"], "tdx_td_attributes_debug": False, "attester_tcb_status": "UpToDate", **changes}


def test_azure_policy_unchanged_passes_complete_collateral():
    ev, opts = DcapTestPki().build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    res = Policy.from_mapping(azure_policy(v.claims)).evaluate({**v.claims, **AGE})
    assert res.ok, res.failed
    # Azure's names decided debug and TCB: no implicit rule on their aliases
    implicit = {r.claim for r in res.rules if r.implicit}
    assert not implicit & {*DEBUG_CLAIMS, "tcb-status", "attester_tcb_status"}


#: the EMR vector has no CRLs or QE identity (SOURCE.md): admitting that is ratls's own rule, not Azure's
EMR_UNCHECKED = {"crl-checked": False, "qe-identity-checked": False}


def test_azure_policy_passes_the_real_vector(vectors):
    c = vectors["tdx/gtg-emr-v5-tdx15"]
    res = Policy.from_mapping(azure_policy(c, **EMR_UNCHECKED)).evaluate({**c, **AGE})
    assert res.ok, res.failed
    # the same policy without the ratls admissions is refused for exactly the unchecked collateral
    strict = Policy.from_mapping(azure_policy(c)).evaluate({**c, **AGE})
    assert {r.claim for r in strict.failed} == {"crl-checked", "qe-identity-checked"}


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("tdx_mrtd", "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f877"),
        ("tdx_td_attributes_debug", True),
        ("attester_tcb_status", "OutOfDate"),
        ("attester_tcb_status", ["SWHardeningNeeded", "OutOfDate"]),
        ("tdx_seamsvn", {"min": 0x010C}),
        ("tdx_rtmr2", "00" * 48),
        ("tdx_td_attributes_septve_disable", False),
        ("tdx_xfam", "e702060000000001"),
        ("dbgstat", "enabled"),
    ],
)
def test_azure_policy_changed_value_fails_naming_the_claim(vectors, claim, value):
    c = vectors["tdx/gtg-emr-v5-tdx15"]
    res = Policy.from_mapping(azure_policy(c, **EMR_UNCHECKED, **{claim: value})).evaluate({**c, **AGE})
    assert [r.claim for r in res.failed] == [claim]
    assert not res.failed[0].implicit


def test_azure_policy_hex_compares_case_insensitively(vectors):
    c = vectors["tdx/gtg-emr-v5-tdx15"]
    assert Policy.from_mapping(azure_policy(c, **EMR_UNCHECKED, tdx_mrtd=c["tdx_mrtd"].upper())).evaluate({**c, **AGE}).ok


def test_azure_policy_on_changed_evidence_fails_naming_the_claim(vectors):
    c = dict(vectors["tdx/gtg-emr-v5-tdx15"])
    pol = Policy.from_mapping(azure_policy(c, **EMR_UNCHECKED))
    c["tdx_mrtd"] = "00" * 48
    assert [r.claim for r in pol.evaluate({**c, **AGE}).failed] == ["tdx_mrtd"]


def test_azure_policy_refuses_the_debug_td(vectors):
    c = vectors["tdx/trustee-spr-v4-claims"]
    pol = azure_policy(c, attester_tcb_status="Unknown", **EMR_UNCHECKED)
    res = Policy.from_mapping(pol).evaluate({**c, **AGE})
    assert [(r.claim, r.actual, r.implicit) for r in res.failed] == [("tdx_td_attributes_debug", True, False)]


# --------------------------------------------------------------------------- debug: every combination

#: per debug claim: None (not named), a constraint that admits debug, one that refuses it
ADMIT = {"x-ms-tdxvm-is-debuggable": [True, False], "tdx_td_attributes_debug": [False, True], "dbgstat": ["enabled", "disabled"]}
REFUSE = {"x-ms-tdxvm-is-debuggable": False, "tdx_td_attributes_debug": False, "dbgstat": "disabled"}
COMBOS = list(itertools.product((None, "admit", "refuse"), repeat=len(DEBUG_CLAIMS)))


def debug_policy(c: dict, combo: tuple) -> Policy:
    rules = {"tdx_mrtd": c["tdx_mrtd"], "attester_tcb_status": "Unknown", **EMR_UNCHECKED}
    for claim, how in zip(DEBUG_CLAIMS, combo, strict=True):
        if how:
            rules[claim] = (ADMIT if how == "admit" else REFUSE)[claim]
    return Policy.from_mapping(rules)


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(h or "unnamed" for h in combo) for combo in COMBOS])
def test_debug_td_every_combination(vectors, combo):
    """The real debug TD: naming any debug claim decides by the policy's rules alone; naming none refuses."""
    c = vectors["tdx/trustee-spr-v4-claims"]
    res = debug_policy(c, combo).evaluate({**c, **AGE})
    named = [claim for claim, how in zip(DEBUG_CLAIMS, combo, strict=True) if how]
    refusing = [claim for claim, how in zip(DEBUG_CLAIMS, combo, strict=True) if how == "refuse"]
    implicit_debug = [r for r in res.rules if r.implicit and is_debug_claim(r.claim)]
    if not named:
        assert not res.ok
        assert sorted(r.claim for r in res.failed) == sorted(DEBUG_CLAIMS)
        assert all(r.implicit and "debug TEE refused" in r.note for r in res.failed)
        assert all("tdx_td_attributes_debug" in r.note for r in res.failed)  # says how to admit it, by either name
    else:
        assert not implicit_debug, implicit_debug
        assert [r.claim for r in res.failed] == refusing
        assert res.ok is (not refusing)


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(h or "unnamed" for h in combo) for combo in COMBOS])
def test_production_td_every_combination(vectors, combo):
    """A TD without debug passes whatever debug claims the policy names (admit or refuse), with the
    defaults visible only when it names none."""
    c = vectors["tdx/gtg-gcp-spr-v4-ccel"]
    res = debug_policy(c, combo).evaluate({**c, **AGE})
    assert res.ok, res.failed
    implicit_debug = sorted(r.claim for r in res.rules if r.implicit and is_debug_claim(r.claim))
    assert implicit_debug == ([] if any(combo) else sorted(DEBUG_CLAIMS))


def test_debug_claim_named_but_absent_from_the_evidence_lifts_nothing(vectors):
    """Naming another TEE's debug claim does not admit this one's debug (the named rule fails as missing too)."""
    c = vectors["tdx/trustee-spr-v4-claims"]
    pol = Policy.from_mapping({"tdx_mrtd": c["tdx_mrtd"], "attester_tcb_status": "Unknown", **EMR_UNCHECKED, "x-ms-sgx-is-debuggable": [True, False]})
    failed = {r.claim: r for r in pol.evaluate({**c, **AGE}).failed}
    assert set(failed) == {"x-ms-sgx-is-debuggable", *DEBUG_CLAIMS}
    assert failed["x-ms-sgx-is-debuggable"].note == "claim missing from evidence"
    assert all(failed[d].implicit for d in DEBUG_CLAIMS)


# --------------------------------------------------------------------------- claims from Azure's own token shape

#: the TD part of an Azure Attestation TDX token (its documented sample's shape), no ratls aliases
AZURE_TOKEN = {
    "x-ms-attestation-type": "tdxvm",
    "attester_tcb_status": "UpToDate",
    "dbgstat": "disabled",
    "tdx_mrtd": "5b" * 48,
    "tdx_td_attributes_debug": False,
    "tdx_seamsvn": 3,
}


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({}, []),
        ({"tdx_td_attributes_debug": True}, ["tdx_td_attributes_debug"]),
        ({"dbgstat": "enabled"}, ["dbgstat"]),
        ({"dbgstat": "disabled-permanently"}, []),
        ({"dbgstat": 1}, ["dbgstat"]),
        ({"tdx_td_attributes_debug": "false"}, ["tdx_td_attributes_debug"]),
        ({"attester_tcb_status": "OutOfDate"}, ["attester_tcb_status"]),
        ({"tdx_is_debuggable": True}, ["tdx_is_debuggable"]),  # Intel Trust Authority's name
        ({"is-debuggable": True}, ["is-debuggable"]),  # Azure's deprecated SGX name
    ],
)
def test_defaults_cover_claims_under_azure_names_only(changes, failed):
    """Claims carrying only Azure's names (a verifier token) get the same secure defaults."""
    res = Policy.from_mapping({"tdx_mrtd": "5b" * 48}).evaluate({**AZURE_TOKEN, **changes})
    assert [r.claim for r in res.failed] == failed
    assert all(r.implicit for r in res.failed)


def test_tcb_status_named_under_either_name_decides_alone(vectors):
    c = vectors["tdx/trustee-gnr-v4-tcbinfo"]  # OutOfDate, QE identity matched, no CRLs
    base = {"tdx_mrtd": c["tdx_mrtd"], "crl-checked": False}
    unnamed = Policy.from_mapping(base).evaluate({**c, **AGE})
    assert sorted(r.claim for r in unnamed.failed) == ["attester_tcb_status", "tcb-status"]
    for claim in ("tcb-status", "attester_tcb_status"):
        res = Policy.from_mapping({**base, claim: ["UpToDate", "OutOfDate"]}).evaluate({**c, **AGE})
        assert res.ok, res.failed
        assert not [r for r in res.rules if r.implicit and r.claim in ("tcb-status", "attester_tcb_status")]
        assert [r.claim for r in Policy.from_mapping({**base, claim: "UpToDate"}).evaluate({**c, **AGE}).failed] == [claim]


# --------------------------------------------------------------------------- SGX against a real Azure token


def maa_sgx_token() -> dict:
    payload = read("azure/teaclave-maa-sgx-jwt", "token.jwt").decode().strip().split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


#: x-ms-sgx-* claims of Azure's token that ratls does not emit: the enclave held data (ratls binds
#: its own certificate claims instead), collateral hashes and Azure's TCB baseline id
NOT_EMITTED = {"x-ms-sgx-ehd", "x-ms-sgx-collateral", "x-ms-sgx-tcbidentifier"}


@pytest.mark.parametrize("name", ["sgx/mobilecoin-cfl-v3-collateral", "sgx/trustee-occlum-icx-v3"])
def test_sgx_claims_spelled_and_typed_as_azure_token(name):
    token = maa_sgx_token()
    v = verify(name)
    assert v.verified, v.error
    c = v.claims
    azure = {k for k in token if k.startswith("x-ms-sgx-")}
    assert azure - set(c) == NOT_EMITTED
    for k in azure - NOT_EMITTED:
        assert type(c[k]) is type(token[k]), k
        if isinstance(token[k], str):
            assert len(c[k]) == len(token[k]) and c[k] == c[k].lower(), k
    assert c["x-ms-attestation-type"] == token["x-ms-attestation-type"] == "sgx"
    # the KSS claims of Azure's sample SGX token, spelled as Azure spells them (and ratls's older alias)
    for k in ("x-ms-sgx-config-id", "x-ms-sgx-config-svn", "x-ms-sgx-isv-family-id", "x-ms-sgx-isv-extended-product-id"):
        assert k in c
    assert c["x-ms-sgx-isv-extended-product-id"] == c["x-ms-sgx-isv-ext-product-id"]
    assert len(c["x-ms-sgx-config-id"]) == 128 and isinstance(c["x-ms-sgx-config-svn"], int)


def test_azure_sgx_policy_from_the_token_fails_naming_the_claim():
    """A policy written from Azure's token (its x-ms-policy) evaluated on a real vector names what differs."""
    token = maa_sgx_token()
    c = verify("sgx/trustee-occlum-icx-v3").claims
    pol = {k: token[k] for k in ("x-ms-sgx-mrsigner", "x-ms-sgx-is-debuggable", "x-ms-sgx-svn")}
    pol |= {"x-ms-sgx-mrenclave": c["x-ms-sgx-mrenclave"], "tcb-status": "Unknown", **EMR_UNCHECKED}
    res = Policy.from_mapping(pol).evaluate({**c, **AGE})
    assert sorted(r.claim for r in res.failed) == ["x-ms-sgx-is-debuggable", "x-ms-sgx-mrsigner", "x-ms-sgx-svn"]
    assert not any(r.implicit for r in res.failed)


def test_naming_an_alias_lifts_only_its_own_set():
    """Naming a TD debug claim decides the TD's debug bit, not another component's debug claim."""
    claims = {**AZURE_TOKEN, "tdx_td_attributes_debug": True, "dbgstat": "enabled", "x-ms-tdxvm-is-debuggable": True, "x-nv-gpu-is-debuggable": True}
    res = Policy.from_mapping({"tdx_mrtd": "5b" * 48, "x-ms-tdxvm-is-debuggable": [True, False]}).evaluate(claims)
    assert [(r.claim, r.implicit) for r in res.failed] == [("x-nv-gpu-is-debuggable", True)]
    # and the reverse: admitting the GPU's debug leaves the TD's default in place, under each of its names
    res = Policy.from_mapping({"tdx_mrtd": "5b" * 48, "x-nv-gpu-is-debuggable": True}).evaluate(claims)
    assert sorted(r.claim for r in res.failed) == ["dbgstat", "tdx_td_attributes_debug", "x-ms-tdxvm-is-debuggable"]


@pytest.mark.parametrize("named", ["x-ms-sgx-is-debuggable", "is-debuggable"])
def test_sgx_debug_under_azure_deprecated_name_is_one_decision(named):
    """An Azure SGX token carries both is-debuggable and x-ms-sgx-is-debuggable: naming either decides."""
    token = {**maa_sgx_token(), "is-debuggable": True, "x-ms-sgx-is-debuggable": True}
    pinned = {"x-ms-sgx-mrsigner": token["x-ms-sgx-mrsigner"]}
    unnamed = Policy.from_mapping(pinned).evaluate(token)
    assert sorted(r.claim for r in unnamed.failed) == ["is-debuggable", "x-ms-sgx-is-debuggable"]
    assert Policy.from_mapping({**pinned, named: [True, False]}).evaluate(token).ok
    assert [r.claim for r in Policy.from_mapping({**pinned, named: False}).evaluate(token).failed] == [named]
