"""Pinned Intel trust anchors (package data in ``ratls/roots/intel/``).

The Intel SGX Root CA is pinned by its public key (SHA-256 of the DER SubjectPublicKeyInfo), not by
certificate hash: Intel re-issued the root and the TCB Signing certificate with the same keys, and
older PCK chains still end in the earlier issuance. The TCB Signing certificates (both issuances,
public, served by PCS in the ``TCB-Info-Issuer-Chain`` header) are shipped because collateral
bodies do not carry their signer; they are only used after they chain to the pinned root.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: SHA-256 of the Intel SGX Root CA's DER SubjectPublicKeyInfo
INTEL_ROOT_SPKI_SHA256 = "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _read(name: str) -> bytes:
    return resources.files("ratls").joinpath("roots", "intel", name).read_bytes()


@cache
def intel_root() -> x509.Certificate:
    cert = x509.load_der_x509_certificate(_read("intel_sgx_root_ca.der"))
    if hashlib.sha256(spki_der(cert)).hexdigest() != INTEL_ROOT_SPKI_SHA256:
        raise RuntimeError("packaged Intel SGX Root CA does not match the pinned key")
    return cert


@cache
def intel_root_spki() -> bytes:
    return spki_der(intel_root())


@cache
def tcb_signing_certs() -> tuple[x509.Certificate, ...]:
    return tuple(
        x509.load_pem_x509_certificate(_read(n)) for n in ("intel_sgx_tcb_signing_2018-2025.pem", "intel_sgx_tcb_signing_2025-2032.pem")
    )
