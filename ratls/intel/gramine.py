"""Gramine RA-TLS interop: the legacy extension and Gramine's verification rules as a policy.

Gramine's legacy RA-TLS certificate carries the raw SGX quote in extension OID
1.2.840.113741.1337.6; the binding is ``report_data[0:32] == SHA-256(DER SubjectPublicKeyInfo)``
(the rest of report_data is not constrained by Gramine). ``ratls.certificate`` calls these helpers;
nothing here reads files or clocks.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..errors import ParseError, Reason, UsageError
from ..policy import Policy
from .quote import EnclaveReport, parse_quote

GRAMINE_LEGACY_OID = "1.2.840.113741.1337.6"


def legacy_binding_ok(quote_report_data: bytes, spki_der: bytes) -> bool:
    """Gramine's legacy binding: the first 32 bytes of report_data are SHA-256 of the DER SPKI."""
    if len(quote_report_data) < 32:
        return False
    return hmac.compare_digest(quote_report_data[:32], hashlib.sha256(spki_der).digest())


def legacy_report_data(spki_der: bytes) -> bytes:
    """The report_data a Gramine enclave puts in its quote for a key (64 bytes, zero padded)."""
    return hashlib.sha256(spki_der).digest() + bytes(32)


def sgx_quote_report_data(quote: bytes) -> bytes:
    """REPORTDATA of an SGX quote (raises ParseError for a TDX quote or bad bytes)."""
    q = parse_quote(quote)
    if not isinstance(q.body, EnclaveReport):
        raise ParseError(Reason.UNSUPPORTED_EVIDENCE, "Gramine's legacy extension carries an SGX quote, got a TDX quote")
    return q.report_data


def gramine_policy(
    *,
    mrenclave: str | None = None,
    mrsigner: str | None = None,
    isv_prod_id: int | None = None,
    isv_svn: int | None = None,
    allow_debug: bool = False,
    tcb_statuses: list[str] | None = None,
    name: str = "gramine",
) -> Policy:
    """Gramine's ``ra_tls_verify_callback`` rules as a :class:`~ratls.policy.Policy`.

    MRENCLAVE and MRSIGNER equal, ISV product id equal, ISV SVN at least; at least one of
    MRENCLAVE / MRSIGNER is required (as Gramine requires). ``allow_debug`` is the dangerous switch
    Gramine calls ``RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE``; ``tcb_statuses`` lists the TCB statuses
    admitted besides ``UpToDate`` (Gramine's ``RA_TLS_ALLOW_OUTDATED_TCB_INSECURE`` and friends).
    """
    if mrenclave is None and mrsigner is None:
        raise UsageError(Reason.POLICY_INVALID, "Gramine rules need MRENCLAVE or MRSIGNER")
    rules: dict[str, Any] = {"x-ms-attestation-type": "sgx"}
    if mrenclave is not None:
        rules["x-ms-sgx-mrenclave"] = _hex32(mrenclave, "MRENCLAVE")
    if mrsigner is not None:
        rules["x-ms-sgx-mrsigner"] = _hex32(mrsigner, "MRSIGNER")
    if isv_prod_id is not None:
        rules["x-ms-sgx-product-id"] = int(isv_prod_id)
    if isv_svn is not None:
        rules["x-ms-sgx-svn"] = {"min": int(isv_svn)}
    rules["x-ms-sgx-is-debuggable"] = [False, True] if allow_debug else False
    if tcb_statuses:
        rules["tcb-status"] = sorted({"UpToDate", *tcb_statuses})
    return Policy.from_mapping({"$name": name, **rules})


def _hex32(v: str, what: str) -> str:
    h = v.lower().removeprefix("0x")
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise UsageError(Reason.POLICY_INVALID, f"{what} must be 32 bytes of hex, got {v!r}")
    return h
