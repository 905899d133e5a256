"""The SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP ABI specification, Table "ATTESTATION_REPORT Structure").

Bytes in, a frozen :class:`Report` out; the only exception on bad bytes is
:class:`~ratls.errors.ParseError`. Offsets and sizes are named after the spec (as go-sev-guest's
``abi`` package does), so a reviewer can hold this file next to the table.

Versions: 2 (Milan/Genoa firmware before 1.55: no CPUID fields), 3 (CPUID family/model/stepping),
5 (launch/current mitigation vectors). Any other version is ``unsupported-version``: a layout we
have not read in the spec is not guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParseError, Reason

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # the signature covers bytes [0, 0x2A0)

# (offset, size) of each field, from the spec's table.
VERSION = (0x000, 4)
GUEST_SVN = (0x004, 4)
POLICY = (0x008, 8)
FAMILY_ID = (0x010, 16)
IMAGE_ID = (0x020, 16)
VMPL = (0x030, 4)
SIGNATURE_ALGO = (0x034, 4)
CURRENT_TCB = (0x038, 8)
PLATFORM_INFO = (0x040, 8)
FLAGS = (0x048, 4)  # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
RESERVED_04C = (0x04C, 4)
REPORT_DATA = (0x050, 64)
MEASUREMENT = (0x090, 48)
HOST_DATA = (0x0C0, 32)
ID_KEY_DIGEST = (0x0E0, 48)
AUTHOR_KEY_DIGEST = (0x110, 48)
REPORT_ID = (0x140, 32)
REPORT_ID_MA = (0x160, 32)
REPORTED_TCB = (0x180, 8)
CPUID_FAM_ID = (0x188, 1)  # v3+
CPUID_MOD_ID = (0x189, 1)  # v3+
CPUID_STEP = (0x18A, 1)  # v3+
RESERVED_18B = (0x18B, 0x1A0 - 0x18B)  # v3+; in v2 the reserved run starts at 0x188
CHIP_ID = (0x1A0, 64)
COMMITTED_TCB = (0x1E0, 8)
CURRENT_BUILD = (0x1E8, 1)
CURRENT_MINOR = (0x1E9, 1)
CURRENT_MAJOR = (0x1EA, 1)
RESERVED_1EB = (0x1EB, 1)
COMMITTED_BUILD = (0x1EC, 1)
COMMITTED_MINOR = (0x1ED, 1)
COMMITTED_MAJOR = (0x1EE, 1)
RESERVED_1EF = (0x1EF, 1)
LAUNCH_TCB = (0x1F0, 8)
LAUNCH_MIT_VECTOR = (0x1F8, 8)  # v5
CURRENT_MIT_VECTOR = (0x200, 8)  # v5
RESERVED_TAIL_V3 = (0x1F8, SIGNED_SIZE - 0x1F8)
RESERVED_TAIL_V5 = (0x208, SIGNED_SIZE - 0x208)
SIGNATURE = (0x2A0, 0x200)
SIG_R = (0x2A0, 72)  # little-endian, zero-extended P-384 scalar
SIG_S = (0x2E8, 72)
SIG_RESERVED = (0x330, REPORT_SIZE - 0x330)

SIG_ALGO_ECDSA_P384_SHA384 = 1
SUPPORTED_VERSIONS = (2, 3, 5)

FLAG_AUTHOR_KEY_EN = 1 << 0
FLAG_MASK_CHIP_KEY = 1 << 1
FLAG_SIGNING_KEY_SHIFT = 2
FLAG_SIGNING_KEY_MASK = 0b111
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

# Guest policy bits (spec Table "Guest Policy Structure").
POLICY_ABI_MINOR_MASK = 0xFF
POLICY_ABI_MAJOR_SHIFT = 8
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17  # must be one
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25
POLICY_KNOWN_BITS = (1 << 26) - 1

# PLATFORM_INFO bits.
PLATFORM_SMT_EN = 1 << 0
PLATFORM_TSME_EN = 1 << 1
PLATFORM_ECC_EN = 1 << 2
PLATFORM_RAPL_DIS = 1 << 3
PLATFORM_CIPHERTEXT_HIDING_EN = 1 << 4
PLATFORM_ALIAS_CHECK_COMPLETE = 1 << 5

# Products (KDS names) and how a v3+ report's CPUID identifies them.
MILAN, GENOA, TURIN = "Milan", "Genoa", "Turin"
TURIN_CHIP_ID_SIZE = 8


def product_from_cpuid(family: int, model: int) -> str | None:
    """KDS product line from CPUID family/model (None when unknown, e.g. a v2 report's zeros).

    Family 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh (Genoa-derived Bergamo/Siena) Genoa;
    family 1Ah is Turin.
    """
    if family == 0x19:
        if model <= 0x0F:
            return MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return GENOA
        return None
    if family == 0x1A:
        return TURIN
    return None


def product_line(product_name: str) -> str:
    """'Milan-B0' -> 'Milan' (the VCEK productName carries a stepping suffix, KDS paths do not)."""
    return product_name.split("-", 1)[0]


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION. ``fmc`` is None for Milan/Genoa (their layout has no FMC SVN).

    Milan/Genoa: byte 0 boot loader, 1 TEE, 2-5 reserved, 6 SNP firmware, 7 microcode.
    Turin:       byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP firmware, 4-6 reserved, 7 microcode.
    """

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: str | None) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product == TURIN:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def components(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.components().items())


