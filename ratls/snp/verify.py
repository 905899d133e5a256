"""SEV-SNP report verification: numbered steps from the bytes to the claims.

The steps, in order (each a :class:`~ratls.trail.Trail` step with this name):

1. ``parse-report``     the 1184-byte report, field by field (:mod:`ratls.snp.abi`).
2. ``find-endorsement`` the VCEK or VLEK the report's SIGNING_KEY names, found by content among
                        the evidence's endorsements, then ``opts.collateral``; the product line
                        (CPUID for v3+, the certificate's productName otherwise; both must agree).
3. ``chain-to-root``    VCEK <- ASK <- ARK or VLEK <- ASVK <- ARK, RSASSA-PSS SHA-384 salt 48,
                        the ARK self-signed and the pinned root *of that product* only.
4. ``cert-validity``    every certificate of the chain at ``opts.now``.
5. ``report-signature`` ECDSA P-384 / SHA-384 over bytes [0, 0x2A0) with the VCEK/VLEK key.
6. ``tcb-binding``      the VCEK's SPL extensions equal REPORTED_TCB; its hwID equals CHIP_ID.
7. ``claims``           flat claims with Azure Attestation's names (:mod:`ratls.snp.claims`).
8. ``azure-hcl-report`` only when an Azure HCL report is among the endorsements: it holds this
                        very report, and REPORT_DATA begins with the hash of its runtime-data JSON,
                        whose claims (``x-ms-runtime`` ...) are added (:mod:`ratls.intel.azure`).

The simulated TEE (:mod:`ratls.sim`) runs exactly this code with its own root table.

Collateral keys (``opts.collateral.get``): :data:`SNP_CERTS_KEY` (any bundle of VCEK/VLEK/ASK/ASVK
certificates), the KDS VCEK URL of the report (:func:`kds_vcek_url`) and the KDS chain URL
(:func:`kds_chain_url`), as go-sev-guest names them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import CollateralError, ParseError, Reason, VerificationError
from ..evidence import Evidence, EvidenceType, VerifyOptions, run_verifier
from ..intel import azure
from ..trail import Trail, Verification
from . import abi
from .claims import SEVSNPVM, snp_claims
from .der import OID_SHA384, Cert, integer_extension, octets_extension, parse_cert, split_certs, string_extension
from .trust import amd_intermediates, amd_roots

# AMD certificate extensions (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
# Interface Specification", table "VCEK X.509 extensions").
OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"  # Turin
OID_HWID = "1.3.6.1.4.1.3704.1.4"
OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"  # VLEK

CN_VCEK = "SEV-VCEK"
CN_VLEK = "SEV-VLEK"
PSS_SALT_LENGTH = 48
KDS = "https://kdsintf.amd.com"
#: collateral key under which any bundle of SNP certificates may be offered
SNP_CERTS_KEY = "sev-snp/certs"

STEP_PARSE = "parse-report"
STEP_FIND = "find-endorsement"
STEP_CHAIN = "chain-to-root"
STEP_VALIDITY = "cert-validity"
STEP_SIGNATURE = "report-signature"
STEP_TCB = "tcb-binding"
STEP_CLAIMS = "claims"
STEP_AZURE_HCL = "azure-hcl-report"
STEPS = (STEP_PARSE, STEP_FIND, STEP_CHAIN, STEP_VALIDITY, STEP_SIGNATURE, STEP_TCB, STEP_CLAIMS)


def kds_vcek_url(product: str, chip_id: bytes, tcb: abi.TcbVersion) -> str:
    """The AMD KDS URL of a VCEK (the collateral key a cache or fetcher stores it under)."""
    q = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product == abi.TURIN:
        q = f"fmcSPL={tcb.fmc}&" + q
    return f"{KDS}/vcek/v1/{product}/{chip_id.hex()}?{q}"


def kds_chain_url(product: str, kind: str) -> str:
    """KDS ``cert_chain`` URL (``kind`` is ``vcek`` or ``vlek``): the ASK/ASVK + ARK bundle."""
    return f"{KDS}/{kind}/v1/{product}/cert_chain"


@dataclass(frozen=True)
class Chain:
    """What ``chain-to-root`` established: leaf (VCEK/VLEK), intermediate (ASK/ASVK), root (ARK)."""

    kind: str  # "vcek" | "vlek"
    product: str
    leaf: Cert
    intermediate: Cert
    root: Cert

    @property
    def certs(self) -> tuple[Cert, Cert, Cert]:
        return (self.leaf, self.intermediate, self.root)

    @property
    def window(self) -> tuple[datetime, datetime]:
        """The time window in which every certificate of the chain is valid."""
        return max(c.not_before for c in self.certs), min(c.not_after for c in self.certs)


def _cert_name(c: Cert) -> str:
    return c.subject_cn or c.fingerprint[:16]


def _certs_in(blobs: Iterable[bytes]) -> tuple[list[Cert], list[str]]:
    """Certificates recognised by content among ``blobs``; the second list says what was skipped."""
    out: list[Cert] = []
    skipped: list[str] = []
    for blob in blobs:
        if not isinstance(blob, (bytes, bytearray)):
            continue
        try:
            ders = split_certs(bytes(blob))
        except ParseError as e:
            skipped.append(e.detail)
            continue
        for der in ders:
            try:
                out.append(parse_cert(der))
            except ParseError as e:
                skipped.append(e.detail)
    return out, skipped


def _leaf_kind(c: Cert) -> str | None:
    if OID_PRODUCT_NAME not in c.extensions or OID_BL_SPL not in c.extensions:
        return None
    if c.subject_cn == CN_VLEK or OID_CSP_ID in c.extensions:
        return "vlek"
    if c.subject_cn == CN_VCEK or OID_HWID in c.extensions:
        return "vcek"
    return None


def _cert_product(c: Cert) -> str | None:
    name = string_extension(c, OID_PRODUCT_NAME)
    return abi.product_line(name) if name else None


def _spl(c: Cert, oid: str, label: str) -> int:
    v = integer_extension(c, oid)
    if v is None:
        raise VerificationError(Reason.TCB_MISMATCH, f"{_cert_name(c)} lacks the {label} extension ({oid})")
    return v


def _leaf_matches(c: Cert, report: abi.Report, product: str | None) -> bool:
    """Cheap preference among several candidate leaves: same chip and same reported TCB."""
    try:
        tcb = report.tcb("reported", product)
        if integer_extension(c, OID_BL_SPL) != tcb.bootloader or integer_extension(c, OID_UCODE_SPL) != tcb.microcode:
            return False
        hwid = octets_extension(c, OID_HWID, (64, 8))
        return hwid is None or hwid == report.chip_id[: len(hwid)]
    except ParseError:
        return False


def _collateral(opts: VerifyOptions, keys: Iterable[str]) -> list[bytes]:
    if opts.collateral is None:
        return []
    out = []
    for k in keys:
        blob = opts.collateral.get(k)
        if blob:
            out.append(blob)
    return out


def _find_endorsement(report: abi.Report, evidence: Evidence, opts: VerifyOptions) -> tuple[str, Cert, str, list[Cert]]:
    """Return (kind, leaf, product, all certificates seen)."""
    if report.signing_key == abi.SIGNING_KEY_VCEK:
        kind = "vcek"
    elif report.signing_key == abi.SIGNING_KEY_VLEK:
        kind = "vlek"
    else:
        raise VerificationError(Reason.BAD_SIGNATURE, f"report SIGNING_KEY is {report.signing_key}: the report is not signed by a VCEK or VLEK")
    cpu_product = report.cpuid_product
    seen, skipped = _certs_in(evidence.endorsements)
    leaves = [c for c in seen if _leaf_kind(c) == kind]
    if not leaves and opts.collateral is not None:
        keys = [SNP_CERTS_KEY]
        products = [cpu_product] if cpu_product else [abi.MILAN, abi.GENOA, abi.TURIN]
        if kind == "vcek":
            for p in products:
                keys.append(kds_vcek_url(p, report.chip_id_for(p), report.tcb("reported", p)))
        more, skipped2 = _certs_in(_collateral(opts, keys))
        skipped += skipped2
        seen += more
        leaves = [c for c in more if _leaf_kind(c) == kind]
    if not leaves:
        why = f" ({len(skipped)} unreadable certificate(s): {skipped[0]})" if skipped else ""
        raise CollateralError(Reason.MISSING_ENDORSEMENT, f"no {kind.upper()} certificate among the endorsements or collateral{why}")
    leaf = next((c for c in leaves if _leaf_matches(c, report, cpu_product or _cert_product(c))), leaves[0])
    cert_product = _cert_product(leaf)
    if cpu_product and cert_product and cpu_product != cert_product:
        raise VerificationError(Reason.WRONG_PRODUCT, f"report CPUID says {cpu_product}, the {kind.upper()} is for {cert_product}")
    product = cpu_product or cert_product
    if not product:
        raise VerificationError(Reason.WRONG_PRODUCT, f"cannot tell the product line: report v{report.version} has no CPUID and the {kind.upper()} has no productName")
    if report.version >= 3 and cpu_product is None and cert_product in (abi.MILAN, abi.GENOA, abi.TURIN):
        fam, mod = report.cpuid_family, report.cpuid_model
        raise VerificationError(Reason.WRONG_PRODUCT, f"report CPUID family 0x{fam:02x} model 0x{mod:02x} is not an {cert_product} part")
    return kind, leaf, product, seen


@lru_cache(maxsize=64)
def _check_self_signed(root_der: bytes) -> None:
    """ARK self-signature (memoised by content: a pinned root is checked once per process)."""
    root = parse_cert(root_der)
    if not root.self_issued:
        raise VerificationError(Reason.UNTRUSTED_ROOT, f"root {_cert_name(root)} is not self-issued")
    _verify_pss(root, root)


def _verify_pss(child: Cert, issuer: Cert) -> None:
    """RSASSA-PSS SHA-384 / MGF1-SHA-384 / salt 48 over the child's TBS, as AMD signs its chain."""
    if child.tbs_sig_alg != child.outer_sig_alg:
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{_cert_name(child)}: signed algorithm identifier differs from the outer one")
    p = child.pss
    if p is None or p.hash_oid != OID_SHA384 or p.mgf_hash_oid != OID_SHA384 or p.salt_length != PSS_SALT_LENGTH:
        got = "not RSASSA-PSS" if p is None else f"hash {p.hash_oid}, mgf {p.mgf_hash_oid}, salt {p.salt_length}"
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{_cert_name(child)}: signature algorithm must be RSASSA-PSS SHA-384 salt 48, got {got}")
    key = issuer.public_key
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{_cert_name(issuer)} does not hold an RSA key")
    try:
        key.verify(
            child.signature,
            child.tbs,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH),
            hashes.SHA384(),
        )
    except InvalidSignature as e:
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{_cert_name(child)} is not signed by {_cert_name(issuer)}") from e


