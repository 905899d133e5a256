"""A test-only DCAP PKI: real TDX/SGX quotes re-signed under a generated Intel-like root.

We cannot sign as Intel, so paths that need a quote we choose (revocation, the dcap-qvl engine's
success path, report data bound to a certificate key) use a quote rebuilt under a generated root:
a real quote's header and body (its report data and, for SGX, its enclave identity replaced when
asked), a fresh attestation key, the QE report re-bound and signed by a test PCK whose SGX
extension is copied from the real PCK, TCB info / QE identity re-signed by a test TCB Signing key,
and root / PCK CA CRLs. Verifiers trust it only through ``VerifyOptions.intel_root_spki``.

Templates: ``tdx`` is the SPR TDX v4 quote of ``tdx/gtg-spr-v4-collateral`` (PCK Platform CA),
``sgx`` the Coffee Lake SGX v3 quote of ``sgx/mobilecoin-cfl-v3-collateral`` (PCK Processor CA).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ratls.evidence import Evidence, EvidenceType, VerifyOptions
from ratls.intel.collateral import KEY_CHAIN_TCB, KEY_CRL_PCK, KEY_CRL_ROOT, KEY_QEIDENTITY, KEY_TCBINFO, parse_pem_chain
from ratls.intel.pck import SGX_EXTENSION_OID, pck_extension
from ratls.intel.quote import (
    HEADER_SIZE,
    SGX_ISV_PROD_ID,
    SGX_ISV_SVN,
    SGX_MR_ENCLAVE,
    SGX_MR_SIGNER,
    SGX_REPORT_DATA,
    TD_ATTRIBUTES,
    TD_REPORT_DATA,
    encode_quote,
    parse_quote,
)
from tests.vectors import read

NOW = datetime(2024, 3, 1, tzinfo=UTC)

#: tee -> (vector, quote file, TCB info file, QE identity file)
TEMPLATES = {
    "tdx": ("tdx/gtg-spr-v4-collateral", "tdx_prod_quote_SPR_E4.dat", "sample_tcbInfo_response.json", "sample_qeIdentity_response.json"),
    "sgx": ("sgx/mobilecoin-cfl-v3-collateral", "hw_quote.dat", "tcb_info_fmspc_00906ED50000_2023_07_12.json", "qe_identity.json"),
}


def _rs(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _cert(subject, issuer, key, signer, *, ca: bool, serial: int, exts=()):
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=365))
        .not_valid_after(NOW + timedelta(days=365 * 5))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    for e in exts:
        b = b.add_extension(e, critical=False)
    return b.sign(signer, hashes.SHA256())


def _crl(issuer_cert, key, revoked=(), next_update=NOW + timedelta(days=30)):
    b = x509.CertificateRevocationListBuilder().issuer_name(issuer_cert.subject).last_update(NOW - timedelta(days=1)).next_update(next_update)
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - timedelta(days=2)).build())
    b = b.add_extension(x509.CRLNumber(1), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


@dataclass
class DcapTestPki:
    status: str = "UpToDate"
    advisories: list[str] = field(default_factory=list)
    revoke_leaf: bool = False
    revoke_ca: bool = False
    crl_next_update: datetime = NOW + timedelta(days=30)
    #: TD attribute SEPT_VE_DISABLE (bit 28): dcap-qvl insists on it, our policy decides
    sept_ve_disable: bool = True
    tee: str = "tdx"

    def __post_init__(self) -> None:
        name, quote_file, self._tcb_file, self._qe_file = TEMPLATES[self.tee]
        self.vector = name
        self.real = parse_quote(read(name, quote_file))
        real_chain = parse_pem_chain(self.real.pck_chain_pem)
        root_k, ca_k, self._leaf_k, self._tcb_k = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
        self.root = _cert(real_chain[2].subject, real_chain[2].subject, root_k, root_k, ca=True, serial=1)
        self.ca = _cert(real_chain[1].subject, self.root.subject, ca_k, root_k, ca=True, serial=2)
        sgx_ext = real_chain[0].extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        self.leaf = _cert(real_chain[0].subject, self.ca.subject, self._leaf_k, ca_k, ca=False, serial=3, exts=[sgx_ext])
        tcb_name = x509.Name(
            [a for a in real_chain[2].subject if a.oid != x509.NameOID.COMMON_NAME] + [x509.NameAttribute(x509.NameOID.COMMON_NAME, "Intel SGX TCB Signing")]
        )
        self.tcb_signer = _cert(tcb_name, self.root.subject, self._tcb_k, root_k, ca=False, serial=4)
        self.root_crl = _crl(self.root, root_k, [self.ca.serial_number] if self.revoke_ca else [], self.crl_next_update)
        self.pck_crl = _crl(self.ca, ca_k, [self.leaf.serial_number] if self.revoke_leaf else [], self.crl_next_update)
        self.fmspc = pck_extension(self.leaf).fmspc.hex()
        self.ca_kind = "processor" if "Processor" in self.ca.subject.rfc4514_string() else "platform"
        self.tcb_info, self.qe_identity = self._signed_collateral()

    @property
    def evidence_type(self) -> EvidenceType:
        return EvidenceType.TDX if self.tee == "tdx" else EvidenceType.SGX

    @property
    def root_spki(self) -> bytes:
        return self.root.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def options(self, **kw) -> VerifyOptions:
        return VerifyOptions(now=kw.pop("now", NOW), intel_root_spki=self.root_spki, **kw)

    def quote(self, report_data: bytes | None = None, *, mrenclave: bytes | None = None, mrsigner: bytes | None = None,
              isv_prod_id: int | None = None, isv_svn: int | None = None) -> bytes:
        """The template quote re-signed: report data (64 bytes) and, for SGX, the enclave identity replaced if given."""
        real = self.real
        ak = ec.generate_private_key(ec.SECP256R1())
        ak_xy = ak.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
        qe = bytearray(real.qe_report.raw)
        qe[SGX_REPORT_DATA] = hashlib.sha256(ak_xy + real.qe_auth_data).digest() + bytes(32)
        chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (self.leaf, self.ca, self.root))
        signed = bytearray(real.signed)

        def put(s: slice, value: bytes) -> None:
            assert len(value) == s.stop - s.start
            signed[HEADER_SIZE + s.start : HEADER_SIZE + s.stop] = value

        if self.tee == "tdx":
            if self.sept_ve_disable:
                signed[HEADER_SIZE + TD_ATTRIBUTES.start + 3] |= 0x10
            if report_data is not None:
                put(TD_REPORT_DATA, report_data.ljust(64, b"\0"))
            assert mrenclave is mrsigner is isv_prod_id is isv_svn is None, "enclave identity is SGX only"
        else:
            if report_data is not None:
                put(SGX_REPORT_DATA, report_data.ljust(64, b"\0"))
            if mrenclave is not None:
                put(SGX_MR_ENCLAVE, mrenclave)
            if mrsigner is not None:
                put(SGX_MR_SIGNER, mrsigner)
            if isv_prod_id is not None:
                put(SGX_ISV_PROD_ID, isv_prod_id.to_bytes(2, "little"))
            if isv_svn is not None:
                put(SGX_ISV_SVN, isv_svn.to_bytes(2, "little"))
        signed = bytes(signed)
        return encode_quote(signed, _rs(ak, signed), ak_xy, bytes(qe), _rs(self._leaf_k, bytes(qe)), real.qe_auth_data, chain_pem)

    def _signed_collateral(self) -> tuple[bytes, bytes]:
        tcb_info = json.loads(read(self.vector, self._tcb_file))["tcbInfo"]
        tcb_info["issueDate"] = (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        tcb_info["nextUpdate"] = (NOW + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        zero = [{"svn": 0} for _ in range(16)]
        # the platform's level first, so it is the one matched; a better level above it for realism
        if self.tee == "tdx":
            better_tcb = {"sgxtcbcomponents": [{"svn": 99}] * 16, "pcesvn": 99, "tdxtcbcomponents": [{"svn": 99}] * 16}
            mine_tcb = {"sgxtcbcomponents": zero, "pcesvn": 0, "tdxtcbcomponents": zero}
        else:
            better_tcb = {"sgxtcbcomponents": [{"svn": 99}] * 16, "pcesvn": 99}
            mine_tcb = {"sgxtcbcomponents": zero, "pcesvn": 0}
        better = {"tcb": better_tcb, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"}
        mine = {"tcb": mine_tcb, "tcbDate": "2023-01-01T00:00:00Z", "tcbStatus": self.status}
        if self.advisories:
            mine["advisoryIDs"] = self.advisories
        tcb_info["tcbLevels"] = [mine] if self.status == "UpToDate" else [better, mine]
        qe_id = json.loads(read(self.vector, self._qe_file))["enclaveIdentity"]
        qe_id["issueDate"], qe_id["nextUpdate"] = tcb_info["issueDate"], tcb_info["nextUpdate"]

        def signed_body(key: str, obj: dict) -> bytes:
            text = json.dumps(obj, separators=(",", ":"))
            return (f'{{"{key}":{text},"signature":"{_rs(self._tcb_k, text.encode()).hex()}"}}').encode()

        return signed_body("tcbInfo", tcb_info), signed_body("enclaveIdentity", qe_id)

    @property
    def tcb_chain_pem(self) -> bytes:
        return self.tcb_signer.public_bytes(Encoding.PEM) + self.root.public_bytes(Encoding.PEM)

    def endorsements(self) -> tuple[bytes, ...]:
        """The complete collateral as endorsements: TCB info, QE identity, root CRL, PCK CRL, TCB Signing chain."""
        return (self.tcb_info, self.qe_identity, self.root_crl, self.pck_crl, self.tcb_chain_pem)

    def collateral_items(self) -> dict[str, bytes]:
        """The same collateral under the getter keys a cache directory or a PCCS serves."""
        return {
            KEY_TCBINFO.format(tee=self.tee, fmspc=self.fmspc): self.tcb_info,
            KEY_QEIDENTITY.format(tee=self.tee): self.qe_identity,
            KEY_CRL_ROOT: self.root_crl,
            KEY_CRL_PCK.format(ca=self.ca_kind): self.pck_crl,
            KEY_CHAIN_TCB: self.tcb_chain_pem,
        }

    def attest(self, report_data: bytes, *, with_collateral: bool = True) -> Evidence:
        """An evidence provider over this PKI (``issue_certificate``'s ``attest``)."""
        return Evidence(self.evidence_type, self.quote(report_data), self.endorsements() if with_collateral else ())

    def build(self) -> tuple[Evidence, VerifyOptions]:
        return Evidence(self.evidence_type, self.quote(), self.endorsements()), self.options()
