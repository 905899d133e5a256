"""Evidence providers: where the sidecar gets its TEE's evidence, behind one interface.

``EvidenceProvider.get_evidence(report_data) -> Evidence`` (evidence and endorsements). Each
implementation takes its device or directory path as an argument so tests drive it against a fake
tree in a temporary directory; nothing is probed at import time.

* ``configfs-tsm`` -- Linux's ``/sys/kernel/config/tsm/report`` (TDX and SNP guests, kernel 6.7+):
  make an entry, write ``inblob``, read ``outblob`` (and ``auxblob``: the SNP certificate table),
  ``provider`` and ``generation``; a generation that moved between the write and the read means
  another writer raced us, and the read is retried.
* ``sev-guest`` -- ``/dev/sev-guest`` ioctls SNP_GET_REPORT / SNP_GET_EXT_REPORT (with the
  certificate table: VCEK/VLEK, ASK, ARK by GUID), the SNP fallback for older kernels.
* ``gramine`` -- Gramine's ``/dev/attestation``: write ``user_report_data``, read ``quote``.
* ``sim`` -- the software authority of ``ratls.sim`` (laptops and tests).
* ``auto`` -- the first of those the machine has; says what it looked for when it has none.
"""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ratls.errors import Reason, UsageError
from ratls.evidence import Evidence, EvidenceType

REPORT_DATA_SIZE = 64
TSM_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST_DEVICE = Path("/dev/sev-guest")
GRAMINE_ROOT = Path("/dev/attestation")

#: configfs-tsm ``provider`` value -> evidence type
TSM_PROVIDERS = {"tdx_guest": EvidenceType.TDX, "sev_guest": EvidenceType.SNP}
TSM_RETRIES = 3

# SEV guest certificate table GUIDs (GHCB spec, "Extended Guest Request")
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_GUIDS = {GUID_VCEK: "vcek", GUID_VLEK: "vlek", GUID_ASK: "ask", GUID_ARK: "ark"}
CERT_ENTRY = struct.Struct("<16sII")


class EvidenceProvider(Protocol):
    name: str
    evidence_type: EvidenceType

    def get_evidence(self, report_data: bytes) -> Evidence: ...


def _pad_report_data(report_data: bytes) -> bytes:
    if len(report_data) > REPORT_DATA_SIZE:
        raise UsageError(Reason.CONFIG_INVALID, f"report_data is {len(report_data)} bytes, at most {REPORT_DATA_SIZE}")
    return report_data.ljust(REPORT_DATA_SIZE, b"\x00")


def parse_cert_table(table: bytes) -> dict[str, bytes]:
    """SNP certificate table (GUID, offset, length entries, zero-terminated) -> name -> DER.

    Offsets are relative to the table start. Unknown GUIDs are kept under their GUID string.
    """
    out: dict[str, bytes] = {}
    pos = 0
    while pos + CERT_ENTRY.size <= len(table):
        guid, off, length = CERT_ENTRY.unpack_from(table, pos)
        pos += CERT_ENTRY.size
        if guid == bytes(16):
            break
        if off + length > len(table):
            raise UsageError(Reason.CONFIG_INVALID, f"SNP certificate table entry {uuid.UUID(bytes_le=guid)} points past the table")
        g = uuid.UUID(bytes_le=guid)
        out[CERT_GUIDS.get(g, str(g))] = table[off : off + length]
    return out


# --------------------------------------------------------------------------- configfs-tsm


class TsmFs:
    """The file operations the configfs-tsm provider makes; tests subclass it to act as the kernel."""

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def rmdir(self, path: Path) -> None:
        path.rmdir()

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)

    def exists(self, path: Path) -> bool:
        return path.exists()


