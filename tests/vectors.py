"""The one loader for real-hardware vectors in ../shared/evidence (never copied into the repo).

Each vector's reference time comes from its SOURCE.md, recorded here once per vector so tests read
``REF_TIMES[name]`` instead of inventing times.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVIDENCE = REPO.parent / "shared" / "evidence"


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


#: reference times from each SOURCE.md ("Reference time / validity")
REF_TIMES: dict[str, datetime] = {
    "snp/gsg-milan-v2-noidblock": _t("2022-09-24T01:00:00Z"),
    "snp/trustee-milan-v2-vcek": _t("2024-01-01T00:00:00Z"),
    "snp/trustee-milan-v3-vlek-aws": _t("2025-06-01T00:00:00Z"),
    "snp/virtee-milan-v2": _t("2024-01-01T00:00:00Z"),
    "snp/virtee-turin-vcek-chain": _t("2025-01-01T00:00:00Z"),
    "azure/trustee-az-snp-vtpm-genoa": _t("2025-06-01T00:00:00Z"),
    "azure/trustee-az-snp-vtpm-milan": _t("2024-01-01T00:00:00Z"),
    "azure/trustee-az-tdx-vtpm": _t("2024-01-01T00:00:00Z"),
    "tdx/gtg-emr-v5-tdx15": _t("2026-02-03T01:00:00Z"),
    "tdx/gtg-gcp-spr-v4-ccel": _t("2025-01-01T00:00:00Z"),
    "tdx/gtg-spr-v4-collateral": _t("2023-07-01T01:00:00Z"),
    "tdx/trustee-gnr-v4-tcbinfo": _t("2025-11-01T00:00:00Z"),
    "tdx/trustee-spr-v4-claims": _t("2024-01-01T00:00:00Z"),
    "sgx/mobilecoin-cfl-v3-collateral": _t("2023-07-12T20:48:25Z"),
    "sgx/trustee-occlum-icx-v3": _t("2024-01-01T00:00:00Z"),
    "azure/teaclave-maa-sgx-jwt": _t("2023-09-26T15:00:00Z"),
}


def vector_dir(name: str) -> Path:
    d = EVIDENCE / name
    if not d.is_dir():
        pytest.skip(f"shared evidence {name} not present at {d}")
    return d


def read(name: str, filename: str) -> bytes:
    return (vector_dir(name) / filename).read_bytes()


def ref_time(name: str) -> datetime:
    return REF_TIMES[name]
