"""Claim policies: a flat object of claim -> constraint, evaluated on verified claims.

The format is the one the Azure confidential-ai sample's client policies use, so they work
unchanged::

    {"x-ms-attestation-type": "sevsnpvm",
     "x-ms-sevsnpvm-hostdata": "73973b78...",
     "x-ms-sevsnpvm-bootloader-svn": {"min": 3},
     "x-ms-sevsnpvm-is-debuggable": false}

Constraints: a scalar means equal, a list means one of, ``{"min": n}`` / ``{"max": n}`` (both may
appear together) compare numbers. A claim the evidence lacks fails its rule.

Secure defaults are added as *implicit* rules, each visible in the result so a reviewer sees them:

* simulated evidence (``x-ms-attestation-type: sim``) passes only a policy whose
  ``x-ms-attestation-type`` rule names ``sim``;
* a debuggable TEE fails unless the policy names one of its debug claims: claims ending in
  ``-is-debuggable`` (or ``_is_debuggable``), Azure's TDX ``tdx_td_attributes_debug`` and the EAT
  ``dbgstat``; the SGX ``is-debuggable`` of older Azure tokens counts too;
* a TCB status other than ``UpToDate`` fails unless the policy names ``tcb-status`` or Azure's
  ``attester_tcb_status``;
* evidence older than :data:`DEFAULT_MAX_AGE_S` fails unless the policy bounds
  ``evidence-age-seconds`` itself;
* stale collateral (Intel TCB info, QE identity or a CRL past its next update) fails unless the
  policy names ``collateral-stale``;
* Intel (TDX/SGX) evidence whose revocation was not checked (no root and PCK CA CRLs:
  ``crl-checked: false``) fails unless the policy names ``crl-checked``;
* Intel evidence whose quoting enclave was not matched against a signed QE identity
  (``qe-identity-checked: false``) fails unless the policy names ``qe-identity-checked``.

The last two are added whenever the verifier reports the claim, so a passing DCAP verdict shows
them too; they are why "the quote's signatures verify" is not enough to admit Intel evidence.

Aliases: TDX evidence states its debug bit three times (``x-ms-tdxvm-is-debuggable``,
``tdx_td_attributes_debug``, ``dbgstat``) and its TCB status twice (``tcb-status``,
``attester_tcb_status``), under ratls's and Azure Attestation's names (:data:`ALIASES`). Each
alias set is one decision: a policy naming *any* of the evidence's claims of a set decides it by
its own rule(s) alone, and no implicit rule is added for the others; a policy naming none of them
gets one implicit rule per claim of the set the evidence carries (shown when they pass too), and
any one saying debug (or a TCB status other than ``UpToDate``) refuses. So admitting a debug TD
takes naming one of its debug claims, under any of its names, and nothing else admits it. A debug
claim outside every alias set is a set of its own: naming it lifts the default for it alone.

Keys starting with ``$`` are metadata (``$name``, ``$comment``) and are not rules. There is no
accept-all policy: an empty policy is rejected when loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError, Reason

ATTESTATION_TYPE = "x-ms-attestation-type"
TCB_STATUS = "tcb-status"
EVIDENCE_AGE = "evidence-age-seconds"
COLLATERAL_STALE = "collateral-stale"
CRL_CHECKED = "crl-checked"
QE_IDENTITY_CHECKED = "qe-identity-checked"
DEBUG_SUFFIX = "-is-debuggable"
#: debug claims whose names do not end in DEBUG_SUFFIX: Azure's TDX EAT profile bit, the EAT debug
#: status, Azure's deprecated SGX name, Intel Trust Authority's suffix
DBGSTAT = "dbgstat"
DEBUG_CLAIMS = frozenset({"tdx_td_attributes_debug", DBGSTAT, "is-debuggable"})
DEBUG_SUFFIXES = (DEBUG_SUFFIX, "_is_debuggable")
ATTESTER_TCB_STATUS = "attester_tcb_status"
#: claims that carry the TCB status (ratls's name first)
TCB_STATUS_CLAIMS = (TCB_STATUS, ATTESTER_TCB_STATUS)
#: names of one fact (ratls's, Azure Attestation's, Intel Trust Authority's): a policy naming one
#: of them decides it for all
ALIASES: tuple[frozenset[str], ...] = (
    frozenset({"x-ms-tdxvm-is-debuggable", "tdx_td_attributes_debug", DBGSTAT, "tdx_is_debuggable"}),
    frozenset({"x-ms-sgx-is-debuggable", "is-debuggable"}),
    frozenset(TCB_STATUS_CLAIMS),
)
POLICY_SIGNER = "x-ms-policy-signer"
SIM_TYPE = "sim"
DEFAULT_MAX_AGE_S = 24 * 3600
GOOD_TCB = "UpToDate"

_HEX = re.compile(r"^(0x)?[0-9a-fA-F]+$")
_MISSING = object()


@dataclass(frozen=True)
class Rule:
    claim: str
    expected: Any
    actual: Any
    ok: bool
    implicit: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"claim": self.claim, "expected": self.expected, "actual": self.actual, "ok": self.ok}
        if self.implicit:
            d["implicit"] = True
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class PolicyResult:
    rules: tuple[Rule, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rules)

    @property
    def failed(self) -> list[Rule]:
        return [r for r in self.rules if not r.ok]

    def to_list(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rules]


@dataclass(frozen=True)
class Policy:
    """A validated policy. Build with :func:`parse_policy` or :meth:`from_mapping`."""

    rules: Mapping[str, Any]
    name: str = "policy"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], name: str | None = None) -> Policy:
        if not isinstance(doc, Mapping):
            raise PolicyError(Reason.POLICY_INVALID, f"a policy is an object of claim -> constraint, got {type(doc).__name__}")
        meta = {k: v for k, v in doc.items() if isinstance(k, str) and k.startswith("$")}
        rules = {k: v for k, v in doc.items() if k not in meta}
        if not rules:
            raise PolicyError(Reason.POLICY_INVALID, "the policy has no rules; an accept-all policy is not allowed")
        for claim, constraint in rules.items():
            if not isinstance(claim, str) or not claim:
                raise PolicyError(Reason.POLICY_INVALID, f"claim names are strings, got {claim!r}")
            if claim != POLICY_SIGNER:
                _check_constraint(claim, constraint)
        return cls(rules=dict(rules), name=name or str(meta.get("$name", "policy")), meta=meta)

    @property
    def digest(self) -> str:
        """Stable hash of the rules; verdict caches key on it so a policy change re-verifies."""
        blob = json.dumps(self.rules, sort_keys=True, separators=(",", ":"), default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def names(self, claim: str) -> bool:
        return claim in self.rules

    def evaluate(self, claims: Mapping[str, Any]) -> PolicyResult:
        return evaluate(self, claims)


def _check_constraint(claim: str, c: Any) -> None:
    if isinstance(c, Mapping):
        keys = set(c)
        if not keys or not keys <= {"min", "max"}:
            raise PolicyError(Reason.POLICY_INVALID, f"{claim}: an object constraint takes only 'min' and 'max', got {sorted(map(str, keys))}")
        for k in keys:
            if not _is_number(c[k]):
                raise PolicyError(Reason.POLICY_INVALID, f"{claim}: '{k}' must be a number, got {c[k]!r}")
    elif isinstance(c, list):
        if not c:
            raise PolicyError(Reason.POLICY_INVALID, f"{claim}: an empty list admits nothing")
        for item in c:
            if not _is_scalar(item):
                raise PolicyError(Reason.POLICY_INVALID, f"{claim}: list items must be scalars, got {item!r}")
    elif not _is_scalar(c):
        raise PolicyError(Reason.POLICY_INVALID, f"{claim}: unsupported constraint {c!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _norm(v: Any) -> Any:
    """Hex strings compare case-insensitively and without a 0x prefix."""
    if isinstance(v, str) and _HEX.match(v):
        v = v.lower()
        return v[2:] if v.startswith("0x") else v
    return v


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    if _is_number(expected) and _is_number(actual):
        return expected == actual
    if type(expected) is not type(actual):
        return False
    return _norm(expected) == _norm(actual)


def check(constraint: Any, actual: Any) -> tuple[bool, str]:
    """One rule. Returns (ok, note); the note explains a failure that is not a plain mismatch."""
    if actual is _MISSING:
        return False, "claim missing from evidence"
    if isinstance(constraint, Mapping):
        if not _is_number(actual):
            return False, f"wrong type: expected a number, got {type(actual).__name__}"
        if "min" in constraint and actual < constraint["min"]:
            return False, f"{actual} < min {constraint['min']}"
        if "max" in constraint and actual > constraint["max"]:
            return False, f"{actual} > max {constraint['max']}"
        return True, ""
    if isinstance(constraint, list):
        return any(_equal(c, actual) for c in constraint), ""
    ok = _equal(constraint, actual)
    if not ok and constraint is not None and actual is not None and type(constraint) is not type(actual) and not (
        _is_number(constraint) and _is_number(actual)
    ):
        return False, f"wrong type: expected {type(constraint).__name__}, got {type(actual).__name__}"
    return ok, ""


#: claims a verifier sets true only when it ran that check; refused unless true or named
_MUST_BE_CHECKED = (
    (CRL_CHECKED, "revocation not checked (the collateral lacks the root or the PCK CA CRL)"),
    (QE_IDENTITY_CHECKED, "quoting enclave not matched against a QE identity (none in the collateral)"),
)


def _names_sim(constraint: Any) -> bool:
    if isinstance(constraint, list):
        return SIM_TYPE in constraint
    return constraint == SIM_TYPE


def is_debug_claim(claim: str) -> bool:
    """Whether a claim states that the TEE is (or is not) debuggable, under any name ratls knows."""
    return claim in DEBUG_CLAIMS or claim.endswith(DEBUG_SUFFIXES)


def _decided(policy: Policy, claim: str) -> bool:
    """Whether the policy names the claim or one of its aliases (so its own rules decide that fact)."""
    return claim in policy.rules or any(claim in group and not group.isdisjoint(policy.rules) for group in ALIASES)


def _aliases_in(claim: str, claims: Mapping[str, Any]) -> list[str]:
    """The claim and those of its aliases the evidence carries, in the evidence's order."""
    group = next((g for g in ALIASES if claim in g), frozenset({claim}))
    return [c for c in claims if c in group]


