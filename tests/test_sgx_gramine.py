"""Gramine RA-TLS interop: legacy and DICE certificates end to end, binding refusals, Gramine's rules as a policy."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from ratls.errors import ParseError, Reason, UsageError
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.intel.gramine import GRAMINE_LEGACY_OID, gramine_policy, legacy_binding_ok, legacy_report_data, sgx_quote_report_data
from ratls.policy import Policy
from tests.vectors import read, ref_time

OCC = "sgx/trustee-occlum-icx-v3"
MOB = "sgx/mobilecoin-cfl-v3-collateral"
MOB_COLLATERAL = ("tcb_info_fmspc_00906ED50000_2023_07_12.json", "qe_identity.json", "root_crl.der", "processor_crl.der", "tcb_signer.pem")


def legacy_cert(quote: bytes, now, key=None) -> tuple[bytes, bytes]:
    """A self-signed certificate as Gramine's ra_tls_create_key_and_crt_der builds it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(GRAMINE_LEGACY_OID), quote), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER), key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_binding_helper():
    spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    rd = legacy_report_data(spki)
    assert len(rd) == 64 and rd[:32] == hashlib.sha256(spki).digest()
    assert legacy_binding_ok(rd, spki)
    assert not legacy_binding_ok(rd, spki + b"\x00")
    assert not legacy_binding_ok(rd[:31], spki)


@pytest.mark.parametrize(("name", "file"), [(OCC, "occlum_quote.dat"), (MOB, "hw_quote.dat")])
def test_real_quote_in_legacy_cert_binding_refused(name, file):
    quote = read(name, file)
    der, spki = legacy_cert(quote, ref_time(name))
    cert = x509.load_der_x509_certificate(der)
    carried = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(GRAMINE_LEGACY_OID)).value.value
    assert carried == quote
    rd = sgx_quote_report_data(carried)
    assert rd == read(name, file)[368:432]  # header 48 + REPORT_DATA at 320
    assert not legacy_binding_ok(rd, spki), "a key whose SPKI hash is not in the quote must not bind"


def test_legacy_cert_end_to_end_refused_at_binding():
    """Through ratls.certificate: the quote verifies, then the report-data binding refuses it."""
    cert_mod = pytest.importorskip("ratls.certificate")
    quote = read(MOB, "hw_quote.dat")
    der, _ = legacy_cert(quote, ref_time(MOB))
    verdict = cert_mod.verify_certificate(der, VerifyOptions(now=ref_time(MOB)), None)
    assert verdict.error is not None
    assert verdict.error.reason is Reason.KEY_BINDING
    assert any(s.name == "quote-signature" and s.ok for s in verdict.steps), "the quote itself verified"


def test_tdx_quote_is_not_a_gramine_quote():
    with pytest.raises(ParseError) as e:
        sgx_quote_report_data(read("tdx/trustee-gnr-v4-tcbinfo", "tdx_quote_6.dat"))
    assert e.value.reason is Reason.UNSUPPORTED_EVIDENCE


def _claims(name, file, files=()):
    v = verify_evidence(Evidence(EvidenceType.SGX, read(name, file), tuple(read(name, f) for f in files)), VerifyOptions(now=ref_time(name)))
    assert v.verified, v.error
    return {**v.claims, "evidence-age-seconds": 0}


def test_gramine_rules_on_real_enclave():
    c = _claims(MOB, "hw_quote.dat", MOB_COLLATERAL)
    mrsigner = c["x-ms-sgx-mrsigner"]
    strict = gramine_policy(mrsigner=mrsigner, isv_prod_id=0, isv_svn=0, tcb_statuses=["SWHardeningNeeded"])
    # this capture's processor CRL is past its next update: refused by default, admitted by name
    assert c["collateral-stale"] is True
    assert [r.claim for r in strict.evaluate(c).failed] == ["collateral-stale"]
    ok = Policy.from_mapping({**strict.rules, "collateral-stale": [True, False]})
    assert ok.evaluate(c).ok

    def failed(policy):  # the stale CRL fails every strict policy; look at what else fails
        return {r.claim for r in policy.evaluate(c).failed} - {"collateral-stale"}

    assert failed(gramine_policy(mrsigner=mrsigner, isv_prod_id=0, isv_svn=1, tcb_statuses=["SWHardeningNeeded"])) == {"x-ms-sgx-svn"}
    assert failed(gramine_policy(mrsigner=mrsigner, isv_prod_id=1, tcb_statuses=["SWHardeningNeeded"])) == {"x-ms-sgx-product-id"}
    assert failed(gramine_policy(mrenclave="00" * 32, tcb_statuses=["SWHardeningNeeded"])) == {"x-ms-sgx-mrenclave"}
    # without admitting SWHardeningNeeded, the status refuses it as Gramine does by default
    assert failed(gramine_policy(mrsigner=mrsigner)) == {"tcb-status"}


def test_gramine_rules_refuse_debug_enclave_unless_allowed():
    c = _claims(OCC, "occlum_quote.dat")
    no_collateral = {"crl-checked": False, "qe-identity-checked": False}  # this capture comes without any

    def with_no_collateral(p):
        return Policy.from_mapping({**p.rules, **no_collateral})

    pol = gramine_policy(mrenclave=c["x-ms-sgx-mrenclave"], tcb_statuses=["Unknown"])
    assert {r.claim for r in pol.evaluate(c).failed} == {"x-ms-sgx-is-debuggable", *no_collateral}
    assert [r.claim for r in with_no_collateral(pol).evaluate(c).failed] == ["x-ms-sgx-is-debuggable"]
    assert with_no_collateral(gramine_policy(mrenclave=c["x-ms-sgx-mrenclave"], tcb_statuses=["Unknown"], allow_debug=True)).evaluate(c).ok


