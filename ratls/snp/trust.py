"""AMD's SEV-SNP trust anchors, shipped as package data and pinned by SHA-256 fingerprint.

``ratls/roots/amd/<product>_{vcek,vlek}.pem`` are the KDS ``cert_chain`` bundles (ASK or ASVK,
then ARK) of Milan, Genoa and Turin. The ARKs are the roots of trust; the ASK/ASVK are kept only
as convenient intermediates (they are trusted because they chain to a pinned ARK, not because
they are shipped). A file whose ARK does not match the fingerprint below is a broken install and
raises :class:`~ratls.errors.UsageError` rather than being trusted.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ..errors import Reason, UsageError
from .der import parse_cert, split_certs

#: product -> SHA-256 of the DER of its AMD Root Key certificate (ARK-<product>).
PINNED_ARK_SHA256: dict[str, str] = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

#: SHA-256 of the shipped intermediates (SEV-<product> ASK, SEV-VLEK-<product> ASVK), for review.
SHIPPED_INTERMEDIATE_SHA256: dict[tuple[str, str], str] = {
    ("Milan", "vcek"): "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
    ("Milan", "vlek"): "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    ("Genoa", "vcek"): "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
    ("Genoa", "vlek"): "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    ("Turin", "vcek"): "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
    ("Turin", "vlek"): "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
}


@cache
def _bundles() -> tuple[dict[str, bytes], tuple[bytes, ...]]:
    roots: dict[str, bytes] = {}
    intermediates: list[bytes] = []
    base = resources.files("ratls") / "roots" / "amd"
    for (product, kind), want in SHIPPED_INTERMEDIATE_SHA256.items():
        name = f"{product.lower()}_{kind}.pem"
        try:
            ders = split_certs((base / name).read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(Reason.CONFIG_INVALID, f"AMD trust bundle {name} unreadable: {e}") from e
        by_fp = {parse_cert(d).fingerprint: d for d in ders}
        ark_fp = PINNED_ARK_SHA256[product]
        if ark_fp not in by_fp or want not in by_fp:
            raise UsageError(Reason.CONFIG_INVALID, f"AMD trust bundle {name} does not hold the pinned ARK/intermediate (broken install)")
        roots[product] = by_fp[ark_fp]
        intermediates.append(by_fp[want])
    return roots, tuple(intermediates)


def amd_roots() -> dict[str, bytes]:
    """product -> DER of the pinned ARK."""
    return dict(_bundles()[0])


def amd_intermediates() -> tuple[bytes, ...]:
    """DER of the shipped ASKs and ASVKs (candidates only; trust comes from the ARK)."""
    return _bundles()[1]