def _not_debug(claim: str, actual: Any) -> tuple[Any, bool]:
    """(expected, ok) of the implicit rule: a boolean claim must be exactly ``false``, ``dbgstat`` one
    of EAT's ``disabled*`` values; anything else (a wrong type included) refuses."""
    if claim == DBGSTAT:
        return "disabled", isinstance(actual, str) and actual.startswith("disabled")
    return False, actual is False


def evaluate(policy: Policy, claims: Mapping[str, Any]) -> PolicyResult:
    """Every rule, explicit then implicit, with expected, actual and ok. Never stops at the first."""
    rules: list[Rule] = []
    for claim, constraint in policy.rules.items():
        if claim == POLICY_SIGNER:
            # Checked by the delegation path (a verifier token), which removes the rule first.
            rules.append(Rule(claim, "token signed by pinned key", claims.get(claim), bool(claims.get(claim)), note="delegation"))
            continue
        actual = claims.get(claim, _MISSING)
        ok, note = check(constraint, actual)
        rules.append(Rule(claim, constraint, None if actual is _MISSING else actual, ok, note=note))

    etype = claims.get(ATTESTATION_TYPE)
    if etype == SIM_TYPE and not _names_sim(policy.rules.get(ATTESTATION_TYPE)):
        rules.append(Rule(ATTESTATION_TYPE, "a policy naming 'sim'", etype, False, True, "simulated TEE is trusted only by a policy that names it"))

    for claim, actual in claims.items():
        if is_debug_claim(claim) and not _decided(policy, claim):
            expected, ok = _not_debug(claim, actual)
            names = " or ".join(_aliases_in(claim, claims))
            rules.append(Rule(claim, expected, actual, ok, True, "" if ok else f"debug TEE refused: the policy does not admit it by name ({names})"))

    for claim in TCB_STATUS_CLAIMS:
        if claim in claims and not _decided(policy, claim):
            status = claims[claim]
            ok = status == GOOD_TCB
            names = " or ".join(_aliases_in(claim, claims))
            rules.append(Rule(claim, GOOD_TCB, status, ok, True, "" if ok else f"TCB not up to date: name {names} in the policy to admit it"))

    if COLLATERAL_STALE not in policy.rules and claims.get(COLLATERAL_STALE) is True:
        rules.append(Rule(COLLATERAL_STALE, False, True, False, True, "collateral past its next update: name collateral-stale in the policy to admit it"))

    for claim, what in _MUST_BE_CHECKED:
        if claim not in policy.rules and claim in claims:
            actual = claims[claim]
            ok = actual is True
            rules.append(Rule(claim, True, actual, ok, True, "" if ok else f"{what}: name {claim} in the policy to admit it"))

    if EVIDENCE_AGE not in policy.rules and EVIDENCE_AGE in claims:
        age = claims[EVIDENCE_AGE]
        ok = _is_number(age) and age <= DEFAULT_MAX_AGE_S
        rules.append(Rule(EVIDENCE_AGE, {"max": DEFAULT_MAX_AGE_S}, age, ok, True, "" if ok else "evidence too old"))
    return PolicyResult(tuple(rules))


def parse_policy(data: bytes | str, name: str | None = None) -> Policy:
    """Parse JSON or YAML text. YAML is a superset of JSON, but JSON is tried first for exact errors."""
    text = data.decode() if isinstance(data, bytes) else data
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError(Reason.POLICY_INVALID, f"policy is neither JSON nor YAML: {e}") from e
    if doc is None:
        raise PolicyError(Reason.POLICY_INVALID, "the policy is empty; no policy means no traffic")
    return Policy.from_mapping(doc, name)