@dataclass
class ConfigfsTsmProvider:
    """Linux configfs-tsm report interface (``Documentation/ABI/testing/configfs-tsm``)."""

    root: Path = TSM_ROOT
    #: expected provider ("tdx_guest" or "sev_guest"); None accepts either
    expect: str | None = None
    privlevel: int | None = None
    fs: TsmFs | None = None
    name: str = "configfs-tsm"

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._fs = self.fs or TsmFs()
        self._kind: EvidenceType | None = TSM_PROVIDERS.get(self.expect or "")

    @property
    def evidence_type(self) -> EvidenceType:
        """TDX or SNP: named by ``expect``, else read from a probe entry's ``provider`` once."""
        if self._kind is None:
            entry = self._new_entry()
            try:
                provider = self._fs.read(entry / "provider").decode().strip()
            finally:
                with contextlib.suppress(OSError):
                    self._fs.rmdir(entry)
            if provider not in TSM_PROVIDERS:
                raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: provider {provider!r} is not one of {sorted(TSM_PROVIDERS)}")
            self._kind = TSM_PROVIDERS[provider]
        return self._kind

    def _new_entry(self) -> Path:
        if not self.root.is_dir():
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: {self.root} is not a directory (kernel without TSM reports?)")
        entry = self.root / f"ratls-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self._fs.mkdir(entry)
        except OSError as e:
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: cannot create {entry}: {e}") from e
        return entry

    def get_evidence(self, report_data: bytes) -> Evidence:
        inblob = _pad_report_data(report_data)
        entry = self._new_entry()
        try:
            for _ in range(TSM_RETRIES):
                got = self._once(entry, inblob)
                if got is not None:
                    return got
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: generation kept changing under {entry} ({TSM_RETRIES} tries): another writer races us")
        finally:
            with contextlib.suppress(OSError):
                self._fs.rmdir(entry)

    def _once(self, entry: Path, inblob: bytes) -> Evidence | None:
        fs = self._fs
        provider = fs.read(entry / "provider").decode().strip()
        kind = TSM_PROVIDERS.get(provider)
        if kind is None:
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: provider {provider!r} is not one of {sorted(TSM_PROVIDERS)}")
        if self.expect and provider != self.expect:
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: provider is {provider!r}, expected {self.expect!r}")
        # each write bumps ``generation``: the outblob is ours only if nobody else wrote meanwhile
        want = int(fs.read(entry / "generation").strip())
        if self.privlevel is not None:
            fs.write(entry / "privlevel", str(self.privlevel).encode())
            want += 1
        fs.write(entry / "inblob", inblob)
        want += 1
        outblob = fs.read(entry / "outblob")
        aux = entry / "auxblob"
        auxblob = fs.read(aux) if fs.exists(aux) else b""
        if int(fs.read(entry / "generation").strip()) != want:
            return None
        if not outblob:
            raise UsageError(Reason.NO_PROVIDER, f"configfs-tsm: {provider} returned an empty outblob")
        endorsements: tuple[bytes, ...] = ()
        if kind is EvidenceType.SNP and auxblob:
            endorsements = tuple(parse_cert_table(auxblob).values())
        self._kind = kind
        return Evidence(kind, outblob, endorsements)


# --------------------------------------------------------------------------- /dev/sev-guest

# struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data; u64 exitinfo2; }
SNP_IOCTL_STRUCT = struct.Struct("<B7xQQQ")
_IOC_WRITE_READ = 3
SNP_GET_REPORT = (_IOC_WRITE_READ << 30) | (SNP_IOCTL_STRUCT.size << 16) | (ord("S") << 8) | 0x0
SNP_GET_EXT_REPORT = (_IOC_WRITE_READ << 30) | (SNP_IOCTL_STRUCT.size << 16) | (ord("S") << 8) | 0x2
SNP_REPORT_REQ = struct.Struct("<64sI28x")  # user_data, vmpl
SNP_RESP_SIZE = 4000
SNP_RESP_HEADER = struct.Struct("<II24x")  # status, report_size
SNP_VMM_ERR_INVALID_LEN = 1
PAGE = 4096


@dataclass(frozen=True)
class SnpIoctlResult:
    response: bytes  # the 4000-byte MSG_REPORT_RSP buffer
    certs: bytes | None  # certificate table (extended request only)
    exitinfo2: int = 0
    #: for an extended request refused for length: the size the host asks for
    certs_len: int = 0


