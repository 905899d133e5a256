"""Every real SEV-SNP vector verifies at its SOURCE.md reference time and yields the facts listed there."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ratls.errors import Reason
from ratls.evidence import DictGetter, Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.policy import Policy, parse_policy
from ratls.snp import abi
from ratls.snp import claims as C
from ratls.snp.der import integer_extension, octets_extension, parse_cert, split_certs
from ratls.snp.trust import PINNED_ARK_SHA256, amd_roots
from ratls.snp.verify import (
    OID_FMC_SPL,
    OID_HWID,
    OID_UCODE_SPL,
    SNP_CERTS_KEY,
    STEPS,
    kds_vcek_url,
    verify_endorsement_chain,
)
from tests.vectors import read, ref_time

# name -> (report file, endorsement files, expected facts). Facts are SOURCE.md's values.
VECTORS = {
    "snp/gsg-milan-v2-noidblock": (
        "attestation.bin",
        ["vcek.der"],
        {
            "version": 2,
            "product": "Milan",
            "report_data": "0102030405" + "00" * 59,
            "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
            "host_data": "00" * 32,
            "report_id": "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a",
            "chip_id": "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e53786184ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d",
            "tcb": (2, 0, 5, 68),
            "policy": 0xB0000,
            "vmpl": 0,
            "fw": "1.49",
            "debug": True,
            "signing_key": "vcek",
        },
    ),
    "snp/trustee-milan-v2-vcek": (
        "test-report.bin",
        ["test-vcek.der"],
        {
            "version": 2,
            "product": "Milan",
            "report_data": "ec6c52d7533cc2c4f45be7849cf112ab82b2009fe7bd43e71ed08c14400ad7e2" + "00" * 32,
            "measurement": "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
            "chip_id": "c38427a30d4c7af9d96f7a15",
            "tcb": (3, 0, 8, 115),
            "policy": 0x3001F,
            "vmpl": 0,
            "fw": "1.52",
            "debug": False,
            "signing_key": "vcek",
        },
    ),
    "snp/trustee-milan-v3-vlek-aws": (
        "test-vlek-report.bin",
        ["test-vlek.der"],
        {
            "version": 3,
            "product": "Milan",
            "report_data": "819770b7e6ea6df8dd8fd4dd146b073c0bf4f3ce5b0977ecac486e3a05ed1bd54e2a7ac1f5d1ca02e7d7d5ef9f73b8574fd9359e3a480d741a4478e8a7bc27ca",
            "measurement": "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
            "chip_id": "00" * 64,
            "tcb": (4, 0, 24, 217),
            "policy": 0x30000,
            "vmpl": 1,
            "fw": "1.55",
            "debug": False,
            "signing_key": "vlek",
        },
    ),
    "snp/virtee-milan-v2": (
        "report_milan.bin",
        ["vcek_milan.der"],
        {
            "version": 2,
            "product": "Milan",
            "report_data": "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd",
            "measurement": "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
            "host_data": "00" * 32,
            "chip_id": "d49554ec717f4e5b0fe6b143",
            "tcb": (3, 0, 8, 115),
            "policy": 0x30000,
            "vmpl": 0,
            "fw": "1.52",
            "debug": False,
            "signing_key": "vcek",
        },
    ),
    "azure/trustee-az-snp-vtpm-genoa": (
        "snp_report_genoa.bin",
        ["vcek-genoa.pem"],
        {
            "version": 3,
            "product": "Genoa",
            "report_data": "b581f12e29a2d7d64e5e0b738d563879a78b51c644d0fa0cce02b48699f6bf5f" + "00" * 32,
            "measurement": "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
            "chip_id": "0506ffba875e939c",
            "tcb": (10, 0, 23, 84),
            "policy": 0x3001F,
            "debug": False,
            "signing_key": "vcek",
        },
    ),
    "azure/trustee-az-snp-vtpm-milan": (
        "snp_report.bin",
        ["vcek.pem"],
        {
            "version": 2,
            "product": "Milan",
            "report_data": "b3fbad6514c83caeb0380882145e49f794229ef37c421b91fc47ff93556bafac",
            "measurement": "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
            "family_id": "01000000000000000000000000000000",
            "image_id": "02000000000000000000000000000000",
            "guest_svn": 5,
            "id_key_digest": "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3",
            "chip_id": "19752a447db501a3",
            "tcb": (3, 0, 8, 115),
            "policy": 0x3001F,
            "debug": False,
            "signing_key": "vcek",
        },
    ),
}


def evidence_of(name: str, report: str | None = None, ends: list[str] | None = None) -> Evidence:
    rep, default_ends, _ = VECTORS[name]
    return Evidence(EvidenceType.SNP, read(name, report or rep), tuple(read(name, e) for e in (ends or default_ends)))


def verify(ev: Evidence, at, **kw):
    return verify_evidence(ev, VerifyOptions(now=at, **kw))


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_verifies_with_source_facts(name):
    _, _, facts = VECTORS[name]
    v = verify(evidence_of(name), ref_time(name))
    assert v.verified, v.error
    assert [s.name for s in v.steps] == list(STEPS)
    c = v.claims
    assert c[C.ATTESTATION_TYPE] == "sevsnpvm"
    assert c[C.REPORT_VERSION] == facts["version"]
    assert c[C.PRODUCT_NAME] == facts["product"]
    assert c[C.REPORT_DATA].startswith(facts["report_data"])
    assert v.report_data.hex().startswith(facts["report_data"])
    assert c[C.LAUNCH_MEASUREMENT] == facts["measurement"]
    assert c[C.CHIP_ID].startswith(facts["chip_id"])
    bl, tee, snp, ucode = facts["tcb"]
    assert (c[C.BOOTLOADER_SVN], c[C.TEE_SVN], c[C.SNPFW_SVN], c[C.MICROCODE_SVN]) == (bl, tee, snp, ucode)
    assert c[C.GUEST_POLICY] == facts["policy"]
    assert c[C.IS_DEBUGGABLE] is facts["debug"]
    assert c[C.SIGNING_KEY] == facts["signing_key"]
    for key, claim in (("vmpl", C.VMPL), ("fw", C.FW_VERSION), ("guest_svn", C.GUEST_SVN)):
        if key in facts:
            assert c[claim] == facts[key]
    for key, claim in (("host_data", C.HOST_DATA), ("report_id", C.REPORT_ID), ("family_id", C.FAMILY_ID), ("image_id", C.IMAGE_ID), ("id_key_digest", C.ID_KEY_DIGEST)):
        if key in facts:
            assert c[claim] == facts[key]


def test_gsg_golden_fields_parse():
    """go-sev-guest's check_test.go golden values, read straight from the ABI parser."""
    r = abi.parse_report(read("snp/gsg-milan-v2-noidblock", "attestation.bin"))
    assert r.report_id_ma == b"\xff" * 32
    assert r.platform_info == 1
    assert r.reported_tcb_raw == r.launch_tcb_raw == 0x4405000000000002
    assert (r.current_major, r.current_minor, r.current_build) == (1, 49, 3)
    assert r.family_id == r.image_id == bytes(16)
    assert r.cpuid_family is None and r.cpuid_product is None  # v2: no CPUID
    assert str(r.tcb("reported", "Milan")) == "bootloader=2 tee=0 snp=5 microcode=68"


