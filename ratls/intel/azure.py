"""Azure confidential VMs: the HCL report that binds the vTPM's runtime data to the TEE report.

Azure's paravisor (HCL) does not let the guest choose the TEE's report data: it puts the hash of a
runtime-data JSON there (the vTPM attestation key ``HCLAkPub``, VM configuration, ``user-data``).
The HCL report carries that JSON next to the hardware report (a TDREPORT for TDX, an SNP report).
A TDX quote's REPORTDATA[0:32] = SHA-256(runtime data) binds them; the claims then expose the
runtime data, as Azure Attestation's ``x-ms-runtime`` does.

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

from ..errors import ParseError, Reason

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
