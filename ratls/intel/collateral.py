"""DCAP collateral: PCS JSON bodies, CRLs and PEM chains, recognised by content.

Sources, in order (DESIGN.md): the evidence's own endorsements, then the caller's
:class:`~ratls.evidence.CollateralGetter`. Getter keys (the cache directory and the PCCS fetcher in
:mod:`ratls.io.collateral` store and serve exactly these):

========================== =============================================================
``tcbinfo/tdx/<fmspc>``    PCS body ``{"tcbInfo": ..., "signature": ...}`` (fmspc lower-case hex)
``tcbinfo/sgx/<fmspc>``    same for SGX
``qeidentity/tdx``         PCS body ``{"enclaveIdentity": ...}`` for TD_QE
``qeidentity/sgx``         same for the SGX QE
``crl/root``               Intel SGX Root CA CRL (DER, PEM or hex of DER)
``crl/pck-platform``       PCK Platform CA CRL
``crl/pck-processor``      PCK Processor CA CRL
``chain/tcb-signing``      PEM TCB Signing chain (PCS header ``TCB-Info-Issuer-Chain``)
========================== =============================================================

The signature over TCB info / QE identity covers the *exact bytes* of the inner JSON object as
served, so the raw slice is kept next to the decoded value.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any

from cryptography import x509

from ..errors import CollateralError, Reason

KEY_TCBINFO = "tcbinfo/{tee}/{fmspc}"
KEY_QEIDENTITY = "qeidentity/{tee}"
KEY_CRL_ROOT = "crl/root"
KEY_CRL_PCK = "crl/pck-{ca}"  # ca: platform | processor
KEY_CHAIN_TCB = "chain/tcb-signing"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class SignedJson:
    """A PCS body: the decoded inner object, its exact signed bytes, and the raw r||s signature."""

    kind: str  # "tcbInfo" | "enclaveIdentity"
    body: dict[str, Any]
    signed: bytes
    signature: bytes
    source: bytes

    @cached_property
    def issue_date(self) -> datetime:
        return parse_time(self.body.get("issueDate"), f"{self.kind}.issueDate")

    @cached_property
    def next_update(self) -> datetime:
        return parse_time(self.body.get("nextUpdate"), f"{self.kind}.nextUpdate")

    @property
    def id(self) -> str:
        return str(self.body.get("id", "SGX" if self.kind == "tcbInfo" else "QE"))


@dataclass
class Collateral:
    tcb_info: SignedJson | None = None
    qe_identity: SignedJson | None = None
    #: CRLs by issuer (the root CRL and the PCK CA CRLs): matched to certificates by issuer name
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    certs: list[x509.Certificate] = field(default_factory=list)
    #: the CRLs' bytes as given (cache keys)
    crl_raw: list[bytes] = field(default_factory=list)
    #: every TCB info / QE identity offered (a collateral folder may hold several)
    tcb_info_candidates: list[SignedJson] = field(default_factory=list)
    qe_identity_candidates: list[SignedJson] = field(default_factory=list)

    def select(self, tee: str, fmspc: str) -> None:
        """Pick, among several offered, the TCB info for this TEE and FMSPC and the QE identity for
        this TEE's QE, the most recently issued. With no match the first offered stays, so the
        mismatch is reported rather than hidden."""
        want_tcb, want_qe = ("TDX", "TD_QE") if tee == "tdx" else ("SGX", "QE")

        def latest(items: list[SignedJson]) -> SignedJson | None:
            dated = []
            for sj in items:
                try:
                    dated.append((sj.issue_date, sj))
                except CollateralError:
                    continue
            return max(dated, key=lambda d: d[0])[1] if dated else None

        tcb = [t for t in self.tcb_info_candidates if t.id == want_tcb and str(t.body.get("fmspc", "")).lower() == fmspc.lower()]
        self.tcb_info = latest(tcb) or self.tcb_info
        qe = [q for q in self.qe_identity_candidates if q.id == want_qe]
        self.qe_identity = latest(qe) or self.qe_identity
    #: items given that were recognised as nothing (reported, not fatal)
    unrecognised: int = 0

    @property
    def complete(self) -> bool:
        return self.tcb_info is not None and self.qe_identity is not None and len(self.crls) >= 2


def parse_time(v: Any, what: str) -> datetime:
    if not isinstance(v, str):
        raise CollateralError(Reason.BAD_FORMAT, f"{what}: expected an ISO-8601 time, got {v!r}")
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as e:
        raise CollateralError(Reason.BAD_FORMAT, f"{what}: bad time {v!r}") from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _inner_object(text: str, key: str) -> str:
    """Raw text of the JSON object under top-level ``key``, found by brace matching (strings aware)."""
    m = re.search(rf'"{re.escape(key)}"\s*:\s*\{{', text)
    if not m:
        raise CollateralError(Reason.BAD_FORMAT, f"no {key!r} object")
    start = m.end() - 1
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise CollateralError(Reason.TRUNCATED, f"{key!r} object is not closed")


def parse_signed_json(data: bytes) -> SignedJson:
    """Parse a PCS ``tcbInfo`` or ``enclaveIdentity`` body. Raises CollateralError only."""
    try:
        text = data.decode("utf-8")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CollateralError(Reason.BAD_ENCODING, f"collateral JSON does not parse: {e}") from e
    if not isinstance(doc, dict):
        raise CollateralError(Reason.BAD_FORMAT, "collateral JSON is not an object")
    kind = next((k for k in ("tcbInfo", "enclaveIdentity") if k in doc), None)
    if kind is None:
        raise CollateralError(Reason.BAD_FORMAT, "collateral JSON has neither 'tcbInfo' nor 'enclaveIdentity'")
    body, sig = doc[kind], doc.get("signature")
    if not isinstance(body, dict) or not isinstance(sig, str):
        raise CollateralError(Reason.BAD_FORMAT, f"{kind}: expected an object and a hex 'signature'")
    try:
        signature = bytes.fromhex(sig)
    except ValueError as e:
        raise CollateralError(Reason.BAD_ENCODING, f"{kind}: signature is not hex") from e
    if len(signature) != 64:
        raise CollateralError(Reason.BAD_FORMAT, f"{kind}: signature is {len(signature)} bytes, expected 64 (r||s)")
    signed = _inner_object(text, kind).encode()
    try:
        if json.loads(signed) != body:
            raise CollateralError(Reason.BAD_FORMAT, f"{kind}: duplicate keys make the signed bytes ambiguous")
    except json.JSONDecodeError as e:
        raise CollateralError(Reason.BAD_FORMAT, f"{kind}: inner object does not parse") from e
    return SignedJson(kind, body, signed, signature, data)


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER, PEM, or hex of DER (PCCS serves hex). Raises CollateralError only.

    Only the text forms are stripped of surrounding whitespace: DER is binary, and its last byte
    (part of a random signature) is a whitespace byte in about 2% of CRLs."""
    text = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]+", text or b"x") and len(text) % 2 == 0:
        data = binascii.unhexlify(text)
    elif text.startswith(b"-----BEGIN"):
        data = text
    try:
        if data.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except (ValueError, TypeError) as e:
        raise CollateralError(Reason.BAD_ENCODING, f"CRL does not parse: {e}") from e


