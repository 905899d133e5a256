"""Tamper table (go-tdx-guest TestNegativeVerification style): one change per row, named step + reason."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ratls.errors import Reason
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.collateral import parse_pem_chain
from ratls.intel.quote import HEADER_SIZE, SGX_REPORT_SIZE, encode_quote, parse_quote
from tests.vectors import read, ref_time

GNR = "tdx/trustee-gnr-v4-tcbinfo"
MOB = "sgx/mobilecoin-cfl-v3-collateral"
SPR = "tdx/gtg-spr-v4-collateral"


def flip(b: bytes, i: int) -> bytes:
    out = bytearray(b)
    out[i] ^= 0x01
    return bytes(out)


def rebuild(raw: bytes, **parts) -> bytes:
    q = parse_quote(raw)
    fields = {
        "signed": q.signed,
        "signature": q.signature,
        "attestation_key": q.attestation_key,
        "qe_report": q.qe_report.raw,
        "qe_report_signature": q.qe_report_signature,
        "qe_auth_data": q.qe_auth_data,
        "pck_chain_pem": q.pck_chain_pem,
    }
    fields.update(parts)
    return encode_quote(**fields)


def gnr_quote() -> bytes:
    return read(GNR, "tdx_quote_6.dat")


def gnr_collateral() -> list[bytes]:
    return [read(GNR, "tcbInfo.json"), read(GNR, "enclaveIdentity.json")]


def mob_collateral() -> list[bytes]:
    return [read(MOB, f) for f in ("tcb_info_fmspc_00906ED50000_2023_07_12.json", "qe_identity.json", "root_crl.der", "processor_crl.der", "tcb_signer.pem")]


def _q(f: Callable[[parse_quote], dict]) -> Callable[[bytes], bytes]:
    return lambda raw: rebuild(raw, **f(parse_quote(raw)))


def _swap_leaf(raw: bytes) -> bytes:
    q = parse_quote(raw)
    certs = parse_pem_chain(q.pck_chain_pem)
    other = x509.load_pem_x509_certificate(read(MOB, "UNRELATED-leaf_cert.pem"))
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in [other, *certs[1:]])
    return rebuild(raw, pck_chain_pem=pem)


def _drop_root(raw: bytes) -> bytes:
    q = parse_quote(raw)
    certs = parse_pem_chain(q.pck_chain_pem)
    return rebuild(raw, pck_chain_pem=b"".join(c.public_bytes(Encoding.PEM) for c in certs[:2]))


def _replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def f(b: bytes) -> bytes:
        assert old in b
        return b.replace(old, new, 1)

    return f


# (id, vector, quote mutation, collateral index + mutation, expected step, expected reason)
QUOTE_ROWS = [
    ("header-user-data", lambda r: flip(r, 30), "quote-signature", Reason.BAD_SIGNATURE),
    ("header-qe-svn", lambda r: flip(r, 8), "quote-signature", Reason.BAD_SIGNATURE),
    ("header-qe-vendor-id", lambda r: flip(r, 12), "parse-quote", Reason.WRONG_PRODUCT),
    ("body-mrtd", lambda r: flip(r, HEADER_SIZE + 140), "quote-signature", Reason.BAD_SIGNATURE),
    ("body-reportdata", lambda r: flip(r, HEADER_SIZE + 583), "quote-signature", Reason.BAD_SIGNATURE),
    ("quote-signature", _q(lambda q: {"signature": flip(q.signature, 5)}), "quote-signature", Reason.BAD_SIGNATURE),
    ("attestation-key", _q(lambda q: {"attestation_key": flip(q.attestation_key, 3)}), "qe-report-data", Reason.KEY_BINDING),
    ("qe-report", _q(lambda q: {"qe_report": flip(q.qe_report.raw, 100)}), "qe-report-signature", Reason.BAD_SIGNATURE),
    ("qe-report-data", _q(lambda q: {"qe_report": flip(q.qe_report.raw, SGX_REPORT_SIZE - 1)}), "qe-report-signature", Reason.BAD_SIGNATURE),
    ("qe-report-signature", _q(lambda q: {"qe_report_signature": flip(q.qe_report_signature, 40)}), "qe-report-signature", Reason.BAD_SIGNATURE),
    ("qe-auth-data", _q(lambda q: {"qe_auth_data": flip(q.qe_auth_data, 0)}), "qe-report-data", Reason.KEY_BINDING),
    ("pck-leaf-swapped", _swap_leaf, "pck-chain", Reason.BAD_CHAIN_SIGNATURE),
    ("pck-chain-no-root", _drop_root, "pck-chain", Reason.MISSING_ENDORSEMENT),
    ("truncated", lambda r: r[:1000], "parse-quote", Reason.TRUNCATED),
    ("version", lambda r: struct.pack("<H", 9) + r[2:], "parse-quote", Reason.UNSUPPORTED_VERSION),
]


@pytest.mark.parametrize(("row", "mutate", "step", "reason"), QUOTE_ROWS, ids=[r[0] for r in QUOTE_ROWS])
def test_tampered_quote(row, mutate, step, reason):
    ev = Evidence(EvidenceType.TDX, mutate(gnr_quote()), tuple(gnr_collateral()))
    v = verify_evidence(ev, VerifyOptions(now=ref_time(GNR)))
    assert not v.verified
    assert (v.error.step, v.error.reason) == (step, reason), v.error


def test_untampered_baselines_verify():
    assert verify_evidence(Evidence(EvidenceType.TDX, gnr_quote(), tuple(gnr_collateral())), VerifyOptions(now=ref_time(GNR))).verified
    assert verify_evidence(Evidence(EvidenceType.SGX, read(MOB, "hw_quote.dat"), tuple(mob_collateral())), VerifyOptions(now=ref_time(MOB))).verified


def _crl_sig_flip(der: bytes) -> bytes:
    return flip(der, len(der) - 3)


# (id, vector, collateral index, mutation, step, reason)
COLLATERAL_ROWS = [
    ("tcb-info-json", GNR, 0, _replace_once(b'"OutOfDate"', b'"UpToDate"'), "tcb-info-signature", Reason.COLLATERAL_SIGNATURE),
    ("tcb-info-fmspc", GNR, 0, _replace_once(b'"00A06D080000"', b'"00A06D080001"'), "tcb-info-signature", Reason.COLLATERAL_SIGNATURE),
    ("tcb-info-signature-length", GNR, 0, _replace_once(b'"signature":"', b'"signature":"00'), "collateral", Reason.BAD_FORMAT),
    ("qe-identity-json", GNR, 1, _replace_once(b'"isvsvn":', b'"isvsvn": '), "qe-identity-signature", Reason.COLLATERAL_SIGNATURE),
    ("qe-identity-garbled", GNR, 1, lambda b: b[:-20], "collateral", Reason.BAD_ENCODING),
    ("sgx-tcb-info-json", MOB, 0, _replace_once(b'"SWHardeningNeeded"', b'"UpToDate"'), "tcb-info-signature", Reason.COLLATERAL_SIGNATURE),
    ("sgx-qe-identity-json", MOB, 1, _replace_once(b'"UpToDate"', b'"OutOfDate"'), "qe-identity-signature", Reason.COLLATERAL_SIGNATURE),
    ("root-crl-signature", MOB, 2, _crl_sig_flip, "crl-revocation", Reason.COLLATERAL_SIGNATURE),
    ("pck-crl-signature", MOB, 3, _crl_sig_flip, "crl-revocation", Reason.COLLATERAL_SIGNATURE),
    ("intel-example-tcb-info", MOB, 0, lambda b: read(MOB, "NEGATIVE-example_tcb.json"), "tcb-info-signature", Reason.COLLATERAL_SIGNATURE),
    ("intel-example-qe-identity", MOB, 1, lambda b: read(MOB, "NEGATIVE-example_qe_identity.json"), "qe-identity-signature", Reason.COLLATERAL_SIGNATURE),
]


@pytest.mark.parametrize(("row", "name", "idx", "mutate", "step", "reason"), COLLATERAL_ROWS, ids=[r[0] for r in COLLATERAL_ROWS])
def test_tampered_collateral(row, name, idx, mutate, step, reason):
    if name == GNR:
        col, quote, kind = gnr_collateral(), gnr_quote(), EvidenceType.TDX
    else:
        col, quote, kind = mob_collateral(), read(MOB, "hw_quote.dat"), EvidenceType.SGX
    col[idx] = mutate(col[idx])
    v = verify_evidence(Evidence(kind, quote, tuple(col)), VerifyOptions(now=ref_time(name)))
    assert not v.verified
    assert (v.error.step, v.error.reason) == (step, reason), v.error


def test_tcb_info_signature_bytes_flipped():
    col = gnr_collateral()
    text = col[0].decode()
    i = text.index('"signature":"') + len('"signature":"')
    c = "0" if text[i] != "0" else "1"
    col[0] = (text[:i] + c + text[i + 1 :]).encode()
    v = verify_evidence(Evidence(EvidenceType.TDX, gnr_quote(), tuple(col)), VerifyOptions(now=ref_time(GNR)))
    assert (v.error.step, v.error.reason) == ("tcb-info-signature", Reason.COLLATERAL_SIGNATURE)


def test_tcb_info_for_other_platform_is_a_mismatch():
    """The SPR TCB info (validly signed) offered for the GNR quote: FMSPC mismatch, named."""
    col = [read(SPR, "sample_tcbInfo_response.json")]
    v = verify_evidence(Evidence(EvidenceType.TDX, gnr_quote(), tuple(col)), VerifyOptions(now=ref_time(GNR)))
    assert (v.error.step, v.error.reason) == ("tcb-info-signature", Reason.COLLATERAL_MISMATCH)


def test_untrusted_root_key():
    """A pinned key that is not the chain's root's: refused at pck-chain."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import PublicFormat

    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    v = verify_evidence(Evidence(EvidenceType.TDX, gnr_quote()), VerifyOptions(now=ref_time(GNR), intel_root_spki=other))
    assert (v.error.step, v.error.reason) == ("pck-chain", Reason.UNTRUSTED_ROOT)