def snp_ioctl(fd: int, request: int, report_req: bytes, certs_len: int) -> SnpIoctlResult:
    """The real ioctl (ctypes buffers); tests replace it: a regular file takes no ioctls."""
    import ctypes
    import fcntl

    req = ctypes.create_string_buffer(report_req, len(report_req) + 16)
    resp = ctypes.create_string_buffer(SNP_RESP_SIZE)
    certs = ctypes.create_string_buffer(certs_len) if request == SNP_GET_EXT_REPORT else None
    if certs is not None:
        ext = report_req + struct.pack("<QI4x", ctypes.addressof(certs), certs_len)
        req = ctypes.create_string_buffer(ext, len(ext))
    arg = bytearray(SNP_IOCTL_STRUCT.pack(1, ctypes.addressof(req), ctypes.addressof(resp), 0))
    try:
        fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        exitinfo2 = SNP_IOCTL_STRUCT.unpack(bytes(arg))[3]
        if certs is not None and (exitinfo2 >> 32) == SNP_VMM_ERR_INVALID_LEN:
            need = struct.unpack_from("<I", req.raw, SNP_REPORT_REQ.size + 8)[0]
            return SnpIoctlResult(b"", None, exitinfo2, need)
        raise UsageError(Reason.NO_PROVIDER, f"/dev/sev-guest ioctl 0x{request:x} failed: {e} (exitinfo2 0x{exitinfo2:x})") from e
    return SnpIoctlResult(resp.raw, certs.raw if certs is not None else None, SNP_IOCTL_STRUCT.unpack(bytes(arg))[3])


@dataclass
class SevGuestProvider:
    device: Path = SEV_GUEST_DEVICE
    vmpl: int = 0
    extended: bool = True
    ioctl: Callable[[int, int, bytes, int], SnpIoctlResult] = snp_ioctl
    name: str = "sev-guest"
    evidence_type: EvidenceType = EvidenceType.SNP

    def get_evidence(self, report_data: bytes) -> Evidence:
        req = SNP_REPORT_REQ.pack(_pad_report_data(report_data), self.vmpl)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as e:
            raise UsageError(Reason.NO_PROVIDER, f"sev-guest: cannot open {self.device}: {e}") from e
        try:
            if not self.extended:
                res = self.ioctl(fd, SNP_GET_REPORT, req, 0)
            else:
                certs_len = 4 * PAGE
                res = self.ioctl(fd, SNP_GET_EXT_REPORT, req, certs_len)
                if res.certs_len and not res.response:
                    res = self.ioctl(fd, SNP_GET_EXT_REPORT, req, res.certs_len)
        finally:
            os.close(fd)
        if len(res.response) < SNP_RESP_HEADER.size:
            raise UsageError(Reason.NO_PROVIDER, f"sev-guest: response of {len(res.response)} bytes")
        status, size = SNP_RESP_HEADER.unpack_from(res.response)
        if status != 0:
            raise UsageError(Reason.NO_PROVIDER, f"sev-guest: firmware status 0x{status:x}")
        report = res.response[SNP_RESP_HEADER.size : SNP_RESP_HEADER.size + size]
        if len(report) != size or size == 0:
            raise UsageError(Reason.NO_PROVIDER, f"sev-guest: report size {size} exceeds the response")
        endorsements = tuple(parse_cert_table(res.certs).values()) if res.certs else ()
        return Evidence(EvidenceType.SNP, report, endorsements)


# --------------------------------------------------------------------------- Gramine


@dataclass
class GramineProvider:
    """Gramine's pseudo-files (``/dev/attestation``); the quote needs ``sgx.remote_attestation = "dcap"``."""

    root: Path = GRAMINE_ROOT
    name: str = "gramine"
    evidence_type: EvidenceType = EvidenceType.SGX

    def get_evidence(self, report_data: bytes) -> Evidence:
        root = Path(self.root)
        kind_file = root / "attestation_type"
        if kind_file.exists():
            kind = kind_file.read_text().strip()
            if kind != "dcap":
                raise UsageError(Reason.NO_PROVIDER, f"gramine: attestation_type is {kind!r}; DCAP quotes need 'dcap'")
        try:
            (root / "user_report_data").write_bytes(_pad_report_data(report_data))
            quote = (root / "quote").read_bytes()
        except OSError as e:
            raise UsageError(Reason.NO_PROVIDER, f"gramine: {root}: {e}") from e
        if not quote:
            raise UsageError(Reason.NO_PROVIDER, "gramine: empty quote")
        return Evidence(EvidenceType.SGX, quote)