def test_gramine_rules_need_an_identity():
    with pytest.raises(UsageError):
        gramine_policy(isv_prod_id=1)
    with pytest.raises(UsageError):
        gramine_policy(mrenclave="abcd")


# --------------------------------------------------------------------------- end to end, test PKI
# An SGX quote re-signed under the test DCAP PKI (tests/dcap_pki.py) with an enclave identity we
# choose and report data that binds the certificate's key, in both certificate kinds Gramine makes.

MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(32, 64))
PROD_ID, SVN = 7, 5


@pytest.fixture(scope="module")
def sgx_pki():
    from tests.dcap_pki import DcapTestPki

    return DcapTestPki(tee="sgx")


def _identity_quote(pki, report_data: bytes) -> bytes:
    return pki.quote(report_data, mrenclave=MRENCLAVE, mrsigner=MRSIGNER, isv_prod_id=PROD_ID, isv_svn=SVN)


def _gramine_legacy_verdict(pki, policy):
    """Gramine's legacy certificate: the raw quote in 1.2.840.113741.1337.6, report_data[0:32] = SHA-256(SPKI)."""
    from ratls.certificate import verify_certificate
    from ratls.evidence import DictGetter
    from tests.dcap_pki import NOW

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    der, _ = legacy_cert(_identity_quote(pki, legacy_report_data(spki)), NOW, key)
    # the legacy extension has no room for endorsements: the collateral comes from the getter
    return verify_certificate(der, pki.options(collateral=DictGetter(pki.collateral_items())), policy)


def _gramine_dice_verdict(pki, policy):
    """Gramine 1.8+'s certificate: tagged evidence in 2.23.133.5.4.9, report_data = hash of the claims."""
    from cryptography.hazmat.primitives.serialization import Encoding as Enc

    from ratls.certificate import issue_certificate, new_key, verify_certificate
    from tests.dcap_pki import NOW

    cert = issue_certificate(new_key(), lambda rd: Evidence(EvidenceType.SGX, _identity_quote(pki, rd), pki.endorsements()), now=NOW)
    return verify_certificate(cert.public_bytes(Enc.DER), pki.options(), policy)


VERDICTS = {"legacy": _gramine_legacy_verdict, "dice": _gramine_dice_verdict}


def _rules(**overrides):
    kw = {"mrenclave": MRENCLAVE.hex(), "mrsigner": MRSIGNER.hex(), "isv_prod_id": PROD_ID, "isv_svn": SVN, **overrides}
    return gramine_policy(**kw)


@pytest.mark.parametrize("kind", sorted(VERDICTS))
def test_gramine_certificate_verifies_end_to_end_and_passes_gramine_rules(sgx_pki, kind):
    v = VERDICTS[kind](sgx_pki, _rules())
    assert v.verified, v.error
    assert v.ok, [r.to_dict() for r in v.policy.failed]
    binding = next(s for s in v.steps if s.name == "report-data-binding")
    assert binding.ok and ("Gramine legacy" in binding.detail) == (kind == "legacy")
    assert [s.name for s in v.steps if s.name == "key-binding"] == ([] if kind == "legacy" else ["key-binding"])
    c = v.claims
    assert (c["x-ms-sgx-mrenclave"], c["x-ms-sgx-mrsigner"]) == (MRENCLAVE.hex(), MRSIGNER.hex())
    assert (c["x-ms-sgx-product-id"], c["x-ms-sgx-svn"]) == (PROD_ID, SVN)
    assert c["crl-checked"] is True and c["qe-identity-checked"] is True and c["tcb-status"] == "UpToDate"
    # ISV SVN is "at least": an older required SVN passes too
    assert v.policy is not None and _rules(isv_svn=SVN - 1).evaluate(c).ok


@pytest.mark.parametrize("kind", sorted(VERDICTS))
@pytest.mark.parametrize(
    ("override", "claim"),
    [
        ({"mrenclave": "ab" * 32}, "x-ms-sgx-mrenclave"),
        ({"mrsigner": "cd" * 32}, "x-ms-sgx-mrsigner"),
        ({"isv_prod_id": PROD_ID + 1}, "x-ms-sgx-product-id"),
        ({"isv_svn": SVN + 1}, "x-ms-sgx-svn"),
    ],
    ids=["mrenclave", "mrsigner", "isv-prod-id", "isv-svn"],
)
def test_gramine_rule_changed_fails_naming_its_claim(sgx_pki, kind, override, claim):
    v = VERDICTS[kind](sgx_pki, _rules(**override))
    assert v.verified, v.error
    assert not v.ok
    assert [r.claim for r in v.policy.failed] == [claim]
    assert v.failed_step == "policy" and v.reason == Reason.POLICY_FAILED.value


def test_gramine_dice_certificate_with_quote_of_another_key_refused(sgx_pki):
    """DICE: a quote whose report data is the legacy hash of the key (not the claims hash) is refused."""
    from cryptography.hazmat.primitives.serialization import Encoding as Enc

    from ratls.certificate import issue_certificate, new_key, verify_certificate
    from tests.dcap_pki import NOW

    key = new_key()
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    cert = issue_certificate(key, lambda rd: Evidence(EvidenceType.SGX, _identity_quote(sgx_pki, legacy_report_data(spki)), sgx_pki.endorsements()), now=NOW)
    v = verify_certificate(cert.public_bytes(Enc.DER), sgx_pki.options(), _rules())
    assert (v.error.step, v.error.reason) == ("report-data-binding", Reason.REPORT_DATA_MISMATCH)
