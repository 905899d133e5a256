"""A small, strict DER reader for the X.509 certificates of the AMD SEV-SNP chain.

Why not ``cryptography.x509``: AMD's VCEK and VLEK certificates carry serial number 0, which RFC
5280 forbids; cryptography 50 parses them with a deprecation warning and announces that a future
release will refuse them. The verifier must not break on a library upgrade, so it reads the few
fields it needs itself (TBS bytes, signature algorithm and value, names, validity, public key,
extensions) and uses ``cryptography`` only for the public-key primitives.

Every malformed input raises :class:`~ratls.errors.ParseError`; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache

from ..errors import ParseError, Reason

# Universal tags used below.
TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTF8 = 0x0C
TAG_PRINTABLE = 0x13
TAG_IA5 = 0x16
TAG_UTCTIME = 0x17
TAG_GENTIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
CTX0 = 0xA0
CTX1 = 0xA1
CTX2 = 0xA2
CTX3 = 0xA3

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_COMMON_NAME = "2.5.4.3"

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)


def _fail(detail: str) -> ParseError:
    return ParseError(Reason.BAD_ENCODING, f"certificate DER: {detail}")


def read_tlv(buf: bytes, pos: int, end: int | None = None) -> tuple[int, int, int]:
    """Read one TLV at ``pos``. Returns (tag, content_start, content_end). Definite lengths only."""
    end = len(buf) if end is None else end
    if pos + 2 > end:
        raise _fail(f"truncated header at {pos}")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _fail(f"high tag number form at {pos}")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise _fail(f"unsupported length form 0x{first:02x}")
        if pos + n > end:
            raise _fail("truncated length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        if length < 0x80 or buf[pos] == 0:
            raise _fail("non-minimal length encoding")
        pos += n
    if pos + length > end:
        raise _fail(f"content of tag 0x{tag:02x} runs past its container ({pos + length} > {end})")
    return tag, pos, pos + length


def expect(buf: bytes, pos: int, tag: int, end: int | None = None) -> tuple[int, int]:
    t, start, stop = read_tlv(buf, pos, end)
    if t != tag:
        raise _fail(f"expected tag 0x{tag:02x} at {pos}, got 0x{t:02x}")
    return start, stop


def children(buf: bytes, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """(tag, tlv_start, content_start, content_end) of each element inside a constructed value."""
    out = []
    pos = start
    while pos < stop:
        tag, cs, ce = read_tlv(buf, pos, stop)
        out.append((tag, pos, cs, ce))
        pos = ce
    return out


def decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise _fail("bad OID encoding")
    arcs: list[int] = []
    value = 0
    for b in content:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_int(content: bytes) -> int:
    if not content:
        raise _fail("empty INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _decode_time(tag: int, content: bytes) -> datetime:
    try:
        text = content.decode("ascii")
        if tag == TAG_UTCTIME:
            if len(text) != 13 or not text.endswith("Z"):
                raise ValueError(text)
            year = int(text[:2])
            year += 2000 if year < 50 else 1900
            rest = text[2:12]
        elif tag == TAG_GENTIME:
            if len(text) != 15 or not text.endswith("Z"):
                raise ValueError(text)
            year = int(text[:4])
            rest = text[4:14]
        else:
            raise _fail(f"unexpected time tag 0x{tag:02x}")
        mo, d, h, mi, s = (int(rest[i : i + 2]) for i in range(0, 10, 2))
        return datetime(year, mo, d, h, mi, s, tzinfo=UTC)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(f"bad time value {content!r}") from e


@dataclass(frozen=True)
class PssParams:
    hash_oid: str
    mgf_hash_oid: str
    salt_length: int


def parse_pss_params(buf: bytes, start: int, stop: int) -> PssParams:
    """RSASSA-PSS-params (RFC 4055). Defaults (SHA-1, salt 20) are kept so a caller can refuse them."""
    hash_oid, mgf_hash, salt = "1.3.14.3.2.26", "1.3.14.3.2.26", 20
    for tag, _, cs, ce in children(buf, start, stop):
        if tag == CTX0:
            s, e = expect(buf, cs, TAG_SEQUENCE, ce)
            o, oe = expect(buf, s, TAG_OID, e)
            hash_oid = decode_oid(buf[o:oe])
        elif tag == CTX1:
            s, e = expect(buf, cs, TAG_SEQUENCE, ce)
            o, oe = expect(buf, s, TAG_OID, e)
            if decode_oid(buf[o:oe]) != OID_MGF1:
                raise _fail("PSS mask generation function is not MGF1")
            hs, he = expect(buf, oe, TAG_SEQUENCE, e)
            ho, hoe = expect(buf, hs, TAG_OID, he)
            mgf_hash = decode_oid(buf[ho:hoe])
        elif tag == CTX2:
            s, e = expect(buf, cs, TAG_INTEGER, ce)
            salt = decode_int(buf[s:e])
        elif tag == CTX3:
            s, e = expect(buf, cs, TAG_INTEGER, ce)
            if decode_int(buf[s:e]) != 1:
                raise _fail("PSS trailer field is not 1")
    return PssParams(hash_oid, mgf_hash, salt)


def _name_cn(buf: bytes) -> str:
    """The first commonName of a DER Name, or '' (names are compared as raw bytes, this is for humans)."""
    try:
        s, e = expect(buf, 0, TAG_SEQUENCE)
        for _, _, rs, re_ in children(buf, s, e):
            for _, _, as_, ae in children(buf, rs, re_):
                o, oe = expect(buf, as_, TAG_OID, ae)
                if decode_oid(buf[o:oe]) == OID_COMMON_NAME:
                    _, vs, ve = read_tlv(buf, oe, ae)
                    return buf[vs:ve].decode("utf-8", "replace")
    except ParseError:
        return ""
    return ""


@dataclass(frozen=True)
class Cert:
    """The fields of one X.509 certificate the SNP verifier uses. Build with :func:`parse_cert`."""

    der: bytes
    tbs: bytes
    #: the AlgorithmIdentifier inside the TBS and the outer one; RFC 5280 wants them equal and the
    #: chain check refuses a certificate where they differ (kept apart so the refusal names it)
    tbs_sig_alg: bytes
    outer_sig_alg: bytes
    sig_alg_oid: str
    pss: PssParams | None
    signature: bytes
    serial: int
    issuer: bytes
    subject: bytes
    not_before: datetime
    not_after: datetime
    spki: bytes
    extensions: dict[str, bytes] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, lowercase hex (the pinning key)."""
        return hashlib.sha256(self.der).hexdigest()

    @cached_property
    def subject_cn(self) -> str:
        return _name_cn(self.subject)

    @cached_property
    def issuer_cn(self) -> str:
        return _name_cn(self.issuer)

    @cached_property
    def public_key(self):  # type: ignore[no-untyped-def]
        """The subject public key as a ``cryptography`` key object (loaded once per parsed cert)."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        try:
            return load_der_public_key(self.spki)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ParseError(Reason.BAD_ENCODING, f"certificate {self.subject_cn!r}: unusable public key: {e}") from e

    @property
    def self_issued(self) -> bool:
        return self.issuer == self.subject


@lru_cache(maxsize=512)
def parse_cert(der: bytes) -> Cert:
    """Parse one DER certificate (pure; memoised by content, so a chain seen again costs a lookup)."""
    if not isinstance(der, bytes):
        raise _fail(f"expected bytes, got {type(der).__name__}")
    cs, ce = expect(der, 0, TAG_SEQUENCE)
    if ce != len(der):
        raise _fail(f"{len(der) - ce} trailing bytes after the certificate")
    parts = children(der, cs, ce)
    if len(parts) != 3 or parts[0][0] != TAG_SEQUENCE or parts[1][0] != TAG_SEQUENCE or parts[2][0] != TAG_BIT_STRING:
        raise _fail("certificate is not SEQUENCE{tbs, algorithm, signature}")
    (_, tbs_at, ts, te), (_, alg_at, as_, ae), (_, _, ss, se) = parts
    tbs = der[tbs_at:te]
    outer_alg = der[alg_at:ae]
    ao, aoe = expect(der, as_, TAG_OID, ae)
    sig_alg_oid = decode_oid(der[ao:aoe])
    pss = None
    if sig_alg_oid == OID_RSASSA_PSS:
        ps, pe = expect(der, aoe, TAG_SEQUENCE, ae)
        pss = parse_pss_params(der, ps, pe)
    if se <= ss or der[ss] != 0:
        raise _fail("signature BIT STRING has unused bits")
    signature = der[ss + 1 : se]

    fields = children(der, ts, te)
    i = 0
    if fields and fields[0][0] == CTX0:
        i = 1
    if len(fields) < i + 6:
        raise _fail("TBSCertificate has too few fields")
    tag, _, s, e = fields[i]
    if tag != TAG_INTEGER:
        raise _fail("serialNumber is not an INTEGER")
    serial = decode_int(der[s:e])
    tag, at, _, e = fields[i + 1]
    if tag != TAG_SEQUENCE:
        raise _fail("TBS signature is not an AlgorithmIdentifier")
    tbs_sig_alg = der[at:e]
    tag, at, _, e = fields[i + 2]
    if tag != TAG_SEQUENCE:
        raise _fail("issuer is not a Name")
    issuer = der[at:e]
    tag, _, vs, ve = fields[i + 3]
    if tag != TAG_SEQUENCE:
        raise _fail("validity is not a SEQUENCE")
    times = children(der, vs, ve)
    if len(times) != 2:
        raise _fail("validity must hold notBefore and notAfter")
    not_before = _decode_time(times[0][0], der[times[0][2] : times[0][3]])
    not_after = _decode_time(times[1][0], der[times[1][2] : times[1][3]])
    tag, at, _, e = fields[i + 4]
    if tag != TAG_SEQUENCE:
        raise _fail("subject is not a Name")
    subject = der[at:e]
    tag, at, _, e = fields[i + 5]
    if tag != TAG_SEQUENCE:
        raise _fail("subjectPublicKeyInfo is not a SEQUENCE")
    spki = der[at:e]

    extensions: dict[str, bytes] = {}
    for tag, _, s, e in fields[i + 6 :]:
        if tag != CTX3:
            continue
        xs, xe = expect(der, s, TAG_SEQUENCE, e)
        for xtag, _, es, ee in children(der, xs, xe):
            if xtag != TAG_SEQUENCE:
                raise _fail("extension is not a SEQUENCE")
            items = children(der, es, ee)
            if len(items) not in (2, 3) or items[0][0] != TAG_OID or items[-1][0] != TAG_OCTET_STRING:
                raise _fail("extension is not {oid, [critical], value}")
            oid = decode_oid(der[items[0][2] : items[0][3]])
            if oid in extensions:
                raise _fail(f"duplicate extension {oid}")
            extensions[oid] = der[items[-1][2] : items[-1][3]]
    return Cert(der, tbs, tbs_sig_alg, outer_alg, sig_alg_oid, pss, signature, serial, issuer, subject, not_before, not_after, spki, extensions)


def looks_like_cert(blob: bytes) -> bool:
    return b"-----BEGIN CERTIFICATE-----" in blob or (len(blob) > 4 and blob[0] == TAG_SEQUENCE)


def split_certs(blob: bytes) -> list[bytes]:
    """DER certificates in ``blob``: PEM (one or a bundle), one DER, or DER certificates back to back.

    Returns [] for content that is not certificates (JSON collateral, text). Raises ParseError when
    PEM armour holds bad base64 or a DER run has a broken header.
    """
    if b"-----BEGIN CERTIFICATE-----" in blob:
        out = []
        for m in _PEM_CERT.finditer(blob):
            try:
                out.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
            except (binascii.Error, ValueError) as e:
                raise ParseError(Reason.BAD_ENCODING, f"PEM certificate block is not base64: {e}") from e
        return out
    if not blob or blob[0] != TAG_SEQUENCE:
        return []
    out = []
    pos = 0
    while pos < len(blob):
        tag, _, e = read_tlv(blob, pos)
        if tag != TAG_SEQUENCE:
            raise _fail(f"unexpected tag 0x{tag:02x} between DER certificates")
        out.append(blob[pos:e])
        pos = e
    return out


def integer_extension(cert: Cert, oid: str) -> int | None:
    """An AMD extension holding a DER INTEGER (the SPLs, structVersion). None when absent."""
    raw = cert.extensions.get(oid)
    if raw is None:
        return None
    s, e = expect(raw, 0, TAG_INTEGER)
    if e != len(raw):
        raise _fail(f"extension {oid}: trailing bytes")
    return decode_int(raw[s:e])


def string_extension(cert: Cert, oid: str) -> str | None:
    """An AMD extension holding a DER IA5String/UTF8String (productName, cspID). None when absent."""
    raw = cert.extensions.get(oid)
    if raw is None:
        return None
    tag, s, e = read_tlv(raw, 0)
    if tag not in (TAG_IA5, TAG_UTF8, TAG_PRINTABLE) or e != len(raw):
        raise _fail(f"extension {oid}: not a string")
    try:
        return raw[s:e].decode("ascii")
    except UnicodeDecodeError as e_:
        raise _fail(f"extension {oid}: not ASCII") from e_


def octets_extension(cert: Cert, oid: str, sizes: tuple[int, ...]) -> bytes | None:
    """An extension holding raw bytes of one of ``sizes``, either bare (AMD KDS's legacy encoding)
    or wrapped in a DER OCTET STRING (the newer encoding). None when absent."""
    raw = cert.extensions.get(oid)
    if raw is None:
        return None
    if len(raw) in sizes:
        return raw
    try:
        tag, s, e = read_tlv(raw, 0)
    except ParseError:
        tag, s, e = -1, 0, 0
    if tag == TAG_OCTET_STRING and e == len(raw) and (e - s) in sizes:
        return raw[s:e]
    raise _fail(f"extension {oid}: {len(raw)} bytes, expected one of {sizes} (bare or as OCTET STRING)")
