"""The simulated TEE: SEV-SNP-shaped evidence signed by a locally generated chain.

For laptops, CI and demos. A :class:`SimAuthority` holds an AMD-like chain generated on this
machine, ARK-Sim -> ASK-Sim (RSA, RSASSA-PSS SHA-384 salt 48, as AMD signs) -> VCEK-Sim (EC P-384,
with AMD's SPL/hwID extensions and productName ``Sim``), and signs real version-3 SNP reports with
the VCEK-Sim key. Verification (:func:`verify_evidence`) runs the very same code as real SNP
(:func:`ratls.snp.verify.verify_report`), with one trusted root: ``opts.sim_root``. So:

* without a configured sim root nothing simulated verifies (``untrusted-root``);
* simulated evidence never verifies as ``sev-snp`` (no pinned AMD root for product ``Sim``);
* its claims are the SNP claims with ``x-ms-attestation-type: sim``, which :mod:`ratls.policy`
  admits only when the policy names ``sim``.

Pure: no file or clock access (``generate`` takes ``now``); :mod:`ratls.io.simdir` is the edge
that keeps an authority in a directory. Randomness (keys, report ids) comes from the OS CSPRNG.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .errors import ParseError, Reason, UsageError
from .evidence import Evidence, EvidenceType, VerifyOptions
from .snp import abi
from .snp import verify as snp
from .snp.der import integer_extension, octets_extension, parse_cert, split_certs, string_extension
from .trail import Verification

SIM_PRODUCT = "Sim"
SIM_ATTESTATION_TYPE = "sim"
NO_SIM_ROOT = "simulated TEE not trusted: no sim root configured"
#: measurement of a simulated guest when the caller sets none (SHA-384 of a fixed label)
DEFAULT_MEASUREMENT = hashlib.sha384(b"ratls simulated TEE: default launch measurement").digest()
#: TCB the simulated firmware reports (Milan-like numbers; bootloader 3 meets Azure sample policies)
DEFAULT_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
SIM_FW = (1, 55, 0)  # major, minor, build
RSA_BITS = 2048  # AMD uses 4096; 2048 keeps `ratls sim init` fast and is plenty for a simulation
_PEM_KEY = re.compile(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", re.S)
_CPUID = {abi.MILAN: (0x19, 0x01, 0x01), abi.GENOA: (0x19, 0x11, 0x01), abi.TURIN: (0x1A, 0x02, 0x00)}
_ORG = "ratls simulated TEE (NOT A REAL TEE)"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=snp.PSS_SALT_LENGTH)


def _name(cn: str, instance: str) -> x509.Name:
    """AMD-style CN plus an OU unique to this authority, so two sims' chains never share names."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, instance),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        ]
    )


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(s: str) -> bytes:
    body = s.encode("ascii")
    return bytes([0x16, len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


@dataclass(frozen=True)
class SimAuthority:
    """The simulated chain and keys. Create with :meth:`generate` or :meth:`from_bytes`."""

    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey
    ark_der: bytes
    ask_der: bytes
    vcek_der: bytes

    @classmethod
    def generate(cls, *, now: datetime, chip_id: bytes | None = None, tcb: dict[str, int] | None = None, product: str = SIM_PRODUCT) -> SimAuthority:
        """A fresh chain valid from a day before ``now`` (clock skew) for 25 years (VCEK: 7).

        ``product`` other than ``Sim`` (``Milan``, ``Genoa``, ``Turin``) makes an AMD look-alike
        for tests of product-specific paths (Turin's TCB layout and 8-byte chip id); it verifies
        only where a test passes its root as ``VerifyOptions.amd_roots``.
        """
        if now.tzinfo is None:
            raise UsageError(Reason.CONFIG_INVALID, "SimAuthority.generate needs a timezone-aware now")
        chip_size = abi.TURIN_CHIP_ID_SIZE if product == abi.TURIN else 64
        chip = chip_id if chip_id is not None else secrets.token_bytes(chip_size)
        if len(chip) != chip_size:
            raise UsageError(Reason.CONFIG_INVALID, f"chip_id is {chip_size} bytes for {product}, got {len(chip)}")
        t = dict(DEFAULT_TCB, **(tcb or {}))
        fmc = (_ext(snp.OID_FMC_SPL, _der_int(t.get("fmc", 0))),) if product == abi.TURIN else ()
        start = now - timedelta(days=1)
        instance = f"instance {secrets.token_hex(8)}"
        ark_key = rsa.generate_private_key(65537, RSA_BITS)
        ask_key = rsa.generate_private_key(65537, RSA_BITS)
        vcek_key = ec.generate_private_key(ec.SECP384R1())

        def build(subject: str, issuer: str, key, signer, years: int, ca: bool, exts=()) -> bytes:
            b = (
                x509.CertificateBuilder()
                .subject_name(_name(subject, instance))
                .issuer_name(_name(issuer, instance))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + timedelta(days=365 * years))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            for e in exts:
                b = b.add_extension(e, critical=False)
            cert = b.sign(signer, hashes.SHA384(), rsa_padding=_PSS)
            return cert.public_bytes(serialization.Encoding.DER)

        ark = build(f"ARK-{product}", f"ARK-{product}", ark_key, ark_key, 25, True)
        ask = build(f"SEV-{product}", f"ARK-{product}", ask_key, ark_key, 25, True)
        vcek = build(
            snp.CN_VCEK,
            f"SEV-{product}",
            vcek_key,
            ask_key,
            7,
            False,
            (
                _ext(snp.OID_STRUCT_VERSION, _der_int(1)),
                _ext(snp.OID_PRODUCT_NAME, _der_ia5(product)),
                _ext(snp.OID_BL_SPL, _der_int(t["bootloader"])),
                _ext(snp.OID_TEE_SPL, _der_int(t["tee"])),
                _ext(snp.OID_SNP_SPL, _der_int(t["snp"])),
                _ext(snp.OID_UCODE_SPL, _der_int(t["microcode"])),
                _ext(snp.OID_HWID, chip),
                *fmc,
            ),
        )
        return cls(ark_key, ask_key, vcek_key, ark, ask, vcek)

    # -- serialisation ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """PEM: ARK, ASK, VCEK private keys (PKCS#8, unencrypted: keep the file 0600), then certs."""
        out = []
        for k in (self.ark_key, self.ask_key, self.vcek_key):
            out.append(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        for d in (self.ark_der, self.ask_der, self.vcek_der):
            out.append(x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM))
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> SimAuthority:
        """Inverse of :meth:`to_bytes`; checks that each key matches its certificate."""
        try:
            keys = [serialization.load_pem_private_key(m, None) for m in _PEM_KEY.findall(data)]
            certs = [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(data)]
        except (ValueError, TypeError) as e:
            raise UsageError(Reason.CONFIG_INVALID, f"simulated TEE authority does not parse: {e}") from e
        if len(keys) != 3 or len(certs) != 3 or not isinstance(keys[0], rsa.RSAPrivateKey) or not isinstance(keys[1], rsa.RSAPrivateKey) or not isinstance(keys[2], ec.EllipticCurvePrivateKey):
            raise UsageError(Reason.CONFIG_INVALID, "simulated TEE authority must hold 2 RSA keys, 1 EC key and 3 certificates")
        auth = cls(keys[0], keys[1], keys[2], certs[0], certs[1], certs[2])
        for key, der in zip(keys, certs, strict=True):
            if parse_cert(der).spki != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
                raise UsageError(Reason.CONFIG_INVALID, "simulated TEE authority: a key does not match its certificate")
        return auth

    @property
    def root_der(self) -> bytes:
        """DER of ARK-Sim: what a verifier configures as ``VerifyOptions.sim_root``."""
        return self.ark_der

    @property
    def root_fingerprint(self) -> str:
        return hashlib.sha256(self.ark_der).hexdigest()

    @property
    def product(self) -> str:
        return string_extension(parse_cert(self.vcek_der), snp.OID_PRODUCT_NAME) or SIM_PRODUCT

    @property
    def chip_id(self) -> bytes:
        """The VCEK hwID: 64 bytes, or 8 for a Turin look-alike."""
        return octets_extension(parse_cert(self.vcek_der), snp.OID_HWID, (64, 8)) or b""

    @property
    def tcb(self) -> dict[str, int]:
        c = parse_cert(self.vcek_der)
        oids = {"bootloader": snp.OID_BL_SPL, "tee": snp.OID_TEE_SPL, "snp": snp.OID_SNP_SPL, "microcode": snp.OID_UCODE_SPL}
        if self.product == abi.TURIN:
            oids["fmc"] = snp.OID_FMC_SPL
        return {k: integer_extension(c, o) or 0 for k, o in oids.items()}

    # -- evidence --------------------------------------------------------------------------

    def report(
        self,
        report_data: bytes,
        *,
        measurement: bytes = DEFAULT_MEASUREMENT,
        host_data: bytes = bytes(32),
        debug: bool = False,
        vmpl: int = 0,
        guest_svn: int = 0,
        family_id: bytes = bytes(16),
        image_id: bytes = bytes(16),
        migrate_ma: bool = False,
        report_id: bytes | None = None,
        version: int = 3,
        mit_vectors: tuple[int, int] = (0, 0),
    ) -> Evidence:
        """A version-3 SNP report signed by VCEK-Sim, with the VCEK and ASK as endorsements.

        ``report_data`` is at most 64 bytes (shorter is zero-padded, as guests do with a 32- or
        48-byte hash); ``measurement`` at most 48, ``host_data`` at most 32. ``version`` 5 adds the
        (launch, current) mitigation vectors ``mit_vectors``.
        """
        if version not in (3, 5):
            raise UsageError(Reason.CONFIG_INVALID, f"sim report: version {version} (the simulator writes 3 or 5)")
        for label, value, size in (("report_data", report_data, 64), ("measurement", measurement, 48), ("host_data", host_data, 32), ("family_id", family_id, 16), ("image_id", image_id, 16)):
            if not isinstance(value, (bytes, bytearray)) or len(value) > size:
                raise UsageError(Reason.CONFIG_INVALID, f"sim report: {label} must be at most {size} bytes")
        if not 0 <= vmpl <= 3:
            raise UsageError(Reason.CONFIG_INVALID, f"sim report: vmpl {vmpl} out of range 0..3")
        policy = abi.POLICY_SMT | abi.POLICY_RESERVED_ONE
        if debug:
            policy |= abi.POLICY_DEBUG
        if migrate_ma:
            policy |= abi.POLICY_MIGRATE_MA
        product = self.product
        tcb_raw = abi.encode_tcb(product, **self.tcb)
        buf = bytearray(abi.REPORT_SIZE)
        abi.put(buf, abi.VERSION, version)
        abi.put(buf, abi.GUEST_SVN, guest_svn)
        abi.put(buf, abi.POLICY, policy)
        abi.put(buf, abi.FAMILY_ID, bytes(family_id))
        abi.put(buf, abi.IMAGE_ID, bytes(image_id))
        abi.put(buf, abi.VMPL, vmpl)
        abi.put(buf, abi.SIGNATURE_ALGO, abi.SIG_ALGO_ECDSA_P384_SHA384)
        abi.put(buf, abi.CURRENT_TCB, tcb_raw)
        abi.put(buf, abi.PLATFORM_INFO, abi.PLATFORM_SMT_EN)
        abi.put(buf, abi.FLAGS, abi.SIGNING_KEY_VCEK << abi.FLAG_SIGNING_KEY_SHIFT)
        abi.put(buf, abi.REPORT_DATA, bytes(report_data))
        abi.put(buf, abi.MEASUREMENT, bytes(measurement))
        abi.put(buf, abi.HOST_DATA, bytes(host_data))
        abi.put(buf, abi.REPORT_ID, report_id if report_id is not None else secrets.token_bytes(32))
        abi.put(buf, abi.REPORT_ID_MA, b"\xff" * 32)
        abi.put(buf, abi.REPORTED_TCB, tcb_raw)
        # CPUID stays zero for "Sim" (no real product: the VCEK-Sim's productName decides).
        fam, mod, step = _CPUID.get(product, (0, 0, 0))
        abi.put(buf, abi.CPUID_FAM_ID, fam)
        abi.put(buf, abi.CPUID_MOD_ID, mod)
        abi.put(buf, abi.CPUID_STEP, step)
        abi.put(buf, abi.CHIP_ID, self.chip_id)
        abi.put(buf, abi.COMMITTED_TCB, tcb_raw)
        major, minor, build = SIM_FW
        for f, v in ((abi.CURRENT_BUILD, build), (abi.CURRENT_MINOR, minor), (abi.CURRENT_MAJOR, major), (abi.COMMITTED_BUILD, build), (abi.COMMITTED_MINOR, minor), (abi.COMMITTED_MAJOR, major)):
            abi.put(buf, f, v)
        abi.put(buf, abi.LAUNCH_TCB, tcb_raw)
        if version >= 5:
            abi.put(buf, abi.LAUNCH_MIT_VECTOR, mit_vectors[0])
            abi.put(buf, abi.CURRENT_MIT_VECTOR, mit_vectors[1])
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(buf[: abi.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
        abi.put(buf, abi.SIG_R, r)
        abi.put(buf, abi.SIG_S, s)
        return Evidence(EvidenceType.SIM, bytes(buf), (self.vcek_der, self.ask_der))


def is_sim_endorsement(blob: bytes) -> bool:
    """True when ``blob`` (DER or PEM, one certificate or a bundle) holds a VCEK with productName ``Sim``.

    For tools that get a raw report and must pick EvidenceType.SIM or SNP (``ratls inspect``): the
    report bytes alone cannot tell. Choosing wrongly is safe, it only fails verification.
    """
    try:
        ders = split_certs(bytes(blob))
    except (ParseError, TypeError):
        return False
    for d in ders:
        try:
            if string_extension(parse_cert(d), snp.OID_PRODUCT_NAME) == SIM_PRODUCT:
                return True
        except ParseError:
            continue
    return False


def looks_simulated(endorsements: tuple[bytes, ...] | list[bytes]) -> bool:
    """True when any endorsement is a simulated VCEK (:func:`is_sim_endorsement`)."""
    return any(is_sim_endorsement(e) for e in endorsements)


def verify_with_chain(evidence: Evidence, opts: VerifyOptions) -> tuple[Verification, snp.Chain | None]:
    """As :func:`verify_evidence`, also returning the established chain (verdict caches use its window)."""
    roots = {} if opts.sim_root is None else {SIM_PRODUCT: opts.sim_root}
    return snp.verify_report(evidence, opts, roots=roots, attestation_type=SIM_ATTESTATION_TYPE, missing_root=NO_SIM_ROOT)


def verify_evidence(evidence: Evidence, opts: VerifyOptions) -> Verification:
    """Verify simulated evidence through the SNP code path, trusting only ``opts.sim_root``."""
    return verify_with_chain(evidence, opts)[0]
