"""Wire constants for evidence inside X.509 (see docs/wire-format.md).

The carrier is the TCG DICE tagged-evidence extension holding ``tag(T)([evidence, claims])``:
``evidence`` is the raw report/quote (bstr), ``claims`` the *encoded* CBOR claims map (bstr) so
that its hash is taken over exact bytes, never over a re-encoding. The TEE's report_data is
SHA-512 of those claim bytes (64 bytes: fills SNP, TDX and SGX report data alike).
"""

from __future__ import annotations

from cryptography import x509

from .evidence import EvidenceType

#: tcg-dice-conceptual-message-wrapper / tagged evidence
EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
#: endorsements (VCEK/VLEK and chain, TCB info, QE identity, CRLs): CBOR array of bstr
ENDORSEMENTS_OID = x509.ObjectIdentifier("2.23.133.5.4.2")
#: Gramine's legacy RA-TLS extension: raw SGX quote, report_data[0:32] = SHA-256(DER SPKI)
GRAMINE_LEGACY_OID = x509.ObjectIdentifier("1.2.840.113741.1337.6")

#: CBOR tag per evidence type. 60000 is the Intel TEE quote tag of the interoperable RA-TLS work
#: (SGX and TDX quotes, told apart by the quote header's tee_type); the SNP and sim tags are ours,
#: from the first-come-first-served range, until a registered tag exists.
TAG_INTEL_QUOTE = 60000
TAG_SNP_REPORT = 60010
TAG_SIM_REPORT = 60011

TAG_FOR_TYPE: dict[EvidenceType, int] = {
    EvidenceType.SGX: TAG_INTEL_QUOTE,
    EvidenceType.TDX: TAG_INTEL_QUOTE,
    EvidenceType.SNP: TAG_SNP_REPORT,
    EvidenceType.SIM: TAG_SIM_REPORT,
}

#: claim keys in the claims map
CLAIM_PUBKEY_HASH = "pubkey-hash"
CLAIM_NONCE = "nonce"
#: named-information hash algorithm ids (IANA): sha-256 = 1, sha-384 = 7, sha-512 = 8
HASH_ALG_SHA256 = 1
HASH_ALG_SHA384 = 7
HASH_ALG_SHA512 = 8

#: SGX/TDX quote header: tee_type at bytes [4, 8), little-endian
QUOTE_TEE_TYPE_OFFSET = 4
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
