"""Typed errors for the whole project.

Two families, as in h11's Local/RemoteProtocolError split:

* :class:`UsageError` -- the caller misused us (bad configuration, a policy file that does not
  parse, a missing trust root). Fix the local setup.
* :class:`EvidenceError` -- the peer sent evidence that is malformed (:class:`ParseError`) or does
  not verify (:class:`VerificationError`). A reviewer reads ``step`` and ``reason`` to learn why.

Every error carries a stable machine-readable ``reason`` (a :class:`Reason`) that tests assert on,
and a human ``detail``. Parsers must only ever raise :class:`ParseError` on bad bytes.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Public reason codes. Values are stable: logs, JSON refusals and tests use them."""

    # parsing
    TRUNCATED = "truncated"
    BAD_FORMAT = "bad-format"
    UNSUPPORTED_VERSION = "unsupported-version"
    MUST_BE_ZERO = "must-be-zero"
    BAD_ENCODING = "bad-encoding"
    # certificates and chains
    NO_EVIDENCE = "no-evidence"
    MISSING_ENDORSEMENT = "missing-endorsement"
    UNTRUSTED_ROOT = "untrusted-root"
    BAD_CHAIN_SIGNATURE = "bad-chain-signature"
    CERT_NOT_YET_VALID = "cert-not-yet-valid"
    CERT_EXPIRED = "cert-expired"
    REVOKED = "revoked"
    WRONG_PRODUCT = "wrong-product"
    # evidence
    BAD_SIGNATURE = "bad-signature"
    TCB_MISMATCH = "tcb-mismatch"
    CHIP_ID_MISMATCH = "chip-id-mismatch"
    KEY_BINDING = "key-binding"
    REPORT_DATA_MISMATCH = "report-data-mismatch"
    NONCE_MISMATCH = "nonce-mismatch"
    # collateral (Intel)
    COLLATERAL_SIGNATURE = "collateral-signature"
    COLLATERAL_EXPIRED = "collateral-expired"
    COLLATERAL_MISMATCH = "collateral-mismatch"
    TCB_LEVEL_NOT_FOUND = "tcb-level-not-found"
    QE_IDENTITY_MISMATCH = "qe-identity-mismatch"
    # policy and configuration
    POLICY_INVALID = "policy-invalid"
    POLICY_FAILED = "policy-failed"
    NO_POLICY = "no-policy"
    CONFIG_INVALID = "config-invalid"
    NO_PROVIDER = "no-provider"
    UNSUPPORTED_EVIDENCE = "unsupported-evidence"
    INTERNAL = "internal"
    # model bundles and key release (keybroker, sidecar unseal)
    TAMPERED = "tampered"
    WRONG_KEY = "wrong-key"
    UNSIGNED = "unsigned"
    UNSAFE_PATH = "unsafe-path"
    NONCE_EXPIRED = "nonce-expired"
    NONCE_REUSED = "nonce-reused"
    NOT_FOUND = "not-found"
    UNREACHABLE = "unreachable"


class RatlsError(Exception):
    """Base of every error we raise on purpose."""

    def __init__(self, reason: Reason, detail: str, *, step: str | None = None) -> None:
        super().__init__(detail)
        self.reason = Reason(reason)
        self.detail = detail
        self.step = step

    def __str__(self) -> str:
        where = f"[{self.step}] " if self.step else ""
        return f"{where}{self.reason.value}: {self.detail}"

    def to_dict(self) -> dict[str, str | None]:
        return {"reason": self.reason.value, "step": self.step, "detail": self.detail}


class UsageError(RatlsError):
    """The local side is misconfigured; the peer is not to blame."""


class PolicyError(UsageError):
    """A policy document is malformed (not: a policy that evidence failed)."""


class EvidenceError(RatlsError):
    """The peer's evidence is bad. Only this family may escape a verifier on hostile input."""


class ParseError(EvidenceError):
    """Bytes that do not have the structure the spec gives them."""


class VerificationError(EvidenceError):
    """Well-formed evidence that fails a signature, chain, binding, time or TCB check."""


class CollateralError(EvidenceError):
    """Endorsements or collateral that are missing, malformed, unsigned or stale."""
