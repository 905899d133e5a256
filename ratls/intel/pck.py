"""The Intel SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1): FMSPC, CPUSVN, PCESVN.

The extension is a SEQUENCE of (OID, value) pairs, the TCB entry itself a SEQUENCE of 16 component
SVNs, PCESVN and CPUSVN (Intel "SGX PCK Certificate and CRL Profile"). A minimal DER reader is
enough; only :class:`~ratls.errors.ParseError` escapes on bad bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from ..errors import ParseError, Reason

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_BASE = "1.2.840.113741.1.13.1"
OID_PPID = _BASE + ".1"
OID_TCB = _BASE + ".2"
OID_PCESVN = _BASE + ".2.17"
OID_CPUSVN = _BASE + ".2.18"
OID_PCEID = _BASE + ".3"
OID_FMSPC = _BASE + ".4"
OID_SGX_TYPE = _BASE + ".5"
OID_PLATFORM_INSTANCE_ID = _BASE + ".6"


@dataclass(frozen=True)
class PckExtension:
    ppid: bytes
    cpu_svn: bytes
    pce_svn: int
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    if pos + 2 > len(data):
        raise ParseError(Reason.TRUNCATED, "SGX extension: DER header truncated")
    tag, ln = data[pos], data[pos + 1]
    pos += 2
    if ln & 0x80:
        n = ln & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise ParseError(Reason.BAD_ENCODING, "SGX extension: bad DER length")
        ln = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + ln > len(data):
        raise ParseError(Reason.TRUNCATED, "SGX extension: DER value truncated")
    return tag, data[pos : pos + ln], pos + ln


def _oid(b: bytes) -> str:
    if not b:
        raise ParseError(Reason.BAD_ENCODING, "SGX extension: empty OID")
    parts = [b[0] // 40, b[0] % 40]
    v = 0
    for x in b[1:]:
        v = (v << 7) | (x & 0x7F)
        if not x & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


def _pairs(seq: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while pos < len(seq):
        tag, inner, pos = _tlv(seq, pos)
        if tag != 0x30:
            raise ParseError(Reason.BAD_FORMAT, "SGX extension: expected SEQUENCE(OID, value)")
        t1, oid, p2 = _tlv(inner, 0)
        if t1 != 0x06:
            raise ParseError(Reason.BAD_FORMAT, "SGX extension: expected OID")
        t2, val, _ = _tlv(inner, p2)
        out[_oid(oid)] = (t2, val)
    return out


def parse_sgx_extension(der_value: bytes) -> PckExtension:
    tag, seq, _ = _tlv(der_value, 0)
    if tag != 0x30:
        raise ParseError(Reason.BAD_FORMAT, "SGX extension is not a SEQUENCE")
    top = _pairs(seq)
    try:
        _tcb_tag, tcb_seq = top[OID_TCB]
        tcb = _pairs(tcb_seq)
        pce_svn = int.from_bytes(tcb[OID_PCESVN][1], "big")
        cpu_svn = tcb[OID_CPUSVN][1]
        ext = PckExtension(
            ppid=top[OID_PPID][1],
            cpu_svn=cpu_svn,
            pce_svn=pce_svn,
            pce_id=top[OID_PCEID][1],
            fmspc=top[OID_FMSPC][1],
            sgx_type=int.from_bytes(top[OID_SGX_TYPE][1], "big"),
            platform_instance_id=top.get(OID_PLATFORM_INSTANCE_ID, (0, None))[1],
        )
    except KeyError as e:
        raise ParseError(Reason.BAD_FORMAT, f"SGX extension lacks {e.args[0]}") from e
    if len(ext.cpu_svn) != 16 or len(ext.fmspc) != 6:
        raise ParseError(Reason.BAD_FORMAT, f"SGX extension: CPUSVN {len(ext.cpu_svn)} bytes, FMSPC {len(ext.fmspc)} bytes")
    return ext


def pck_extension(cert: x509.Certificate) -> PckExtension:
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound as e:
        raise ParseError(Reason.BAD_FORMAT, "PCK certificate has no Intel SGX extension") from e
    except ValueError as e:
        raise ParseError(Reason.BAD_ENCODING, f"PCK certificate extensions do not parse: {e}") from e
    return parse_sgx_extension(ext.value.value)
