"""Intel TDX and SGX evidence: DCAP quotes, collateral, verification, claims, Gramine interop.

Layers (parse, verify, then the policy validates claims):

* :mod:`.quote` -- ``parse_quote`` (SGX v3, TDX v4/v5), ``quote_report_data``, ``encode_quote``
* :mod:`.pck` -- the PCK certificate's SGX extension (FMSPC, CPUSVN, PCESVN)
* :mod:`.collateral` -- PCS bodies, CRLs, PEM chains recognised by content; getter keys
* :mod:`.tcb` -- ``TcbStatus`` (severity, merge) and TCB-level matching
* :mod:`.verify` -- ``verify_tdx_evidence`` / ``verify_sgx_evidence`` (registered in
  ``ratls.evidence.VERIFIERS``), dcap-qvl as the engine, named steps
* :mod:`.claims` -- Azure's TDX EAT profile claims (``tdx_*``) with their ``x-ms-tdxvm-*`` aliases, ``x-ms-sgx-*``
* :mod:`.gramine` -- Gramine's legacy RA-TLS binding and rules as a policy
* :mod:`.azure` -- Azure CVM HCL report (runtime data bound to the TD quote or the SNP report)
* :mod:`.roots` -- the pinned Intel SGX Root CA key and TCB Signing certificates
"""
