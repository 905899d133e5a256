"""Flat claims for TDX and SGX quotes, named as Azure Attestation names them.

TDX carries every value under two names, the same bytes in both:

* **Azure's names** (the Azure Attestation EAT profile for Intel TDX, also IETF
  draft-kdyxy-rats-tdx-eat-profile): ``tdx_mrtd``, ``tdx_rtmr0``..``tdx_rtmr3``, ``tdx_mrseam``,
  ``tdx_mrsignerseam``, ``tdx_mrconfigid``, ``tdx_mrowner``, ``tdx_mrownerconfig``,
  ``tdx_report_data``, ``tdx_seam_attributes``, ``tdx_td_attributes``, ``tdx_tee_tcb_svn``,
  ``tdx_xfam`` (lower-case hex of the quote's bytes, in quote byte order), ``tdx_seamsvn`` (a
  number: TEE_TCB_SVN bytes 0-1 little-endian, i.e. module major SVN << 8 | minor SVN),
  ``tdx_td_attributes_debug``, ``_septve_disable``, ``_protection_keys``, ``_key_locker``,
  ``_perfmon`` (booleans: TD_ATTRIBUTES bits 0, 28, 30, 31, 63), the EAT ``dbgstat``
  (``"enabled"`` for a debug TD, else ``"disabled"``), ``attester_tcb_status`` and
  ``attester_advisory_ids`` (:func:`attester_claims`), and ``x-ms-attestation-type: tdxvm``.
  These are what an Azure Attestation TDX token holds, so a policy written against Azure's token
  evaluates unchanged.
* **ratls's original names** ``x-ms-tdxvm-*`` (``-mrtd``, ``-rtmr0``, ``-tdattributes``,
  ``-is-debuggable``, ``-reportdata``, ``-tee-tcb-svn``, ...; plus ``-quote-version`` and, for TDX 1.5
  bodies, ``-tee-tcb-svn2`` and ``-mrservicetd``, which Azure's profile lacks). They were modelled
  on Azure's SNP names before Azure published its TDX profile; they stay as aliases so existing
  policies, docs, deploy overlays and tests keep working.

The policy treats the aliases as one fact: the debug claims (``x-ms-tdxvm-is-debuggable``,
``tdx_td_attributes_debug``, ``dbgstat``) and the TCB-status claims (``tcb-status``,
``attester_tcb_status``) are each decided by the policy's own rule when it names any of them, and
refused by a secure default otherwise (see :mod:`ratls.policy`).

SGX: ``x-ms-attestation-type: sgx`` and Azure's ``x-ms-sgx-*`` claims (``-mrenclave``, ``-mrsigner``,
``-product-id``, ``-svn``, ``-is-debuggable``, ``-report-data``, ``-config-id``, ``-config-svn``,
``-isv-family-id``, ``-isv-extended-product-id``), plus ratls's ``-miscselect``, ``-attributes``,
``-cpu-svn`` and the older alias ``-isv-ext-product-id``.

Common (both): ``tcb-status``, ``tcb-date``, ``advisory-ids``, ``collateral-stale``,
``collateral-next-update``, ``crl-checked`` (the root and PCK CA CRLs were checked),
``qe-identity-checked`` (the QE report was matched against a signed QE identity), ``pck-fmspc``.
Byte strings are lower-case hex.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .quote import EnclaveReport, Quote, TdReport

TDX_TYPE = "tdxvm"
SGX_TYPE = "sgx"

#: Azure EAT profile TD_ATTRIBUTES booleans -> bit of the little-endian 64-bit TD_ATTRIBUTES
TD_ATTRIBUTE_BITS = {
    "tdx_td_attributes_debug": 0,
    "tdx_td_attributes_septve_disable": 28,
    "tdx_td_attributes_protection_keys": 30,
    "tdx_td_attributes_key_locker": 31,
    "tdx_td_attributes_perfmon": 63,
}
TDX_DEBUG = "tdx_td_attributes_debug"
DBGSTAT = "dbgstat"
ATTESTER_TCB_STATUS = "attester_tcb_status"
ATTESTER_ADVISORY_IDS = "attester_advisory_ids"


def tdx_claims(q: Quote) -> dict[str, Any]:
    b = q.body
    assert isinstance(b, TdReport)
    p = "x-ms-tdxvm-"
    c: dict[str, Any] = {
        "x-ms-attestation-type": TDX_TYPE,
        p + "quote-version": q.header.version,
        p + "mrtd": b.mr_td.hex(),
        p + "rtmr0": b.rtmr(0).hex(),
        p + "rtmr1": b.rtmr(1).hex(),
        p + "rtmr2": b.rtmr(2).hex(),
        p + "rtmr3": b.rtmr(3).hex(),
        p + "mrseam": b.mr_seam.hex(),
        p + "mrsignerseam": b.mr_signer_seam.hex(),
        p + "mrconfigid": b.mr_config_id.hex(),
        p + "mrowner": b.mr_owner.hex(),
        p + "mrownerconfig": b.mr_owner_config.hex(),
        p + "tdattributes": b.td_attributes.hex(),
        p + "is-debuggable": b.debug,
        p + "xfam": b.xfam.hex(),
        p + "tee-tcb-svn": b.tee_tcb_svn.hex(),
        p + "reportdata": b.report_data.hex(),
    }
    if b.tee_tcb_svn2 is not None:
        c[p + "tee-tcb-svn2"] = b.tee_tcb_svn2.hex()
        c[p + "mrservicetd"] = (b.mr_service_td or b"").hex()
    c.update(tdx_eat_claims(b))
    return c


def tdx_eat_claims(b: TdReport) -> dict[str, Any]:
    """The TD report body under the Azure Attestation EAT profile's names and value types."""
    attrs = int.from_bytes(b.td_attributes, "little")
    c: dict[str, Any] = {
        "tdx_mrsignerseam": b.mr_signer_seam.hex(),
        "tdx_mrseam": b.mr_seam.hex(),
        "tdx_mrtd": b.mr_td.hex(),
        **{f"tdx_rtmr{i}": b.rtmr(i).hex() for i in range(4)},
        "tdx_mrconfigid": b.mr_config_id.hex(),
        "tdx_mrowner": b.mr_owner.hex(),
        "tdx_mrownerconfig": b.mr_owner_config.hex(),
        "tdx_report_data": b.report_data.hex(),
        "tdx_seam_attributes": b.seam_attributes.hex(),
        "tdx_td_attributes": b.td_attributes.hex(),
        **{name: bool(attrs >> bit & 1) for name, bit in TD_ATTRIBUTE_BITS.items()},
        "tdx_tee_tcb_svn": b.tee_tcb_svn.hex(),
        "tdx_xfam": b.xfam.hex(),
        "tdx_seamsvn": int.from_bytes(b.tee_tcb_svn[0:2], "little"),
    }
    c[DBGSTAT] = "enabled" if c[TDX_DEBUG] else "disabled"
    return c