# --------------------------------------------------------------------------- sim


@dataclass
class SimProvider:
    """The software TEE of ``ratls.sim``; the state directory comes from ``ratls sim init``."""

    directory: Path | str
    measurement: bytes | None = None
    host_data: bytes | None = None
    debug: bool = False
    name: str = "sim"
    evidence_type: EvidenceType = EvidenceType.SIM

    def __post_init__(self) -> None:
        self._authority: Any = None

    def get_evidence(self, report_data: bytes) -> Evidence:
        if self._authority is None:
            from ratls.io.simdir import load_or_create  # lazy: only sim users need it

            self._authority = load_or_create(self.directory)
        kw: dict[str, Any] = {"debug": self.debug}
        if self.measurement is not None:
            kw["measurement"] = self.measurement
        if self.host_data is not None:
            kw["host_data"] = self.host_data
        return self._authority.report(_pad_report_data(report_data), **kw)


# --------------------------------------------------------------------------- DCAP collateral


@dataclass
class WithIntelCollateral:
    """Wraps a TDX/SGX provider: appends DCAP collateral from a getter to the endorsements.

    Verifiers then check the quote offline from the certificate alone (DESIGN.md: endorsements ride
    in OID 2.23.133.5.4.2). ``getter`` is a :class:`ratls.io.collateral.CacheDir`, a
    :class:`~ratls.io.collateral.PccsGetter` or a chain of them; missing items are simply left out
    (the verifier reports what it could not check).
    """

    inner: EvidenceProvider
    getter: Any

    @property
    def name(self) -> str:
        return f"{self.inner.name}+collateral"

    @property
    def evidence_type(self) -> EvidenceType:
        return self.inner.evidence_type

    def get_evidence(self, report_data: bytes) -> Evidence:
        ev = self.inner.get_evidence(report_data)
        if ev.type not in (EvidenceType.TDX, EvidenceType.SGX):
            return ev
        from ratls.intel.collateral import KEY_CHAIN_TCB, KEY_CRL_PCK, KEY_CRL_ROOT, KEY_QEIDENTITY, KEY_TCBINFO, parse_pem_chain
        from ratls.intel.pck import pck_extension
        from ratls.intel.quote import parse_quote

        q = parse_quote(ev.data)
        chain = parse_pem_chain(q.pck_chain_pem)
        fmspc = pck_extension(chain[0]).fmspc.hex()
        tee = "tdx" if ev.type is EvidenceType.TDX else "sgx"
        ca = "processor" if len(chain) > 1 and "Processor" in chain[1].subject.rfc4514_string() else "platform"
        keys = [KEY_TCBINFO.format(tee=tee, fmspc=fmspc), KEY_QEIDENTITY.format(tee=tee), KEY_CRL_ROOT, KEY_CRL_PCK.format(ca=ca), KEY_CHAIN_TCB]
        extra = []
        for key in keys:
            blob = self.getter.get(key)
            if blob and key.startswith("crl/"):
                blob = _crl_der(blob)
            if blob:
                extra.append(blob)
        return Evidence(ev.type, ev.data, ev.endorsements + tuple(extra))


