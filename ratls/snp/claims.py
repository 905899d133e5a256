"""Flat claims of a verified SEV-SNP report, named as Azure Attestation names them.

Azure's ``sevsnpvm`` claim set is what the confidential-ai sample's policies test
(``{"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-bootloader-svn": 3,
"x-ms-sevsnpvm-is-debuggable": false, ...}``), so those policies evaluate unchanged with
:mod:`ratls.policy`. Byte strings are lowercase hex, SVNs and levels are ints, flags are bools.

``tcb-status`` (the common claim every evidence type carries) has this SNP meaning, since AMD
publishes no TCB-status service like Intel's: ``UpToDate`` when REPORTED_TCB (the TCB the VCEK
was derived for, i.e. what the report is vouched at) is at least COMMITTED_TCB (the firmware's
anti-rollback floor on this machine) in every component; ``OutOfDate`` otherwise, i.e. the host
chose to sign with a VCEK older than the firmware it has committed to. A policy that needs a
minimum SVN per component says so with ``{"min": n}`` on the ``*-svn`` claims.
"""

from __future__ import annotations

from typing import Any

from . import abi

SEVSNPVM = "sevsnpvm"
P = "x-ms-sevsnpvm-"

ATTESTATION_TYPE = "x-ms-attestation-type"
LAUNCH_MEASUREMENT = P + "launchmeasurement"
HOST_DATA = P + "hostdata"
REPORT_DATA = P + "reportdata"
IS_DEBUGGABLE = P + "is-debuggable"
VMPL = P + "vmpl"
BOOTLOADER_SVN = P + "bootloader-svn"
TEE_SVN = P + "tee-svn"
SNPFW_SVN = P + "snpfw-svn"
MICROCODE_SVN = P + "microcode-svn"
FMC_SVN = P + "fmc-svn"  # Turin only
GUEST_SVN = P + "guestsvn"
ID_KEY_DIGEST = P + "idkeydigest"
AUTHOR_KEY_DIGEST = P + "authorkeydigest"
FAMILY_ID = P + "familyId"
IMAGE_ID = P + "imageId"
REPORT_ID = P + "reportid"
SMT_ALLOWED = P + "smt-allowed"
MIGRATION_ALLOWED = P + "migration-allowed"
CHIP_ID = P + "chipid"
POLICY_ABI_MAJOR = P + "policy-abi-major"
POLICY_ABI_MINOR = P + "policy-abi-minor"
GUEST_POLICY = P + "guest-policy"
SIGNING_KEY = P + "signing-key"
PRODUCT_NAME = P + "product-name"
FW_VERSION = P + "fw-version"
FW_BUILD = P + "fw-build"
REPORT_VERSION = P + "report-version"
TCB_STATUS = "tcb-status"

UP_TO_DATE = "UpToDate"
OUT_OF_DATE = "OutOfDate"


def tcb_status(report: abi.Report, product: str | None) -> str:
    """``UpToDate`` iff REPORTED_TCB >= COMMITTED_TCB component by component (see module doc)."""
    reported = report.tcb("reported", product).components()
    committed = report.tcb("committed", product).components()
    return UP_TO_DATE if all(reported[k] >= committed[k] for k in committed) else OUT_OF_DATE


def snp_claims(report: abi.Report, product: str, signing_key: str, *, attestation_type: str = SEVSNPVM) -> dict[str, Any]:
    """Claims of a report whose signature and chain have been verified (do not call before)."""
    tcb = report.tcb("reported", product)
    claims: dict[str, Any] = {
        ATTESTATION_TYPE: attestation_type,
        LAUNCH_MEASUREMENT: report.measurement.hex(),
        HOST_DATA: report.host_data.hex(),
        REPORT_DATA: report.report_data.hex(),
        IS_DEBUGGABLE: report.debug,
        VMPL: report.vmpl,
        BOOTLOADER_SVN: tcb.bootloader,
        TEE_SVN: tcb.tee,
        SNPFW_SVN: tcb.snp,
        MICROCODE_SVN: tcb.microcode,
        GUEST_SVN: report.guest_svn,
        ID_KEY_DIGEST: report.id_key_digest.hex(),
        AUTHOR_KEY_DIGEST: report.author_key_digest.hex(),
        FAMILY_ID: report.family_id.hex(),
        IMAGE_ID: report.image_id.hex(),
        REPORT_ID: report.report_id.hex(),
        SMT_ALLOWED: bool(report.policy & abi.POLICY_SMT),
        MIGRATION_ALLOWED: bool(report.policy & abi.POLICY_MIGRATE_MA),
        CHIP_ID: report.chip_id_for(product).hex(),
        POLICY_ABI_MAJOR: report.abi_major,
        POLICY_ABI_MINOR: report.abi_minor,
        GUEST_POLICY: report.policy,
        SIGNING_KEY: signing_key,
        PRODUCT_NAME: product,
        FW_VERSION: f"{report.current_major}.{report.current_minor}",
        FW_BUILD: report.current_build,
        REPORT_VERSION: report.version,
        TCB_STATUS: tcb_status(report, product),
    }
    if tcb.fmc is not None:
        claims[FMC_SVN] = tcb.fmc
    return claims