def _chain_to_root(kind: str, leaf: Cert, product: str, seen: list[Cert], opts: VerifyOptions, roots: Mapping[str, bytes], missing_root: str | None) -> Chain:
    root_der = roots.get(product)
    if root_der is None:
        detail = missing_root or f"no trusted AMD root for product {product!r} (trusted: {', '.join(sorted(roots)) or 'none'})"
        raise VerificationError(Reason.UNTRUSTED_ROOT, detail)
    try:
        root = parse_cert(root_der)
    except ParseError as e:
        raise VerificationError(Reason.UNTRUSTED_ROOT, f"configured root for {product} does not parse: {e.detail}") from e
    _check_self_signed(root_der)
    if leaf.issuer == root.subject:
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"{_cert_name(leaf)} is issued directly by the root; an ASK/ASVK is required")
    def sources() -> Iterable[list[Cert]]:
        yield seen
        if opts.collateral is not None:
            yield _certs_in(_collateral(opts, [SNP_CERTS_KEY, kds_chain_url(product, kind)]))[0]
        yield [parse_cert(d) for d in amd_intermediates()]

    # Try every intermediate of the right name (the evidence's, then collateral's, then the shipped
    # ones) so a stale or bogus ASK riding in the evidence cannot hide the genuine one.
    tried: set[str] = set()
    first_error: VerificationError | None = None
    for certs in sources():
        for inter in certs:
            if inter.subject != leaf.issuer or inter.self_issued or inter.fingerprint in tried:
                continue
            tried.add(inter.fingerprint)
            try:
                _check_intermediate(kind, leaf, inter, root, product)
            except VerificationError as e:
                first_error = first_error or e
                continue
            return Chain(kind, product, leaf, inter, root)
    if first_error is not None:
        raise first_error
    raise CollateralError(Reason.MISSING_ENDORSEMENT, f"no intermediate (ASK/ASVK) named {leaf.issuer_cn!r}, the issuer of the {kind.upper()}")