def test_vlek_report_flags_and_cpuid():
    r = abi.parse_report(read("snp/trustee-milan-v3-vlek-aws", "test-vlek-report.bin"))
    assert r.flags == 0x4 and r.signing_key == abi.SIGNING_KEY_VLEK
    assert (r.cpuid_family, r.cpuid_model) == (0x19, 0x01) and r.cpuid_product == "Milan"
    assert r.chip_id == bytes(64)


def test_genoa_cpuid_product():
    r = abi.parse_report(read("azure/trustee-az-snp-vtpm-genoa", "snp_report_genoa.bin"))
    assert (r.cpuid_family, r.cpuid_model, r.cpuid_product) == (0x19, 0x11, "Genoa")


def test_turin_vcek_chains_to_turin_root_with_8_byte_hwid():
    name = "snp/virtee-turin-vcek-chain"
    chain = verify_endorsement_chain(read(name, "vcek_turin.der"), [read(name, "cert_chain_turin.pem")], now=ref_time(name))
    assert chain.product == "Turin" and chain.kind == "vcek"
    assert chain.root.fingerprint == PINNED_ARK_SHA256["Turin"]
    assert octets_extension(chain.leaf, OID_HWID, (8,)) == bytes.fromhex("1e550a8ee5cf9f4d")
    assert integer_extension(chain.leaf, OID_FMC_SPL) == 0
    assert integer_extension(chain.leaf, OID_UCODE_SPL) == 9