@lru_cache(maxsize=128)
def _crl_memo(data: bytes) -> x509.CertificateRevocationList:
    return parse_crl(data)


def parse_pem_chain(data: bytes) -> list[x509.Certificate]:
    out = []
    for m in _PEM_CERT.finditer(data):
        try:
            out.append(x509.load_pem_x509_certificate(m.group(0)))
        except ValueError as e:
            raise CollateralError(Reason.BAD_ENCODING, f"certificate in PEM chain does not parse: {e}") from e
    return out


@lru_cache(maxsize=512)
def recognise(item: bytes) -> tuple[str, Any]:
    """What one endorsement is, by content: (kind, parsed). Memoised by content (pure).

    kinds: ``tcbInfo`` / ``enclaveIdentity`` (SignedJson), ``crl``, ``chain`` (tuple of
    certificates), ``cert``, ``unrecognised``. Raises CollateralError for a malformed known kind.
    """
    head = item.lstrip()[:1]
    if head == b"{":
        sj = parse_signed_json(item)
        return sj.kind, sj
    if b"-----BEGIN CERTIFICATE-----" in item:
        return "chain", tuple(parse_pem_chain(item))
    if b"-----BEGIN X509 CRL-----" in item:
        return "crl", parse_crl(item)
    if head == b"\x30":
        try:
            return "crl", x509.load_der_x509_crl(item)
        except ValueError:
            pass
        try:
            return "cert", x509.load_der_x509_certificate(item)
        except ValueError:
            pass
    return "unrecognised", None


