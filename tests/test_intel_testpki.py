"""DCAP under a test-only PKI (root passed via ``intel_root_spki``): revocation, the dcap-qvl engine.

We cannot sign as Intel, so the revocation path and the engine's success path are shown on a quote
re-signed under a generated root (:mod:`tests.dcap_pki`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from ratls.errors import Reason
from ratls.evidence import Evidence, verify_evidence
from ratls.policy import Policy
from tests.dcap_pki import NOW, DcapTestPki


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


@pytest.mark.parametrize("tee", ["tdx", "sgx"])
def test_complete_collateral_passes_the_default_policy(tee):
    """Both CRLs and a matched QE identity: the implicit crl-checked / qe-identity-checked rules pass."""
    pki = DcapTestPki(tee=tee)
    ev, opts = pki.build()
    v = verify_evidence(ev, opts)
    assert v.verified, v.error
    assert v.claims["crl-checked"] is True and v.claims["qe-identity-checked"] is True
    res = Policy.from_mapping({"x-ms-attestation-type": v.claims["x-ms-attestation-type"]}).evaluate({**v.claims, "evidence-age-seconds": 0})
    assert res.ok, res.failed
    assert {r.claim for r in res.rules if r.implicit} >= {"crl-checked", "qe-identity-checked"}


@pytest.mark.parametrize(
    ("withheld", "claim"),
    [((2,), "crl-checked"), ((3,), "crl-checked"), ((1,), "qe-identity-checked")],
    ids=["no-root-crl", "no-pck-crl", "no-qe-identity"],
)
def test_withheld_collateral_refused_by_default_admitted_by_name(withheld, claim):
    ev, opts = DcapTestPki().build()
    partial = Evidence(ev.type, ev.data, tuple(e for i, e in enumerate(ev.endorsements) if i not in withheld))
    v = verify_evidence(partial, opts)
    assert v.verified, v.error
    assert v.claims[claim] is False
    c = {**v.claims, "evidence-age-seconds": 0}
    assert [r.claim for r in Policy.from_mapping({"x-ms-attestation-type": "tdxvm"}).evaluate(c).failed] == [claim]
    assert Policy.from_mapping({"x-ms-attestation-type": "tdxvm", claim: False}).evaluate(c).ok
