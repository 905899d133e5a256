"""Policy language: every operator, missing claims, wrong types and the secure defaults."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratls.errors import PolicyError, Reason
from ratls.policy import DEFAULT_MAX_AGE_S, Policy, parse_policy

SNP = {
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-sevsnpvm-launchmeasurement": "ab" * 48,
    "x-ms-sevsnpvm-hostdata": "00" * 32,
    "x-ms-sevsnpvm-bootloader-svn": 3,
    "x-ms-sevsnpvm-is-debuggable": False,
    "x-ms-sevsnpvm-vmpl": 0,
    "tcb-status": "UpToDate",
    "evidence-age-seconds": 10,
}


def rules_by_claim(result):
    return {r.claim: r for r in result.rules}


def test_azure_confidential_ai_policy_passes_unchanged():
    # the client policy shape of the Azure confidential-ai sample (minus MAA-only claims)
    pol = parse_policy(json.dumps({"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-bootloader-svn": 3, "x-ms-sevsnpvm-is-debuggable": False}))
    res = pol.evaluate(SNP)
    assert res.ok, res.to_list()
    assert [r.claim for r in res.rules if not r.implicit] == ["x-ms-attestation-type", "x-ms-sevsnpvm-bootloader-svn", "x-ms-sevsnpvm-is-debuggable"]


@pytest.mark.parametrize(
    ("constraint", "actual", "ok"),
    [
        ("sevsnpvm", "sevsnpvm", True),
        ("sevsnpvm", "tdxvm", False),
        (["tdxvm", "sevsnpvm"], "sevsnpvm", True),
        (["tdxvm", "sgx"], "sevsnpvm", False),
        ({"min": 3}, 3, True),
        ({"min": 3}, 2, False),
        ({"max": 3}, 4, False),
        ({"max": 3}, 3, True),
        ({"min": 1, "max": 5}, 5, True),
        ({"min": 1, "max": 5}, 0, False),
        (3, 3, True),
        (3, 4, False),
        (False, False, True),
        (False, True, False),
    ],
)
def test_operators(constraint, actual, ok):
    res = Policy.from_mapping({"c": constraint}).evaluate({"c": actual})
    assert rules_by_claim(res)["c"].ok is ok
    assert rules_by_claim(res)["c"].expected == constraint
    assert rules_by_claim(res)["c"].actual == actual


def test_hex_is_case_insensitive_and_prefix_tolerant():
    res = Policy.from_mapping({"m": "0xABCD"}).evaluate({"m": "abcd"})
    assert res.ok


def test_missing_claim_fails_with_note():
    res = Policy.from_mapping({"x-ms-sevsnpvm-guestsvn": {"min": 1}}).evaluate({})
    r = rules_by_claim(res)["x-ms-sevsnpvm-guestsvn"]
    assert not r.ok and r.actual is None and "missing" in r.note


@pytest.mark.parametrize(
    ("constraint", "actual"),
    [({"min": 1}, "5"), ({"max": 1}, True), (1, True), (True, 1), ("3", 3), (3, "3"), (False, 0)],
)
def test_wrong_type_fails(constraint, actual):
    res = Policy.from_mapping({"c": constraint}).evaluate({"c": actual})
    r = rules_by_claim(res)["c"]
    assert not r.ok
    assert "wrong type" in r.note


def test_every_violation_is_reported_not_just_the_first():
    pol = Policy.from_mapping({"x-ms-attestation-type": "tdxvm", "x-ms-sevsnpvm-bootloader-svn": {"min": 9}, "x-ms-sevsnpvm-vmpl": 0})
    res = pol.evaluate(SNP)
    assert {r.claim for r in res.failed} == {"x-ms-attestation-type", "x-ms-sevsnpvm-bootloader-svn"}
    assert len(res.rules) >= 3


def test_debug_refused_unless_named():
    debug = dict(SNP, **{"x-ms-sevsnpvm-is-debuggable": True})
    res = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(debug)
    r = rules_by_claim(res)["x-ms-sevsnpvm-is-debuggable"]
    assert not res.ok and r.implicit and "debug" in r.note
    # admitted by name
    res2 = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": [True, False]}).evaluate(debug)
    assert res2.ok


def test_sim_admitted_only_by_a_policy_naming_it():
    sim = dict(SNP, **{"x-ms-attestation-type": "sim"})
    assert not Policy.from_mapping({"x-ms-sevsnpvm-vmpl": 0}).evaluate(sim).ok
    assert not Policy.from_mapping({"x-ms-attestation-type": ["sevsnpvm", "tdxvm"]}).evaluate(sim).ok
    assert Policy.from_mapping({"x-ms-attestation-type": "sim"}).evaluate(sim).ok
    assert Policy.from_mapping({"x-ms-attestation-type": ["sim", "sevsnpvm"]}).evaluate(sim).ok


def test_real_tee_does_not_need_type_rule_but_sim_does():
    assert Policy.from_mapping({"x-ms-sevsnpvm-vmpl": 0}).evaluate(SNP).ok


def test_out_of_date_tcb_refused_unless_named():
    old = dict(SNP, **{"tcb-status": "OutOfDate"})
    res = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(old)
    assert not res.ok and rules_by_claim(res)["tcb-status"].implicit
    assert Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "tcb-status": ["UpToDate", "OutOfDate"]}).evaluate(old).ok


def test_evidence_age_default_bound_and_explicit_bound():
    old = dict(SNP, **{"evidence-age-seconds": DEFAULT_MAX_AGE_S + 1})
    assert not Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(old).ok
    assert Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "evidence-age-seconds": {"max": 10**9}}).evaluate(old).ok
    assert not Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "evidence-age-seconds": {"max": 5}}).evaluate(SNP).ok


def test_yaml_policy():
    pol = parse_policy("x-ms-attestation-type: sim\nx-ms-sevsnpvm-bootloader-svn:\n  min: 2\n$name: demo\n")
    assert pol.name == "demo"
    assert pol.evaluate(dict(SNP, **{"x-ms-attestation-type": "sim"})).ok


@pytest.mark.parametrize(
    "doc",
    ["", "{}", "[]", '{"$name": "only-meta"}', '{"c": {"gt": 1}}', '{"c": {"min": "1"}}', '{"c": []}', '{"c": [{"a": 1}]}', "a: [b", "42"],
)
def test_bad_policies_rejected(doc):
    with pytest.raises(PolicyError) as ei:
        parse_policy(doc)
    assert ei.value.reason is Reason.POLICY_INVALID


def test_digest_changes_with_rules():
    a = Policy.from_mapping({"c": 1})
    assert a.digest == Policy.from_mapping({"c": 1}).digest
    assert a.digest != Policy.from_mapping({"c": 2}).digest


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_policy_only_raises_policy_error(text):
    try:
        parse_policy(text)
    except PolicyError:
        pass


def test_stale_collateral_refused_unless_named():
    stale = dict(SNP, **{"collateral-stale": True})
    res = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(stale)
    assert not res.ok and rules_by_claim(res)["collateral-stale"].implicit
    assert Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "collateral-stale": [True, False]}).evaluate(stale).ok
    fresh = dict(SNP, **{"collateral-stale": False})
    assert Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(fresh).ok


TDX = {
    "x-ms-attestation-type": "tdxvm",
    "x-ms-tdxvm-mrtd": "cd" * 48,
    "x-ms-tdxvm-is-debuggable": False,
    "tcb-status": "UpToDate",
    "collateral-stale": False,
    "crl-checked": True,
    "qe-identity-checked": True,
    "evidence-age-seconds": 10,
}


@pytest.mark.parametrize("claim", ["crl-checked", "qe-identity-checked"])
def test_unchecked_intel_collateral_refused_unless_named(claim):
    base = Policy.from_mapping({"x-ms-attestation-type": "tdxvm"})
    checked = base.evaluate(TDX)
    assert checked.ok
    # the default is visible even when it passes, so a reviewer sees revocation was checked
    assert rules_by_claim(checked)[claim].implicit and rules_by_claim(checked)[claim].expected is True
    unchecked = dict(TDX, **{claim: False})
    res = base.evaluate(unchecked)
    assert [r.claim for r in res.failed] == [claim]
    rule = rules_by_claim(res)[claim]
    assert rule.implicit and rule.actual is False and f"name {claim} in the policy" in rule.note
    # named: the policy's own rule replaces the default (false admitted, or either)
    for constraint in (False, [True, False]):
        named = Policy.from_mapping({"x-ms-attestation-type": "tdxvm", claim: constraint}).evaluate(unchecked)
        assert named.ok and not rules_by_claim(named)[claim].implicit
    # a policy that insists on the check keeps refusing
    assert not Policy.from_mapping({"x-ms-attestation-type": "tdxvm", claim: True}).evaluate(unchecked).ok


def test_unchecked_intel_rules_only_where_the_verifier_reports_them():
    res = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(SNP)
    assert res.ok and not {"crl-checked", "qe-identity-checked"} & set(rules_by_claim(res))


def test_unchecked_intel_claim_of_wrong_type_refused():
    res = Policy.from_mapping({"x-ms-attestation-type": "tdxvm"}).evaluate(dict(TDX, **{"crl-checked": "true"}))
    assert [r.claim for r in res.failed] == ["crl-checked"]