def classify(item: bytes, into: Collateral) -> str:
    """Recognise one endorsement by content and add it to ``into``; returns what it was.

    Unknown items are counted, not fatal: endorsements may carry things for other verifiers.
    """
    kind, parsed = recognise(bytes(item))
    if kind == "tcbInfo":
        into.tcb_info_candidates.append(parsed)
        into.tcb_info = into.tcb_info or parsed
    elif kind == "enclaveIdentity":
        into.qe_identity_candidates.append(parsed)
        into.qe_identity = into.qe_identity or parsed
    elif kind == "chain":
        into.certs.extend(parsed)
    elif kind == "cert":
        into.certs.append(parsed)
    elif kind == "crl":
        into.crls.append(parsed)
        into.crl_raw.append(item)
    else:
        into.unrecognised += 1
    return kind


def _issuer_cn(crl: x509.CertificateRevocationList) -> str:
    return _cn(crl.issuer)


@lru_cache(maxsize=256)
def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def gather(endorsements: tuple[bytes, ...], getter: Any, *, tee: str, fmspc: str, pck_ca: str | None) -> Collateral:
    """Collateral from endorsements first, then ``getter`` for what is still missing."""
    col = Collateral()
    for item in endorsements:
        classify(item, col)
    col.select(tee, fmspc)
    if getter is None:
        return col
    keys: list[str] = []
    if col.tcb_info is None:
        keys.append(KEY_TCBINFO.format(tee=tee, fmspc=fmspc.lower()))
    if col.qe_identity is None:
        keys.append(KEY_QEIDENTITY.format(tee=tee))
    issuers = [_issuer_cn(c) for c in col.crls]
    if not any("Root CA" in i for i in issuers):
        keys.append(KEY_CRL_ROOT)
    if pck_ca and not any("PCK" in i for i in issuers):
        keys.append(KEY_CRL_PCK.format(ca=pck_ca))
    if not any("TCB Signing" in _cn(c.subject) for c in col.certs):
        keys.append(KEY_CHAIN_TCB)
    for key in keys:
        blob = getter.get(key)
        if blob:
            if key.startswith("crl/"):
                col.crls.append(_crl_memo(blob))
                col.crl_raw.append(blob)
            else:
                classify(blob, col)
    col.select(tee, fmspc)
    return col


def to_dcap_qvl(col: Collateral, tcb_chain_pem: str, pck_ca_chain_pem: str, *, root: x509.Name, ca: x509.Name) -> Any:
    """Build dcap-qvl's collateral object (only for complete collateral)."""
    import dcap_qvl
    from cryptography.hazmat.primitives.serialization import Encoding

    assert col.tcb_info is not None and col.qe_identity is not None
    root_crl = next(c for c in col.crls if c.issuer == root)
    pck_crl = next(c for c in col.crls if c.issuer == ca)
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=pck_ca_chain_pem,
        root_ca_crl=root_crl.public_bytes(Encoding.DER),
        pck_crl=pck_crl.public_bytes(Encoding.DER),
        tcb_info_issuer_chain=tcb_chain_pem,
        tcb_info=col.tcb_info.signed.decode(),
        tcb_info_signature=col.tcb_info.signature,
        qe_identity_issuer_chain=tcb_chain_pem,
        qe_identity=col.qe_identity.signed.decode(),
        qe_identity_signature=col.qe_identity.signature,
    )
