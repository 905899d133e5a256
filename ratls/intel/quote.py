"""Intel DCAP quotes (SGX v3, TDX v4 and v5) parsed field by field.

Offsets and sizes are named as Intel's "SGX ECDSA Quote Library API" and "TDX DCAP Quoting
Library API" name them. Parsing checks structure only (lengths, versions, key types); signatures
are :mod:`ratls.intel.verify`'s job. Real quotes are often padded (go-tdx-guest's 8000-byte buffer,
trustee's 5006-byte one): bytes after the signature data are accepted and counted in
``trailing``. Only :class:`~ratls.errors.ParseError` escapes on bad bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import ParseError, Reason

# --- header (48 bytes, all versions) ---
HEADER_SIZE = 48
HDR_VERSION = slice(0, 2)
HDR_ATT_KEY_TYPE = slice(2, 4)
HDR_TEE_TYPE = slice(4, 8)
HDR_QE_SVN = slice(8, 10)
HDR_PCE_SVN = slice(10, 12)
HDR_QE_VENDOR_ID = slice(12, 28)
HDR_USER_DATA = slice(28, 48)

ATT_KEY_ECDSA_P256 = 2
TEE_SGX = 0x00000000
TEE_TDX = 0x00000081
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# --- v5 body descriptor ---
V5_DESCRIPTOR_SIZE = 6  # u16 body type, u32 body size
BODY_SGX = 1
BODY_TDX10 = 2
BODY_TDX15 = 3

# --- SGX enclave report body (384 bytes): also the QE report ---
SGX_REPORT_SIZE = 384
SGX_CPU_SVN = slice(0, 16)
SGX_MISC_SELECT = slice(16, 20)
SGX_ISV_EXT_PROD_ID = slice(32, 48)
SGX_ATTRIBUTES = slice(48, 64)
SGX_MR_ENCLAVE = slice(64, 96)
SGX_MR_SIGNER = slice(128, 160)
SGX_CONFIG_ID = slice(192, 256)
SGX_ISV_PROD_ID = slice(256, 258)
SGX_ISV_SVN = slice(258, 260)
SGX_CONFIG_SVN = slice(260, 262)
SGX_ISV_FAMILY_ID = slice(304, 320)
SGX_REPORT_DATA = slice(320, 384)
SGX_FLAG_DEBUG = 0x02  # ATTRIBUTES.FLAGS bit 1

# --- TD report body: TDX 1.0 (584 bytes), TDX 1.5 (648 bytes) ---
TD10_SIZE = 584
TD15_SIZE = 648
TD_TEE_TCB_SVN = slice(0, 16)
TD_MR_SEAM = slice(16, 64)
TD_MR_SIGNER_SEAM = slice(64, 112)
TD_SEAM_ATTRIBUTES = slice(112, 120)
TD_ATTRIBUTES = slice(120, 128)
TD_XFAM = slice(128, 136)
TD_MR_TD = slice(136, 184)
TD_MR_CONFIG_ID = slice(184, 232)
TD_MR_OWNER = slice(232, 280)
TD_MR_OWNER_CONFIG = slice(280, 328)
TD_RTMR = tuple(slice(328 + 48 * i, 376 + 48 * i) for i in range(4))
TD_REPORT_DATA = slice(520, 584)
TD_TEE_TCB_SVN2 = slice(584, 600)
TD_MR_SERVICE_TD = slice(600, 648)
TD_ATTR_DEBUG = 0x01  # TDATTRIBUTES bit 0 (TUD.DEBUG)

# --- signature data ---
ECDSA_SIG_SIZE = 64
ECDSA_KEY_SIZE = 64
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6


class TeeType(enum.IntEnum):
    SGX = TEE_SGX
    TDX = TEE_TDX


@dataclass(frozen=True)
class Header:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class EnclaveReport:
    """SGX REPORT body: the application enclave's (SGX quotes) and the QE's (every quote)."""

    raw: bytes

    def _u16(self, s: slice) -> int:
        return int.from_bytes(self.raw[s], "little")

    cpu_svn = property(lambda self: self.raw[SGX_CPU_SVN])
    misc_select = property(lambda self: self.raw[SGX_MISC_SELECT])
    attributes = property(lambda self: self.raw[SGX_ATTRIBUTES])
    mr_enclave = property(lambda self: self.raw[SGX_MR_ENCLAVE])
    mr_signer = property(lambda self: self.raw[SGX_MR_SIGNER])
    config_id = property(lambda self: self.raw[SGX_CONFIG_ID])
    isv_prod_id = property(lambda self: self._u16(SGX_ISV_PROD_ID))
    isv_svn = property(lambda self: self._u16(SGX_ISV_SVN))
    config_svn = property(lambda self: self._u16(SGX_CONFIG_SVN))
    isv_family_id = property(lambda self: self.raw[SGX_ISV_FAMILY_ID])
    isv_ext_prod_id = property(lambda self: self.raw[SGX_ISV_EXT_PROD_ID])
    report_data = property(lambda self: self.raw[SGX_REPORT_DATA])

    @property
    def debug(self) -> bool:
        return bool(self.raw[SGX_ATTRIBUTES.start] & SGX_FLAG_DEBUG)


@dataclass(frozen=True)
class TdReport:
    """TD report body as a quote carries it (TDX 1.0, or 1.5 with TEE_TCB_SVN2 and MRSERVICETD)."""

    raw: bytes

    tee_tcb_svn = property(lambda self: self.raw[TD_TEE_TCB_SVN])
    mr_seam = property(lambda self: self.raw[TD_MR_SEAM])
    mr_signer_seam = property(lambda self: self.raw[TD_MR_SIGNER_SEAM])
    seam_attributes = property(lambda self: self.raw[TD_SEAM_ATTRIBUTES])
    td_attributes = property(lambda self: self.raw[TD_ATTRIBUTES])
    xfam = property(lambda self: self.raw[TD_XFAM])
    mr_td = property(lambda self: self.raw[TD_MR_TD])
    mr_config_id = property(lambda self: self.raw[TD_MR_CONFIG_ID])
    mr_owner = property(lambda self: self.raw[TD_MR_OWNER])
    mr_owner_config = property(lambda self: self.raw[TD_MR_OWNER_CONFIG])
    report_data = property(lambda self: self.raw[TD_REPORT_DATA])

    def rtmr(self, i: int) -> bytes:
        return self.raw[TD_RTMR[i]]

    @property
    def tee_tcb_svn2(self) -> bytes | None:
        return self.raw[TD_TEE_TCB_SVN2] if len(self.raw) >= TD15_SIZE else None

    @property
    def mr_service_td(self) -> bytes | None:
        return self.raw[TD_MR_SERVICE_TD] if len(self.raw) >= TD15_SIZE else None

    @property
    def debug(self) -> bool:
        return bool(self.raw[TD_ATTRIBUTES.start] & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class Quote:
    raw: bytes
    header: Header
    #: bytes the attestation key signs: header (+ v5 body descriptor) + body
    signed: bytes
    body: EnclaveReport | TdReport
    signature: bytes  # r || s, big-endian
    attestation_key: bytes  # x || y
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    #: PEM PCK chain (leaf, intermediate, root) as the quote carries it
    pck_chain_pem: bytes
    trailing: int

    @property
    def tee(self) -> TeeType:
        return TeeType(self.header.tee_type)

    @property
    def report_data(self) -> bytes:
        return self.body.report_data


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(Reason.TRUNCATED, f"{self.what}: {field} needs {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, field: str) -> int:
        return struct.unpack("<H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack("<I", self.take(4, field))[0]


def parse_header(raw: bytes) -> Header:
    if len(raw) < HEADER_SIZE:
        raise ParseError(Reason.TRUNCATED, f"quote header needs {HEADER_SIZE} bytes, got {len(raw)}")
    h = raw[:HEADER_SIZE]
    return Header(
        version=int.from_bytes(h[HDR_VERSION], "little"),
        att_key_type=int.from_bytes(h[HDR_ATT_KEY_TYPE], "little"),
        tee_type=int.from_bytes(h[HDR_TEE_TYPE], "little"),
        qe_svn=int.from_bytes(h[HDR_QE_SVN], "little"),
        pce_svn=int.from_bytes(h[HDR_PCE_SVN], "little"),
        qe_vendor_id=h[HDR_QE_VENDOR_ID],
        user_data=h[HDR_USER_DATA],
    )


def parse_quote(raw: bytes) -> Quote:
    """Parse a DCAP quote: SGX v3, TDX v4 (TDX 1.0 body), TDX v5 (TDX 1.0/1.5 body)."""
    raw = bytes(raw)
    hdr = parse_header(raw)
    if hdr.att_key_type != ATT_KEY_ECDSA_P256:
        raise ParseError(Reason.UNSUPPORTED_VERSION, f"attestation key type {hdr.att_key_type}: only ECDSA-256-with-P-256 (2) is supported")
    if hdr.tee_type not in (TEE_SGX, TEE_TDX):
        raise ParseError(Reason.BAD_FORMAT, f"unknown TEE type 0x{hdr.tee_type:08x}")
    r = _Reader(raw, "quote")
    r.take(HEADER_SIZE, "header")
    body: EnclaveReport | TdReport
    if hdr.version == 3:
        if hdr.tee_type != TEE_SGX:
            raise ParseError(Reason.UNSUPPORTED_VERSION, "quote v3 is SGX only")
        body = EnclaveReport(r.take(SGX_REPORT_SIZE, "ISV enclave report"))
    elif hdr.version == 4:
        if hdr.tee_type != TEE_TDX:
            raise ParseError(Reason.UNSUPPORTED_VERSION, "SGX quotes v4 are not supported (SGX uses v3)")
        body = TdReport(r.take(TD10_SIZE, "TD report body"))
    elif hdr.version == 5:
        btype = r.u16("body type")
        bsize = r.u32("body size")
        expected = {BODY_SGX: SGX_REPORT_SIZE, BODY_TDX10: TD10_SIZE, BODY_TDX15: TD15_SIZE}.get(btype)
        if expected is None:
            raise ParseError(Reason.UNSUPPORTED_VERSION, f"quote v5 body type {btype} is not supported")
        if bsize != expected:
            raise ParseError(Reason.BAD_FORMAT, f"quote v5 body type {btype} has size {bsize}, expected {expected}")
        if (btype == BODY_SGX) != (hdr.tee_type == TEE_SGX):
            raise ParseError(Reason.BAD_FORMAT, f"quote v5 body type {btype} does not match TEE type 0x{hdr.tee_type:x}")
        b = r.take(bsize, "report body")
        body = EnclaveReport(b) if btype == BODY_SGX else TdReport(b)
    else:
        raise ParseError(Reason.UNSUPPORTED_VERSION, f"quote version {hdr.version}: supported are 3 (SGX), 4 and 5 (TDX)")
    signed = raw[: r.pos]
    sig_len = r.u32("signature data length")
    sd = _Reader(r.take(sig_len, "signature data"), "quote signature data")
    trailing = len(raw) - r.pos
    signature = sd.take(ECDSA_SIG_SIZE, "quote signature")
    att_key = sd.take(ECDSA_KEY_SIZE, "attestation key")
    if hdr.version == 3:
        qe_part = sd
    else:
        ctype = sd.u16("certification data type")
        if ctype != CERT_TYPE_QE_REPORT:
            raise ParseError(Reason.UNSUPPORTED_VERSION, f"certification data type {ctype}: expected {CERT_TYPE_QE_REPORT} (QE report)")
        csize = sd.u32("certification data size")
        qe_part = _Reader(sd.take(csize, "QE report certification data"), "QE report certification data")
    qe_report = EnclaveReport(qe_part.take(SGX_REPORT_SIZE, "QE report"))
    qe_sig = qe_part.take(ECDSA_SIG_SIZE, "QE report signature")
    auth_len = qe_part.u16("QE authentication data size")
    auth = qe_part.take(auth_len, "QE authentication data")
    ptype = qe_part.u16("PCK certification data type")
    if ptype != CERT_TYPE_PCK_CHAIN:
        raise ParseError(Reason.UNSUPPORTED_VERSION, f"PCK certification data type {ptype}: only 5 (PEM PCK chain) is supported")
    psize = qe_part.u32("PCK certification data size")
    chain = qe_part.take(psize, "PCK certificate chain")
    return Quote(raw, hdr, signed, body, signature, att_key, qe_report, qe_sig, auth, chain, trailing)


def quote_report_data(raw: bytes) -> bytes:
    """The 64-byte REPORTDATA of a quote (RA-TLS binding checks read it)."""
    return parse_quote(raw).report_data


def encode_quote(
    signed: bytes,
    signature: bytes,
    attestation_key: bytes,
    qe_report: bytes,
    qe_report_signature: bytes,
    qe_auth_data: bytes,
    pck_chain_pem: bytes,
) -> bytes:
    """Serialise a quote from its parts (the inverse of :func:`parse_quote`, without padding).

    ``signed`` is header (+ v5 descriptor) + body as the attestation key signs it. Used to build
    test quotes under a test PKI and by tamper tests that swap a part.
    """
    version = int.from_bytes(signed[HDR_VERSION], "little")
    qe = qe_report + qe_report_signature + struct.pack("<H", len(qe_auth_data)) + qe_auth_data
    qe += struct.pack("<HI", CERT_TYPE_PCK_CHAIN, len(pck_chain_pem)) + pck_chain_pem
    sig = signature + attestation_key
    sig += qe if version == 3 else struct.pack("<HI", CERT_TYPE_QE_REPORT, len(qe)) + qe
    return signed + struct.pack("<I", len(sig)) + sig