def _check_intermediate(kind: str, leaf: Cert, inter: Cert, root: Cert, product: str) -> None:
    want_vlek = kind == "vlek"
    if inter.subject_cn.startswith("SEV-VLEK-") != want_vlek:
        raise VerificationError(Reason.BAD_CHAIN_SIGNATURE, f"a {kind.upper()} must be issued by an {'ASVK' if want_vlek else 'ASK'}, got {_cert_name(inter)}")
    if inter.issuer != root.subject:
        raise VerificationError(
            Reason.UNTRUSTED_ROOT, f"{_cert_name(inter)} is issued by {inter.issuer_cn!r}, but the trusted root for {product} is {_cert_name(root)} ({root.fingerprint[:16]}…)"
        )
    _verify_pss(inter, root)
    _verify_pss(leaf, inter)


def _check_validity(chain: Chain, now: datetime) -> str:
    for c in chain.certs:
        if now < c.not_before:
            raise VerificationError(Reason.CERT_NOT_YET_VALID, f"{_cert_name(c)} valid from {c.not_before.isoformat()}, reference time {now.isoformat()}")
        if now > c.not_after:
            raise VerificationError(Reason.CERT_EXPIRED, f"{_cert_name(c)} expired {c.not_after.isoformat()}, reference time {now.isoformat()}")
    lo, hi = chain.window
    return f"all 3 valid at {now.isoformat()} (chain window {lo.date()}..{hi.date()})"