def _crl_der(blob: bytes) -> bytes | None:
    """A CRL as DER: a PCCS serves the root CA CRL as hex, which verifiers do not recognise by
    content. One that does not parse is left out (the verifier then says revocation was not checked)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from ratls.errors import CollateralError
    from ratls.intel.collateral import parse_crl

    try:
        return parse_crl(blob).public_bytes(Encoding.DER)
    except CollateralError:
        return None


# --------------------------------------------------------------------------- auto and the factory


def detect(*, tsm_root: Path = TSM_ROOT, sev_device: Path = SEV_GUEST_DEVICE, gramine_root: Path = GRAMINE_ROOT, tsm_fs: TsmFs | None = None) -> EvidenceProvider:
    """The first provider this machine has: configfs-tsm, then /dev/sev-guest, then Gramine."""
    looked = []
    tsm_root = Path(tsm_root)
    if tsm_root.is_dir():
        return ConfigfsTsmProvider(tsm_root, fs=tsm_fs)
    looked.append(f"configfs-tsm {tsm_root}")
    if Path(sev_device).exists():
        return SevGuestProvider(Path(sev_device))
    looked.append(f"SEV guest device {sev_device}")
    if (Path(gramine_root) / "quote").exists():
        return GramineProvider(Path(gramine_root))
    looked.append(f"Gramine {Path(gramine_root) / 'quote'}")
    raise UsageError(Reason.NO_PROVIDER, f"no TEE evidence provider on this machine (looked for: {'; '.join(looked)}); use --tee sim for a simulated TEE")


def make_provider(kind: str, **options: Any) -> EvidenceProvider:
    """See :func:`_make_provider`; with option ``collateral`` (a getter) TDX/SGX evidence carries DCAP collateral."""
    prov = _make_provider(kind, **options)
    getter = options.get("collateral")
    if getter is not None and kind != "sim":
        return WithIntelCollateral(prov, getter)
    return prov


def _make_provider(kind: str, **options: Any) -> EvidenceProvider:
    """Provider for ``--tee sim|snp|tdx|sgx|auto`` (and the explicit names of each interface).

    Options: ``tsm_root``, ``sev_device``, ``gramine_root`` (paths), ``sim_dir``, ``measurement``,
    ``host_data``, ``debug`` (sim), ``vmpl`` (SNP), ``tsm_fs`` (tests: a fake kernel).
    """
    tsm_fs = options.get("tsm_fs")
    tsm_root = Path(options.get("tsm_root", TSM_ROOT))
    sev_device = Path(options.get("sev_device", SEV_GUEST_DEVICE))
    gramine_root = Path(options.get("gramine_root", GRAMINE_ROOT))
    if kind == "sim":
        if "sim_dir" not in options:
            raise UsageError(Reason.CONFIG_INVALID, "--tee sim needs a simulator state directory (sim_dir)")
        return SimProvider(options["sim_dir"], options.get("measurement"), options.get("host_data"), bool(options.get("debug", False)))
    if kind == "tdx" or kind == "configfs-tsm":
        return ConfigfsTsmProvider(tsm_root, expect="tdx_guest" if kind == "tdx" else None, fs=tsm_fs)
    if kind == "snp":
        if tsm_root.is_dir():
            return ConfigfsTsmProvider(tsm_root, expect="sev_guest", privlevel=options.get("vmpl"), fs=tsm_fs)
        if sev_device.exists():
            return SevGuestProvider(sev_device, vmpl=int(options.get("vmpl", 0)))
        raise UsageError(Reason.NO_PROVIDER, f"--tee snp: neither {tsm_root} nor {sev_device} exists")
    if kind == "sev-guest":
        return SevGuestProvider(sev_device, vmpl=int(options.get("vmpl", 0)))
    if kind in ("sgx", "gramine"):
        return GramineProvider(gramine_root)
    if kind == "auto":
        return detect(tsm_root=tsm_root, sev_device=sev_device, gramine_root=gramine_root, tsm_fs=tsm_fs)
    raise UsageError(Reason.CONFIG_INVALID, f"unknown TEE kind {kind!r}: use sim, snp, tdx, sgx or auto")


__all__ = [
    "ConfigfsTsmProvider",
    "EvidenceProvider",
    "GramineProvider",
    "SevGuestProvider",
    "SimProvider",
    "SnpIoctlResult",
    "TsmFs",
    "WithIntelCollateral",
    "detect",
    "make_provider",
    "parse_cert_table",
    "snp_ioctl",
]