def _u(buf: bytes, f: tuple[int, int]) -> int:
    off, size = f
    return int.from_bytes(buf[off : off + size], "little")


def _b(buf: bytes, f: tuple[int, int]) -> bytes:
    off, size = f
    return bytes(buf[off : off + size])


@dataclass(frozen=True)
class Report:
    """A parsed ATTESTATION_REPORT. Byte fields are as in the report; integers are decoded LE."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb_raw: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb_raw: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & FLAG_AUTHOR_KEY_EN)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & FLAG_MASK_CHIP_KEY)

    @property
    def signing_key(self) -> int:
        """0 = VCEK, 1 = VLEK, 7 = none (report unsigned)."""
        return (self.flags >> FLAG_SIGNING_KEY_SHIFT) & FLAG_SIGNING_KEY_MASK

    @property
    def cpuid_product(self) -> str | None:
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def abi_major(self) -> int:
        return (self.policy >> POLICY_ABI_MAJOR_SHIFT) & 0xFF

    @property
    def abi_minor(self) -> int:
        return self.policy & POLICY_ABI_MINOR_MASK

    def chip_id_for(self, product: str | None) -> bytes:
        """The significant chip id: 8 bytes on Turin (the rest is zero), 64 elsewhere."""
        return self.chip_id[:TURIN_CHIP_ID_SIZE] if product == TURIN else self.chip_id

    def tcb(self, which: str, product: str | None) -> TcbVersion:
        """Decode ``reported``/``current``/``committed``/``launch`` TCB in ``product``'s layout."""
        raw = {"reported": self.reported_tcb_raw, "current": self.current_tcb_raw, "committed": self.committed_tcb_raw, "launch": self.launch_tcb_raw}[which]
        return TcbVersion.decode(raw, product)


def _zero(buf: bytes, f: tuple[int, int], name: str) -> None:
    off, size = f
    chunk = buf[off : off + size]
    if any(chunk):
        first = next(i for i, b in enumerate(chunk) if b)
        raise ParseError(Reason.MUST_BE_ZERO, f"report {name} at 0x{off:03x}+{size} must be zero; byte 0x{off + first:03x} is 0x{chunk[first]:02x}")


