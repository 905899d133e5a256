"""Collateral readers and the PCCS/cache getters (a real HTTP server on loopback, port 0)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratls.errors import CollateralError, Reason, UsageError
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.collateral import Collateral, classify, parse_crl, parse_pem_chain, parse_signed_json
from ratls.io.collateral import CHAIN_KEY, CacheDir, ChainGetter, PccsGetter
from tests.fake_pccs import FakePccs
from tests.vectors import read, ref_time

GNR = "tdx/trustee-gnr-v4-tcbinfo"
SPR = "tdx/gtg-spr-v4-collateral"


def gnr_pccs() -> FakePccs:
    """A PCCS on loopback serving the GNR vector's TCB info and TD_QE identity, and SPR's root CRL as hex."""
    return FakePccs({
        "/tdx/certification/v4/tcb?fmspc=00A06D080000": (read(GNR, "tcbInfo.json"), "TCB-Info-Issuer-Chain"),
        "/tdx/certification/v4/qe/identity": (read(GNR, "enclaveIdentity.json"), "SGX-Enclave-Identity-Issuer-Chain"),
        "/sgx/certification/v4/rootcacrl": (read(SPR, "rootcrl.der").hex().encode(), None),
    }, read(SPR, "tcb_info_issuer_chain.pem"))


@pytest.fixture(scope="module")
def pccs():
    p = gnr_pccs()
    yield p
    p.close()


def test_pccs_fetch_then_cache(pccs, tmp_path):
    cache = CacheDir(tmp_path)
    g = PccsGetter(pccs.url, cache)
    ev = Evidence(EvidenceType.TDX, read(GNR, "tdx_quote_6.dat"))
    v = verify_evidence(ev, VerifyOptions(now=ref_time(GNR), collateral=g))
    assert v.verified, v.error
    assert v.claims["tcb-status"] == "OutOfDate"
    assert g.fetches >= 2
    assert cache.get("tcbinfo/tdx/00a06d080000") == read(GNR, "tcbInfo.json")
    assert parse_pem_chain(cache.get(CHAIN_KEY))[0].subject.rfc4514_string().endswith("CN=Intel SGX TCB Signing")
    before = len(pccs.hits)
    v2 = verify_evidence(ev, VerifyOptions(now=ref_time(GNR), collateral=g))
    assert v2.verified and v2.claims["tcb-status"] == "OutOfDate"
    again = pccs.hits[before:]
    assert not any("/tcb?" in h or "/qe/identity" in h for h in again), f"cached entries fetched again: {again}"


def test_cache_dir_alone_serves_offline(pccs, tmp_path):
    PccsGetter(pccs.url, CacheDir(tmp_path)).get("tcbinfo/tdx/00a06d080000")
    ev = Evidence(EvidenceType.TDX, read(GNR, "tdx_quote_6.dat"))
    v = verify_evidence(ev, VerifyOptions(now=ref_time(GNR), collateral=CacheDir(tmp_path)))
    assert v.verified and v.claims["tcb-status"] == "OutOfDate"


def test_expired_cache_refetches_and_falls_back_when_down(pccs, tmp_path):
    cache = CacheDir(tmp_path)
    g = PccsGetter(pccs.url, cache, max_age_s=0)
    key = "qeidentity/tdx"
    assert g.get(key) == read(GNR, "enclaveIdentity.json")
    n = len(pccs.hits)
    assert g.get(key) is not None and len(pccs.hits) == n + 1, "max_age_s=0 refetches"
    down = PccsGetter("http://127.0.0.1:9", cache, max_age_s=0, timeout=2)
    assert down.get(key) == read(GNR, "enclaveIdentity.json"), "a failed fetch serves the older cached copy"
    assert down.errors


def test_pccs_404_and_hex_crl(pccs, tmp_path):
    g = PccsGetter(pccs.url, CacheDir(tmp_path))
    assert g.get("tcbinfo/sgx/00906ed50000") is None
    assert "HTTP 404" in g.errors[-1]
    crl = parse_crl(g.get("crl/root"))
    assert "Root CA" in crl.issuer.rfc4514_string()
    assert g.get("unknown/key") is None


def test_bad_keys_and_urls(tmp_path):
    for key in ("../etc/passwd", "/abs", "a//b", "A/B"):
        with pytest.raises(UsageError):
            CacheDir(tmp_path).get(key)
    with pytest.raises(UsageError) as e:
        PccsGetter("file:///etc")
    assert e.value.reason is Reason.CONFIG_INVALID


def test_chain_getter_order(tmp_path):
    a, b = CacheDir(tmp_path / "a"), CacheDir(tmp_path / "b")
    b.put("crl/root", b"B")
    assert ChainGetter(a, b).get("crl/root") == b"B"
    a.put("crl/root", b"A")
    assert ChainGetter(a, b).get("crl/root") == b"A"


def test_recognised_by_content():
    col = Collateral()
    kinds = [classify(read(SPR, f), col) for f in ("sample_tcbInfo_response.json", "sample_qeIdentity_response.json", "pckcrl.der", "rootcrl.der", "tcb_info_issuer_chain.pem")]
    assert kinds == ["tcbInfo", "enclaveIdentity", "crl", "crl", "chain"]
    assert col.complete and len(col.certs) == 2
    assert classify(b"\x00garbage", col) == "unrecognised"
    pem_crl = b"-----BEGIN X509 CRL-----\n" + __import__("base64").encodebytes(read(SPR, "rootcrl.der")) + b"-----END X509 CRL-----\n"
    assert parse_crl(pem_crl).issuer == parse_crl(read(SPR, "rootcrl.der")).issuer


def test_der_crl_ending_in_a_whitespace_byte_parses_in_every_form():
    """A DER CRL's last byte is its signature's: 6 of 256 values are ASCII whitespace, which a
    strip() meant for the text forms (PEM, PCCS hex) used to cut off (a 2% flake with fresh keys)."""
    import base64
    import datetime

    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    issuer = cx509.Name([cx509.NameAttribute(cx509.NameOID.COMMON_NAME, "test CA")])
    when = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(20000):
        crl = (cx509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(when)
               .next_update(when + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
        der = crl.public_bytes(Encoding.DER)
        if der[-1:] in (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c"):
            break
    else:
        raise AssertionError("no CRL signature ended in a whitespace byte")
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(der) + b"-----END X509 CRL-----\n"
    for form in (der, pem, der.hex().encode(), der.hex().encode() + b"\n", b"\n" + pem):
        assert parse_crl(form).public_bytes(Encoding.DER) == der


def test_signed_bytes_are_the_served_bytes():
    sj = parse_signed_json(read(SPR, "sample_tcbInfo_response.json"))
    assert sj.signed.startswith(b'{"id":"TDX"') and sj.signed.endswith(b"}")
    assert len(sj.signature) == 64


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_collateral_readers_raise_only_typed_errors(data):
    for fn in (parse_signed_json, parse_crl, parse_pem_chain, lambda d: classify(d, Collateral())):
        try:
            fn(data)
        except CollateralError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2400), st.integers(min_value=0, max_value=255))
def test_mutated_tcb_info_raises_only_typed_errors(pos, byte):
    raw = bytearray(read(SPR, "sample_tcbInfo_response.json"))
    raw[pos % len(raw)] = byte
    try:
        parse_signed_json(bytes(raw))
    except CollateralError:
        pass


def test_several_candidates_the_matching_one_is_used():
    """A collateral folder holds Intel's documentation examples too: the matching, latest one wins."""
    mob = "sgx/mobilecoin-cfl-v3-collateral"
    files = ["NEGATIVE-example_tcb.json", "NEGATIVE-example_qe_identity.json", "tcb_info_fmspc_00906ED50000_2023_07_12.json", "qe_identity.json", "root_crl.der", "processor_crl.der"]
    ev = Evidence(EvidenceType.SGX, read(mob, "hw_quote.dat"), tuple(read(mob, f) for f in files))
    v = verify_evidence(ev, VerifyOptions(now=ref_time(mob)))
    assert v.verified, v.error
    assert v.claims["tcb-status"] == "SWHardeningNeeded"


def test_getter_fills_only_what_endorsements_lack():
    """The root CRL rides along; the PCK CRL and the JSON bodies come from the getter."""
    from ratls.evidence import DictGetter

    ev = Evidence(EvidenceType.TDX, read(SPR, "tdx_prod_quote_SPR_E4.dat"), (read(SPR, "rootcrl.der"),))
    asked: list[str] = []
    items = {
        "crl/pck-platform": read(SPR, "pckcrl.der"),
        "tcbinfo/tdx/50806f000000": read(SPR, "sample_tcbInfo_response.json"),
        "qeidentity/tdx": read(SPR, "sample_qeIdentity_response.json"),
    }

    class Recording(DictGetter):
        def get(self, key):
            asked.append(key)
            return super().get(key)

    v = verify_evidence(ev, VerifyOptions(now=ref_time(SPR), collateral=Recording(items)))
    assert "crl/pck-platform" in asked and "crl/root" not in asked
    assert (v.error.step, v.error.reason) == ("tcb-level-match", Reason.TCB_LEVEL_NOT_FOUND), "complete collateral: the real verdict"
    assert next(s for s in v.steps if s.name == "crl-revocation").ok