def test_turin_vcek_against_genoa_root_fails():
    name = "snp/virtee-turin-vcek-chain"
    with pytest.raises(Exception) as ei:
        verify_endorsement_chain(read(name, "vcek_turin.der"), now=ref_time(name), roots={"Turin": amd_roots()["Genoa"]})
    assert ei.value.reason is Reason.UNTRUSTED_ROOT


def test_turin_tcb_layout_decoding():
    raw = abi.encode_tcb("Turin", fmc=1, bootloader=2, tee=3, snp=4, microcode=5)
    assert raw.to_bytes(8, "little") == bytes([1, 2, 3, 4, 0, 0, 0, 5])
    t = abi.TcbVersion.decode(raw, "Turin")
    assert (t.fmc, t.bootloader, t.tee, t.snp, t.microcode) == (1, 2, 3, 4, 5)
    m = abi.TcbVersion.decode(abi.encode_tcb("Milan", bootloader=2, tee=3, snp=4, microcode=5), "Milan")
    assert m.fmc is None and (m.bootloader, m.tee, m.snp, m.microcode) == (2, 3, 4, 5)
    assert abi.TcbVersion.decode(raw, "Milan").snp == 0  # the byte Turin uses for SNP is reserved on Milan


@pytest.mark.parametrize("fam,model,product", [(0x19, 0x01, "Milan"), (0x19, 0x11, "Genoa"), (0x19, 0xA0, "Genoa"), (0x1A, 0x02, "Turin"), (0x17, 0x31, None), (0, 0, None)])
def test_product_from_cpuid(fam, model, product):
    assert abi.product_from_cpuid(fam, model) == product


# -- negatives --------------------------------------------------------------------------------


@pytest.mark.parametrize("neg", ["NEGATIVE-test-vcek-invalid-legacy.der", "NEGATIVE-test-vcek-invalid-new.der"])
def test_negative_vcek_fails_chain(neg):
    name = "snp/trustee-milan-v2-vcek"
    v = verify(evidence_of(name, ends=[neg]), ref_time(name))
    assert not v.verified
    assert v.error.step == "chain-to-root" and v.error.reason is Reason.BAD_CHAIN_SIGNATURE
    # the hwID still parses (64 bytes, legacy bare or new OCTET STRING encoding)
    assert len(octets_extension(parse_cert(read(name, neg)), OID_HWID, (64,))) == 64


def test_vcek_of_another_chip_fails():
    a, b = "snp/trustee-milan-v2-vcek", "snp/virtee-milan-v2"
    ev = Evidence(EvidenceType.SNP, read(a, "test-report.bin"), (read(b, "vcek_milan.der"),))
    v = verify(ev, ref_time(a))
    assert not v.verified
    assert v.error.reason in (Reason.BAD_SIGNATURE, Reason.CHIP_ID_MISMATCH)
    assert v.error.step in ("report-signature", "tcb-binding")


def test_tampered_vcek_byte_42_fails_chain():
    name = "snp/trustee-milan-v2-vcek"
    vcek = bytearray(read(name, "test-vcek.der"))
    vcek[42] = (vcek[42] + 1) % 256
    v = verify(Evidence(EvidenceType.SNP, read(name, "test-report.bin"), (bytes(vcek),)), ref_time(name))
    assert v.error.step == "chain-to-root" and v.error.reason is Reason.BAD_CHAIN_SIGNATURE


def test_trustee_tcb_byte_384_fails():
    """trustee's check_report_tcb_failure: report[384] += 1 (bootloader SPL) must be rejected."""
    name = "snp/trustee-milan-v2-vcek"
    rep = bytearray(read(name, "test-report.bin"))
    rep[384] += 1
    v = verify(Evidence(EvidenceType.SNP, bytes(rep), (read(name, "test-vcek.der"),)), ref_time(name))
    assert v.error.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_reference_time_outside_vcek_window(name):
    ev = evidence_of(name)
    leaf = next(parse_cert(d) for e in ev.endorsements for d in split_certs(e) if parse_cert(d).subject_cn in ("SEV-VCEK", "SEV-VLEK"))
    early = verify(ev, leaf.not_before - timedelta(seconds=1))
    assert early.error.step == "cert-validity" and early.error.reason is Reason.CERT_NOT_YET_VALID
    late = verify(ev, leaf.not_after + timedelta(seconds=1))
    assert late.error.step == "cert-validity" and late.error.reason is Reason.CERT_EXPIRED