def _check_report_signature(report: abi.Report, leaf: Cert) -> None:
    if report.mask_chip_key:
        raise VerificationError(Reason.BAD_SIGNATURE, "MASK_CHIP_KEY is set: the firmware did not sign this report")
    key = leaf.public_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError(Reason.BAD_SIGNATURE, f"{_cert_name(leaf)} does not hold an EC P-384 key")
    r, s = report.signature_r, report.signature_s
    if not (0 < r < 1 << 384 and 0 < s < 1 << 384):
        raise VerificationError(Reason.BAD_SIGNATURE, "report signature r/s out of range for P-384")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as e:
        raise VerificationError(Reason.BAD_SIGNATURE, f"report signature does not verify with {_cert_name(leaf)}") from e


def _check_tcb_binding(report: abi.Report, chain: Chain) -> str:
    leaf, product = chain.leaf, chain.product
    tcb = report.tcb("reported", product)
    want = {"bootloader": (OID_BL_SPL, "blSPL"), "tee": (OID_TEE_SPL, "teeSPL"), "snp": (OID_SNP_SPL, "snpSPL"), "microcode": (OID_UCODE_SPL, "ucodeSPL")}
    if product == abi.TURIN:
        want["fmc"] = (OID_FMC_SPL, "fmcSPL")
    comps = tcb.components()
    for comp, (oid, label) in want.items():
        cert_v = _spl(leaf, oid, label)
        if cert_v != comps[comp]:
            raise VerificationError(Reason.TCB_MISMATCH, f"REPORTED_TCB {comp} is {comps[comp]}, the {chain.kind.upper()} {label} is {cert_v}")
    if chain.kind == "vlek":
        return f"REPORTED_TCB {tcb} = VLEK SPLs; VLEK is not bound to a chip"
    hwid = octets_extension(leaf, OID_HWID, (8,) if product == abi.TURIN else (64,))
    if hwid is None:
        raise VerificationError(Reason.CHIP_ID_MISMATCH, "the VCEK has no hwID extension")
    if not any(report.chip_id):
        return f"REPORTED_TCB {tcb} = VCEK SPLs; CHIP_ID masked (all zero), hwID not compared"
    chip = report.chip_id_for(product)
    if product == abi.TURIN and any(report.chip_id[abi.TURIN_CHIP_ID_SIZE :]):
        raise VerificationError(Reason.CHIP_ID_MISMATCH, "Turin CHIP_ID must be 8 bytes followed by zeros")
    if hwid != chip:
        raise VerificationError(Reason.CHIP_ID_MISMATCH, f"CHIP_ID {chip.hex()[:16]}… differs from the VCEK hwID {hwid.hex()[:16]}…")
    return f"REPORTED_TCB {tcb} = VCEK SPLs; CHIP_ID = hwID {hwid.hex()[:16]}…"


