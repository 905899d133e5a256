"""Evidence types, verification options, and the explicit table of verifiers.

A verifier is a pure function ``(Evidence, VerifyOptions) -> Verification``: the clock and the
collateral come in through :class:`VerifyOptions`, nothing is read from the system. It never
raises for bad evidence: it returns a :class:`~ratls.trail.Verification` whose ``error`` says
which step failed and why. It raises :class:`~ratls.errors.UsageError` only when the caller
misused it (e.g. a naive datetime).
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .errors import EvidenceError, Reason, UsageError, VerificationError
from .trail import Trail, Verification


class EvidenceType(enum.StrEnum):
    SNP = "sev-snp"
    SIM = "sim"
    TDX = "tdx"
    SGX = "sgx"


@dataclass(frozen=True)
class Evidence:
    type: EvidenceType
    data: bytes
    #: certificates (DER or PEM), collateral JSON bodies, CRLs: recognised by content, not position
    endorsements: tuple[bytes, ...] = ()


class CollateralGetter(Protocol):
    """One-method fetch interface (go-sev-guest's ``Getter``); tests pass a dict-backed fake."""

    def get(self, key: str) -> bytes | None: ...


@dataclass(frozen=True)
class DictGetter:
    items: Mapping[str, bytes] = field(default_factory=dict)

    def get(self, key: str) -> bytes | None:
        return self.items.get(key)


@dataclass(frozen=True)
class VerifyOptions:
    """Everything a verifier may consult. ``now`` must be timezone-aware (UTC)."""

    now: datetime
    #: DER of the simulated TEE's root (ARK). None: simulated evidence never verifies.
    sim_root: bytes | None = None
    #: extra collateral source, consulted after the evidence's own endorsements
    collateral: CollateralGetter | None = None
    #: test hook: replace the pinned AMD roots (product name -> DER of ARK). Never set in services.
    amd_roots: Mapping[str, bytes] | None = None
    #: test hook: replace the pinned Intel SGX Root CA public key (DER SubjectPublicKeyInfo).
    intel_root_spki: bytes | None = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise UsageError(Reason.CONFIG_INVALID, "VerifyOptions.now must be timezone-aware")


Verifier = Callable[[Evidence, VerifyOptions], Verification]

#: Explicit registration (no discovery by name): evidence type -> "module:function".
VERIFIERS: dict[EvidenceType, str] = {
    EvidenceType.SNP: "ratls.snp.verify:verify_evidence",
    EvidenceType.SIM: "ratls.sim:verify_evidence",
    EvidenceType.TDX: "ratls.intel.verify:verify_tdx_evidence",
    EvidenceType.SGX: "ratls.intel.verify:verify_sgx_evidence",
}


def verifier_for(kind: EvidenceType) -> Verifier:
    target = VERIFIERS.get(kind)
    if target is None:
        raise UsageError(Reason.UNSUPPORTED_EVIDENCE, f"no verifier registered for {kind!s}")
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def verify_evidence(evidence: Evidence, options: VerifyOptions) -> Verification:
    try:
        fn = verifier_for(evidence.type)
    except ImportError as e:  # a verifier module not built yet is the evidence's problem to report
        err = VerificationError(Reason.UNSUPPORTED_EVIDENCE, f"{evidence.type.value} verification unavailable: {e}", step="verifier")
        trail = Trail()
        trail.add("verifier", False, err.detail, err.reason.value)
        return Verification(evidence.type.value, trail.steps, {}, err)
    return fn(evidence, options)


def run_verifier(kind: str, body: Callable[[Trail], tuple[dict, bytes]]) -> Verification:
    """Shared frame for verifiers: run ``body`` on a fresh trail, turn an EvidenceError into a result.

    ``body`` returns ``(claims, report_data)``. Only EvidenceError is caught: anything else is a
    bug and must surface.
    """
    trail = Trail()
    try:
        claims, report_data = body(trail)
    except EvidenceError as e:
        return Verification(kind, trail.steps, {}, e)
    return Verification(kind, trail.steps, claims, None, report_data)