def test_vlek_window_is_one_year():
    name = "snp/trustee-milan-v3-vlek-aws"
    from datetime import UTC, datetime

    assert verify(evidence_of(name), datetime(2024, 12, 10, 23, 0, tzinfo=UTC)).verified
    assert verify(evidence_of(name), datetime(2024, 12, 10, 22, 0, tzinfo=UTC)).error.reason is Reason.CERT_NOT_YET_VALID
    assert verify(evidence_of(name), datetime(2025, 12, 11, tzinfo=UTC)).error.reason is Reason.CERT_EXPIRED


def test_swapped_product_root_fails():
    name = "snp/virtee-milan-v2"
    roots = amd_roots()
    v = verify(evidence_of(name), ref_time(name), amd_roots={"Milan": roots["Genoa"], "Genoa": roots["Genoa"]})
    assert v.error.step == "chain-to-root" and v.error.reason is Reason.UNTRUSTED_ROOT
    g = "azure/trustee-az-snp-vtpm-genoa"
    v = verify(evidence_of(g), ref_time(g), amd_roots={"Genoa": roots["Milan"]})
    assert v.error.step == "chain-to-root" and v.error.reason is Reason.UNTRUSTED_ROOT
    v = verify(evidence_of(g), ref_time(g), amd_roots={"Milan": roots["Milan"]})
    assert v.error.reason is Reason.UNTRUSTED_ROOT


def test_genoa_report_with_milan_vcek_is_wrong_product():
    g, m = "azure/trustee-az-snp-vtpm-genoa", "snp/virtee-milan-v2"
    ev = Evidence(EvidenceType.SNP, read(g, "snp_report_genoa.bin"), (read(m, "vcek_milan.der"),))
    v = verify(ev, ref_time(g))
    assert v.error.step == "find-endorsement" and v.error.reason is Reason.WRONG_PRODUCT


def test_missing_endorsement():
    name = "snp/virtee-milan-v2"
    v = verify(Evidence(EvidenceType.SNP, read(name, "report_milan.bin")), ref_time(name))
    assert v.error.step == "find-endorsement" and v.error.reason is Reason.MISSING_ENDORSEMENT


def test_vcek_found_in_collateral_by_kds_url_and_bundle_key():
    name = "snp/virtee-milan-v2"
    r = abi.parse_report(read(name, "report_milan.bin"))
    url = kds_vcek_url("Milan", r.chip_id, r.tcb("reported", "Milan"))
    assert url.startswith("https://kdsintf.amd.com/vcek/v1/Milan/d49554ec") and url.endswith("?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")
    bare = Evidence(EvidenceType.SNP, read(name, "report_milan.bin"))
    assert verify(bare, ref_time(name), collateral=DictGetter({url: read(name, "vcek_milan.der")})).verified
    bundle = read(name, "cert_chain_milan.pem") + b"\n" + parse_cert(read(name, "vcek_milan.der")).der
    assert verify(bare, ref_time(name), collateral=DictGetter({SNP_CERTS_KEY: _pem(parse_cert(read(name, "vcek_milan.der")).der) + bundle})).verified


