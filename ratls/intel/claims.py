"""Flat claims for TDX and SGX quotes, named as Azure Attestation names them where it does.

TDX: ``x-ms-attestation-type: tdxvm`` and ``x-ms-tdxvm-*``; SGX: ``sgx`` and ``x-ms-sgx-*``.
Common (both): ``tcb-status``, ``tcb-date``, ``advisory-ids``, ``collateral-stale``,
``collateral-next-update``, ``crl-checked`` (the root and PCK CA CRLs were checked),
``qe-identity-checked`` (the QE report was matched against a signed QE identity), ``pck-fmspc``.
Byte strings are lower-case hex.
"""

from __future__ import annotations

from typing import Any

from .quote import EnclaveReport, Quote, TdReport

TDX_TYPE = "tdxvm"
SGX_TYPE = "sgx"


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
    return c


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
        p + "isv-ext-product-id": b.isv_ext_prod_id.hex(),
        p + "miscselect": b.misc_select.hex(),
        p + "attributes": b.attributes.hex(),
        p + "is-debuggable": b.debug,
        p + "cpu-svn": b.cpu_svn.hex(),
        p + "report-data": b.report_data.hex(),
    }