def parse_report(data: bytes) -> Report:
    """Parse and structurally check a raw 1184-byte report. Raises only ParseError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(Reason.BAD_FORMAT, f"report must be bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) != REPORT_SIZE:
        reason = Reason.TRUNCATED if len(buf) < REPORT_SIZE else Reason.BAD_FORMAT
        raise ParseError(reason, f"SEV-SNP report is {REPORT_SIZE} bytes, got {len(buf)}")
    version = _u(buf, VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise ParseError(Reason.UNSUPPORTED_VERSION, f"report version {version} (supported: 2, 3, 5)")
    sig_algo = _u(buf, SIGNATURE_ALGO)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise ParseError(Reason.BAD_FORMAT, f"signature_algo {sig_algo}, expected {SIG_ALGO_ECDSA_P384_SHA384} (ECDSA P-384 with SHA-384)")
    policy = _u(buf, POLICY)
    if not policy & POLICY_RESERVED_ONE:
        raise ParseError(Reason.BAD_FORMAT, f"guest policy 0x{policy:x}: bit 17 is reserved and must be one")
    vmpl = _u(buf, VMPL)
    if vmpl > 3:
        raise ParseError(Reason.BAD_FORMAT, f"vmpl {vmpl} out of range 0..3")
    flags = _u(buf, FLAGS)
    if flags >> 5:
        raise ParseError(Reason.MUST_BE_ZERO, f"report flags 0x{flags:x}: bits 5..31 are reserved")
    _zero(buf, RESERVED_04C, "reserved")
    if version >= 3:
        _zero(buf, RESERVED_18B, "reserved (after CPUID)")
        fam, mod, step = _u(buf, CPUID_FAM_ID), _u(buf, CPUID_MOD_ID), _u(buf, CPUID_STEP)
    else:
        _zero(buf, (CPUID_FAM_ID[0], RESERVED_18B[0] + RESERVED_18B[1] - CPUID_FAM_ID[0]), "reserved (v2)")
        fam = mod = step = None
    _zero(buf, RESERVED_1EB, "reserved")
    _zero(buf, RESERVED_1EF, "reserved")
    if version >= 5:
        _zero(buf, RESERVED_TAIL_V5, "reserved (v5 tail)")
        launch_mit, current_mit = _u(buf, LAUNCH_MIT_VECTOR), _u(buf, CURRENT_MIT_VECTOR)
    else:
        _zero(buf, RESERVED_TAIL_V3, "reserved (tail)")
        launch_mit = current_mit = None
    _zero(buf, SIG_RESERVED, "signature reserved")
    return Report(
        raw=buf,
        version=version,
        guest_svn=_u(buf, GUEST_SVN),
        policy=policy,
        family_id=_b(buf, FAMILY_ID),
        image_id=_b(buf, IMAGE_ID),
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb_raw=_u(buf, CURRENT_TCB),
        platform_info=_u(buf, PLATFORM_INFO),
        flags=flags,
        report_data=_b(buf, REPORT_DATA),
        measurement=_b(buf, MEASUREMENT),
        host_data=_b(buf, HOST_DATA),
        id_key_digest=_b(buf, ID_KEY_DIGEST),
        author_key_digest=_b(buf, AUTHOR_KEY_DIGEST),
        report_id=_b(buf, REPORT_ID),
        report_id_ma=_b(buf, REPORT_ID_MA),
        reported_tcb_raw=_u(buf, REPORTED_TCB),
        cpuid_family=fam,
        cpuid_model=mod,
        cpuid_stepping=step,
        chip_id=_b(buf, CHIP_ID),
        committed_tcb_raw=_u(buf, COMMITTED_TCB),
        current_build=_u(buf, CURRENT_BUILD),
        current_minor=_u(buf, CURRENT_MINOR),
        current_major=_u(buf, CURRENT_MAJOR),
        committed_build=_u(buf, COMMITTED_BUILD),
        committed_minor=_u(buf, COMMITTED_MINOR),
        committed_major=_u(buf, COMMITTED_MAJOR),
        launch_tcb_raw=_u(buf, LAUNCH_TCB),
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=_u(buf, SIG_R),
        signature_s=_u(buf, SIG_S),
    )


def encode_tcb(product: str | None, *, bootloader: int, tee: int, snp: int, microcode: int, fmc: int = 0) -> int:
    """The inverse of :meth:`TcbVersion.decode` (the simulated TEE builds reports with it)."""
    b = bytearray(8)
    if product == TURIN:
        b[0], b[1], b[2], b[3], b[7] = fmc, bootloader, tee, snp, microcode
    else:
        b[0], b[1], b[6], b[7] = bootloader, tee, snp, microcode
    return int.from_bytes(b, "little")


def put(buf: bytearray, f: tuple[int, int], value: int | bytes) -> None:
    """Write one field (int as little-endian, or bytes of at most the field's size, zero-padded)."""
    off, size = f
    if isinstance(value, int):
        buf[off : off + size] = value.to_bytes(size, "little")
    else:
        if len(value) > size:
            raise ValueError(f"field at 0x{off:x} holds {size} bytes, got {len(value)}")
        buf[off : off + size] = bytes(value).ljust(size, b"\0")


__all__ = ["REPORT_SIZE", "SIGNED_SIZE", "Report", "TcbVersion", "encode_tcb", "parse_report", "product_from_cpuid", "product_line", "put"]