def _pem(der: bytes) -> bytes:
    import base64

    b = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(b[i : i + 64] for i in range(0, len(b), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def test_endorsements_recognised_by_content_pem_der_bundles():
    """The VCEK as PEM inside a bundle with the chain, a stray JSON blob first, and junk: all fine."""
    name = "snp/virtee-milan-v2"
    vcek = read(name, "vcek_milan.der")
    ends = (b'{"tcbInfo": {}}', read(name, "cert_chain_milan.pem") + _pem(vcek), b"not a cert")
    assert verify(Evidence(EvidenceType.SNP, read(name, "report_milan.bin"), ends), ref_time(name)).verified
    # back-to-back DER certificates
    chain_ders = b"".join(split_certs(read(name, "cert_chain_milan.pem")))
    assert verify(Evidence(EvidenceType.SNP, read(name, "report_milan.bin"), (chain_ders + vcek,)), ref_time(name)).verified


def test_no_deprecation_warning_on_serial_zero(recwarn):
    cert = parse_cert(read("snp/gsg-milan-v2-noidblock", "vcek.der"))
    assert cert.serial == 0
    assert not [w for w in recwarn.list if "serial" in str(w.message).lower()]


# -- policy interplay ------------------------------------------------------------------------

AZURE_CONFIDENTIAL_AI_POLICY = {
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-sevsnpvm-bootloader-svn": 3,
    "x-ms-sevsnpvm-is-debuggable": False,
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-sevsnpvm-microcode-svn": {"min": 115},
    "x-ms-sevsnpvm-snpfw-svn": {"min": 8},
    "x-ms-sevsnpvm-tee-svn": 0,
}


def test_azure_style_policy_passes_real_milan_vector():
    name = "snp/virtee-milan-v2"
    v = verify(evidence_of(name), ref_time(name))
    res = Policy.from_mapping(AZURE_CONFIDENTIAL_AI_POLICY).evaluate(v.claims)
    assert res.ok, res.to_list()
    hostdata = parse_policy('{"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-hostdata": "' + "00" * 32 + '"}')
    assert hostdata.evaluate(v.claims).ok


def test_debug_vector_refused_by_default_policy():
    name = "snp/gsg-milan-v2-noidblock"
    v = verify(evidence_of(name), ref_time(name))
    res = Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(v.claims)
    assert not res.ok and [r.claim for r in res.failed] == [C.IS_DEBUGGABLE]


def test_vlek_out_of_date_tcb_needs_policy_naming_it():
    name = "snp/trustee-milan-v3-vlek-aws"
    v = verify(evidence_of(name), ref_time(name))
    assert v.claims[C.TCB_STATUS] == "OutOfDate"  # reported ucode 217 < committed 219
    assert [r.claim for r in Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(v.claims).failed] == ["tcb-status"]
    assert Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm", "tcb-status": ["UpToDate", "OutOfDate"]}).evaluate(v.claims).ok


def test_confidential_ai_sample_policy_text():
    """The client policy of Azure's confidential-ai sample, verbatim but for the hostdata value.

    ``x-ms-compliance-status`` is an appraisal Azure Attestation adds (Microsoft-signed UVM); raw
    SNP evidence cannot vouch for it, so that rule fails by name as a missing claim, and the rest
    of the template passes unchanged.
    """
    name = "snp/virtee-milan-v2"
    v = verify(evidence_of(name), ref_time(name))
    text = """{
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-compliance-status": "azure-compliant-uvm",
      "x-ms-sevsnpvm-bootloader-svn": 3,
      "x-ms-sevsnpvm-hostdata": "%s",
      "x-ms-sevsnpvm-is-debuggable": false
    }""" % ("00" * 32)
    res = parse_policy(text).evaluate(v.claims)
    assert [(r.claim, r.note) for r in res.failed] == [("x-ms-compliance-status", "claim missing from evidence")]
    without = parse_policy(text.replace('"x-ms-compliance-status": "azure-compliant-uvm",', ""))
    assert without.evaluate(v.claims).ok


def test_bogus_ask_in_evidence_does_not_hide_the_genuine_one():
    """An intermediate with the ASK's exact names but another key is tried, fails, and is passed over."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    name = "snp/virtee-milan-v2"
    real_ask = x509.load_pem_x509_certificates(read(name, "cert_chain_milan.pem"))[0]
    key = rsa.generate_private_key(65537, 2048)
    fake = (
        x509.CertificateBuilder()
        .subject_name(real_ask.subject)
        .issuer_name(real_ask.issuer)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(real_ask.not_valid_before_utc)
        .not_valid_after(real_ask.not_valid_after_utc)
        .sign(key, hashes.SHA384(), rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48))
        .public_bytes(serialization.Encoding.DER)
    )
    ev = Evidence(EvidenceType.SNP, read(name, "report_milan.bin"), (fake, read(name, "vcek_milan.der")))
    v = verify(ev, ref_time(name))
    assert v.verified, v.error
    assert "SEV-Milan" in v.steps[2].detail
    # the fake carries the genuine ASK's exact names, so it was a real candidate that got tried first
    from ratls.snp.der import parse_cert as pc

    assert pc(fake).subject == pc(split_certs(read(name, "cert_chain_milan.pem"))[0]).subject
