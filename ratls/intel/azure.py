"""Azure confidential VMs: the HCL report that binds the vTPM's runtime data to the TEE report.

Azure's paravisor (HCL) does not let the guest choose the TEE's report data: it puts the hash of a
runtime-data JSON there (the vTPM attestation key ``HCLAkPub``, VM configuration, ``user-data``).
The HCL report carries that JSON next to the hardware report (a TDREPORT for TDX, an SNP report).
The TEE report's report data begins with the hash of that JSON (SHA-256 for hash type 1), which
binds them; the claims then expose the runtime data, as Azure Attestation's ``x-ms-runtime`` does.

* TDX: the evidence is the TD quote; the HCL report (an endorsement) holds the TDREPORT, whose
  REPORTDATA must equal the quote's.
* SEV-SNP: the evidence is the SNP report cut from the HCL report (bytes [0x20, 0x4C0)), verified
  to the AMD root with its VCEK as any SNP report is; the HCL report (an endorsement) must hold
  exactly that report. :func:`snp_evidence` builds that evidence from an HCL report.

:func:`check_hcl` is the binding step both verifiers run (``azure-hcl-report``).

Layout (Azure ``IGVM_ATTEST``/HCL report, as trustee's az-tdx-vtpm and az-snp-vtpm read it)::

    0x000  header: "HCLA", version u32, report size u32, request type u32, status u32, reserved 12
    0x020  hardware report area, 1184 bytes (SNP report, or TDREPORT in its first 1024 bytes)
    0x4C0  runtime data header: data size u32, version u32, report type u32, hash type u32,
           variable data size u32
    0x4D4  variable data: the runtime-data JSON
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import ParseError, Reason, VerificationError

HCL_MAGIC = b"HCLA"
HCL_HEADER = struct.Struct("<4sIIII12x")
HW_REPORT_OFFSET = 0x20
HW_REPORT_SIZE = 1184
RUNTIME_HEADER = struct.Struct("<IIIII")
RUNTIME_HEADER_OFFSET = HW_REPORT_OFFSET + HW_REPORT_SIZE  # 0x4C0
RUNTIME_DATA_OFFSET = RUNTIME_HEADER_OFFSET + RUNTIME_HEADER.size  # 0x4D4
TDREPORT_REPORTDATA = slice(128, 192)  # REPORTMACSTRUCT.REPORTDATA

REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
HASHES = {1: hashlib.sha256, 2: hashlib.sha384, 3: hashlib.sha512}


@dataclass(frozen=True)
class HclReport:
    report_type: int
    hash_type: int
    hw_report: bytes
    runtime_data: bytes
    runtime: dict[str, Any]

    @property
    def runtime_digest(self) -> bytes:
        return HASHES[self.hash_type](self.runtime_data).digest()

    @property
    def tdreport_report_data(self) -> bytes:
        return self.hw_report[TDREPORT_REPORTDATA]


STEP = "azure-hcl-report"
_TYPE_NAMES = {REPORT_TYPE_SNP: "SEV-SNP", REPORT_TYPE_TDX: "TDX"}


def check_hcl(item: bytes, *, report_type: int, report_data: bytes, hw_report: bytes | None = None) -> tuple[dict[str, Any], str]:
    """Bind an HCL report to verified TEE evidence; returns (runtime claims, step detail).

    ``report_data`` is the verified report's report data. For SNP, ``hw_report`` is the verified
    SNP report itself: the HCL report must carry those exact bytes. For TDX the HCL's TDREPORT
    must carry the quote's REPORTDATA. Raises ParseError / VerificationError.
    """
    hcl = parse_hcl_report(item)
    if hcl.report_type != report_type:
        got = _TYPE_NAMES.get(hcl.report_type, f"type {hcl.report_type}")
        raise VerificationError(Reason.WRONG_PRODUCT, f"HCL report holds a {got} report, the evidence is {_TYPE_NAMES[report_type]}")
    digest = hcl.runtime_digest
    if report_data[: len(digest)] != digest:
        raise VerificationError(Reason.REPORT_DATA_MISMATCH, f"report data {report_data[:len(digest)].hex()} != hash of the HCL runtime data {digest.hex()}")
    if report_type == REPORT_TYPE_SNP:
        if hw_report is None or hcl.hw_report != hw_report:
            raise VerificationError(Reason.REPORT_DATA_MISMATCH, "the HCL report carries another SNP report than the one verified")
    elif hcl.tdreport_report_data != report_data:
        raise VerificationError(Reason.REPORT_DATA_MISMATCH, "the HCL report's TDREPORT carries other REPORTDATA than the quote")
    return runtime_claims(hcl), f"report data = SHA-{len(digest) * 8}(runtime data, {len(hcl.runtime_data)} bytes)"


def snp_evidence(item: bytes, endorsements: tuple[bytes, ...] = ()) -> tuple[bytes, tuple[bytes, ...]]:
    """(SNP report, endorsements) from an Azure SNP HCL report: the report cut out, the HCL report
    itself first among the endorsements so the verifier binds its runtime data."""
    hcl = parse_hcl_report(item)
    if hcl.report_type != REPORT_TYPE_SNP:
        raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"HCL report type {hcl.report_type} is not SEV-SNP ({REPORT_TYPE_SNP})")
    return hcl.hw_report, (item, *endorsements)


def is_hcl_report(data: bytes) -> bool:
    return data[:4] == HCL_MAGIC


def parse_hcl_report(data: bytes) -> HclReport:
    if len(data) < RUNTIME_DATA_OFFSET:
        raise ParseError(Reason.TRUNCATED, f"HCL report of {len(data)} bytes, needs at least {RUNTIME_DATA_OFFSET}")
    magic, _version, _size, _req, _status = HCL_HEADER.unpack_from(data)
    if magic != HCL_MAGIC:
        raise ParseError(Reason.BAD_FORMAT, "not an HCL report (no 'HCLA' signature)")
    _dsize, _rver, report_type, hash_type, var_size = RUNTIME_HEADER.unpack_from(data, RUNTIME_HEADER_OFFSET)
    if hash_type not in HASHES:
        raise ParseError(Reason.UNSUPPORTED_VERSION, f"HCL runtime data hash type {hash_type}")
    runtime_data = data[RUNTIME_DATA_OFFSET : RUNTIME_DATA_OFFSET + var_size]
    if len(runtime_data) != var_size:
        raise ParseError(Reason.TRUNCATED, f"HCL runtime data needs {var_size} bytes, {len(runtime_data)} present")
    try:
        runtime = json.loads(runtime_data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ParseError(Reason.BAD_ENCODING, f"HCL runtime data is not JSON: {e}") from e
    if not isinstance(runtime, dict):
        raise ParseError(Reason.BAD_FORMAT, "HCL runtime data is not a JSON object")
    hw = data[HW_REPORT_OFFSET:RUNTIME_HEADER_OFFSET]
    return HclReport(report_type, hash_type, hw, runtime_data, runtime)


def runtime_claims(hcl: HclReport) -> dict[str, Any]:
    """``x-ms-runtime`` (the JSON as Azure Attestation shows it) and flat entries a policy can compare."""
    rt = hcl.runtime
    c: dict[str, Any] = {"x-ms-runtime": rt, "x-ms-azurevm-runtime-data-hash": hcl.runtime_digest.hex()}
    cfg = rt.get("vm-configuration")
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if isinstance(v, (bool, int, str)):
                c[f"x-ms-runtime-vm-configuration-{k}"] = v
    if isinstance(rt.get("user-data"), str):
        c["x-ms-runtime-user-data"] = rt["user-data"].lower()
    keys = rt.get("keys")
    if isinstance(keys, list):
        c["x-ms-runtime-key-ids"] = [k.get("kid") for k in keys if isinstance(k, dict)]
    return c