def verify_report(
    evidence: Evidence,
    opts: VerifyOptions,
    *,
    roots: Mapping[str, bytes],
    attestation_type: str = SEVSNPVM,
    missing_root: str | None = None,
) -> tuple[Verification, Chain | None]:
    """The SNP verification shared by real and simulated evidence; also returns the chain (or None).

    ``roots`` maps a product line to the DER of its trusted ARK; ``attestation_type`` is the value of
    the ``x-ms-attestation-type`` claim; ``missing_root`` replaces the detail when ``roots`` lacks
    the product.
    """
    found: list[Chain] = []

    def body(trail: Trail) -> tuple[dict, bytes]:
        with trail.step(STEP_PARSE) as s:
            report = abi.parse_report(evidence.data)
            signer = {abi.SIGNING_KEY_VCEK: "VCEK", abi.SIGNING_KEY_VLEK: "VLEK"}.get(report.signing_key, f"key {report.signing_key}")
            s.detail = f"version {report.version}, signed by {signer}, vmpl {report.vmpl}, policy 0x{report.policy:x}"
        with trail.step(STEP_FIND) as s:
            kind, leaf, product, seen = _find_endorsement(report, evidence, opts)
            s.detail = f"{kind.upper()} {leaf.fingerprint[:16]}… for {product}"
        with trail.step(STEP_CHAIN) as s:
            chain = _chain_to_root(kind, leaf, product, seen, opts, roots, missing_root)
            s.detail = f"{kind.upper()} <- {_cert_name(chain.intermediate)} <- {_cert_name(chain.root)} (trusted root {chain.root.fingerprint[:16]}…)"
        with trail.step(STEP_VALIDITY) as s:
            s.detail = _check_validity(chain, opts.now)
        with trail.step(STEP_SIGNATURE) as s:
            _check_report_signature(report, chain.leaf)
            s.detail = "ECDSA P-384 SHA-384 over [0x000, 0x2A0)"
        with trail.step(STEP_TCB) as s:
            s.detail = _check_tcb_binding(report, chain)
        with trail.step(STEP_CLAIMS) as s:
            claims = snp_claims(report, chain.product, chain.kind, attestation_type=attestation_type)
            s.detail = f"{len(claims)} claims, tcb-status {claims['tcb-status']}"
        hcl_items = [e for e in evidence.endorsements if azure.is_hcl_report(e)]
        if hcl_items:
            with trail.step(STEP_AZURE_HCL) as s:
                runtime, s.detail = azure.check_hcl(hcl_items[0], report_type=azure.REPORT_TYPE_SNP, report_data=report.report_data,
                                                    hw_report=bytes(evidence.data))
                claims.update(runtime)
        found.append(chain)
        return claims, report.report_data

    kind = EvidenceType.SIM.value if evidence.type == EvidenceType.SIM else EvidenceType.SNP.value
    v = run_verifier(kind, body)
    return v, (found[0] if found else None)