def attester_claims(tcb_status: str, advisory_ids: Iterable[str]) -> dict[str, Any]:
    """Azure's names for the platform's TCB verdict (TDX): the same values as ``tcb-status`` and
    ``advisory-ids``."""
    return {ATTESTER_TCB_STATUS: tcb_status, ATTESTER_ADVISORY_IDS: list(advisory_ids)}


def sgx_claims(q: Quote) -> dict[str, Any]:
    b = q.body
    assert isinstance(b, EnclaveReport)
    p = "x-ms-sgx-"
    return {
        "x-ms-attestation-type": SGX_TYPE,
        p + "mrenclave": b.mr_enclave.hex(),
        p + "mrsigner": b.mr_signer.hex(),
        p + "product-id": b.isv_prod_id,
        p + "svn": b.isv_svn,
        p + "config-svn": b.config_svn,
        p + "config-id": b.config_id.hex(),
        p + "isv-family-id": b.isv_family_id.hex(),
        p + "isv-extended-product-id": b.isv_ext_prod_id.hex(),
        p + "isv-ext-product-id": b.isv_ext_prod_id.hex(),
        p + "miscselect": b.misc_select.hex(),
        p + "attributes": b.attributes.hex(),
        p + "is-debuggable": b.debug,
        p + "cpu-svn": b.cpu_svn.hex(),
        p + "report-data": b.report_data.hex(),
    }