def verify_evidence(evidence: Evidence, opts: VerifyOptions) -> Verification:
    """Verify real SEV-SNP evidence against the pinned AMD roots (or ``opts.amd_roots``, a test hook)."""
    roots = amd_roots() if opts.amd_roots is None else opts.amd_roots
    return verify_report(evidence, opts, roots=roots)[0]


def _evidence_key(evidence: Evidence, opts: VerifyOptions) -> bytes:
    h = hashlib.sha256()
    for part in (evidence.type.value.encode(), evidence.data, *evidence.endorsements, opts.sim_root or b""):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    if opts.amd_roots is not None:
        for k in sorted(opts.amd_roots):
            h.update(k.encode() + b"\0" + hashlib.sha256(opts.amd_roots[k]).digest())
    return h.digest()


class VerdictCache:
    """Memo of successful verifications by content hash, honoured only inside the chain's window.

    A verdict is a pure function of (evidence bytes, roots, reference time); for a verified result
    the time enters only through certificate validity, so the verdict stays right for any ``now``
    inside the chain window. Failures are not cached (they are cheap to redo and may depend on
    collateral that arrives later). ``opts.collateral`` does not enter the key: endorsements found
    there only add candidates, they cannot turn a success into a different success.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[bytes, tuple[Verification, datetime, datetime]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def verify(self, evidence: Evidence, opts: VerifyOptions) -> Verification:
        key = _evidence_key(evidence, opts)
        hit = self._items.get(key)
        if hit is not None and hit[1] <= opts.now <= hit[2]:
            self._items.move_to_end(key)
            self.hits += 1
            return hit[0]
        self.misses += 1
        if evidence.type == EvidenceType.SIM:
            from ..sim import verify_with_chain

            v, chain = verify_with_chain(evidence, opts)
        else:
            roots = amd_roots() if opts.amd_roots is None else opts.amd_roots
            v, chain = verify_report(evidence, opts, roots=roots)
        if v.verified and chain is not None:
            self._items[key] = (v, *chain.window)
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return v


def verify_endorsement_chain(leaf: bytes, extra: Iterable[bytes] = (), *, now: datetime, roots: Mapping[str, bytes] | None = None) -> Chain:
    """Chain one VCEK/VLEK (DER or PEM) to the trusted root of the product its productName names.

    The ``chain-to-root`` and ``cert-validity`` steps on their own, for endorsements that arrive
    without a report (``ratls inspect`` on a VCEK, cache warm-up). Raises EvidenceError.
    """
    certs, skipped = _certs_in([leaf])
    if len(certs) != 1:
        raise ParseError(Reason.BAD_ENCODING, f"expected one certificate, found {len(certs)}{': ' + skipped[0] if skipped else ''}")
    cert = certs[0]
    kind = _leaf_kind(cert)
    product = _cert_product(cert)
    if kind is None or product is None:
        raise CollateralError(Reason.MISSING_ENDORSEMENT, f"{_cert_name(cert)} is not a VCEK or VLEK (no AMD productName/SPL extensions)")
    seen, _ = _certs_in(extra)
    chain = _chain_to_root(kind, cert, product, seen, VerifyOptions(now=now), amd_roots() if roots is None else roots, None)
    _check_validity(chain, now)
    return chain
