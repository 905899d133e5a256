"""TCB statuses (an enum with severity and merge) and TCB-level matching, as Intel's QVL does it.

Statuses follow dcap-qvl's ``TcbStatus``: each has a severity, and :meth:`TcbStatus.merge` combines
the platform, TDX module and QE verdicts (OutOfDate with ConfigurationNeeded gives
OutOfDateConfigurationNeeded). ``Unknown`` means no TCB info was available: verified signatures,
but nothing to rank the TCB against; a policy refuses it unless it names ``tcb-status``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TcbStatus(enum.StrEnum):
    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    #: no TCB info (or QE identity) to match against
    UNKNOWN = "Unknown"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @classmethod
    def parse(cls, text: str) -> TcbStatus:
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN

    def merge(self, other: TcbStatus) -> TcbStatus:
        """The combined verdict: the worse of the two, with OutOfDate+Configuration combined."""
        pair = {self, other}
        if TcbStatus.OUT_OF_DATE in pair and pair & {TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED}:
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
        return max(self, other, key=lambda s: s.severity)


_SEVERITY = {
    TcbStatus.UP_TO_DATE: 0,
    TcbStatus.SW_HARDENING_NEEDED: 1,
    TcbStatus.CONFIGURATION_NEEDED: 2,
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED: 3,
    TcbStatus.OUT_OF_DATE: 4,
    TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED: 5,
    TcbStatus.REVOKED: 6,
    TcbStatus.UNKNOWN: 7,
}


@dataclass(frozen=True)
class TcbVerdict:
    status: TcbStatus
    advisory_ids: tuple[str, ...] = ()
    tcb_date: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def merge(self, other: TcbVerdict) -> TcbVerdict:
        adv = tuple(sorted(set(self.advisory_ids) | set(other.advisory_ids)))
        dates = [d for d in (self.tcb_date, other.tcb_date) if d]
        return TcbVerdict(self.status.merge(other.status), adv, min(dates) if dates else None, self.notes + other.notes)


def _components(tcb: dict, key: str, legacy_prefix: str) -> list[int]:
    """SVNs of a TCB level: v3 lists ``{"svn": n}`` objects, v2 uses ``sgxtcbcomp01svn`` keys."""
    if key in tcb:
        return [int(c["svn"]) for c in tcb[key]]
    return [int(tcb.get(f"{legacy_prefix}{i:02d}svn", 0)) for i in range(1, 17)]


def match_platform_level(levels: list[dict], cpu_svn: bytes, pce_svn: int, tee_tcb_svn: bytes | None) -> dict | None:
    """First TCB level (levels are sorted best first) the platform meets or exceeds.

    SGX components compare against the PCK certificate's CPUSVN, PCESVN against its PCESVN, and for
    TDX the TDX components against TEE_TCB_SVN (bytes 0 and 1 skipped for a TDX module with a
    version, since the module identity ranks those).
    """
    for level in levels:
        tcb = level["tcb"]
        sgx = _components(tcb, "sgxtcbcomponents", "sgxtcbcomp")
        if any(cpu_svn[i] < sgx[i] for i in range(16)):
            continue
        if pce_svn < int(tcb["pcesvn"]):
            continue
        if tee_tcb_svn is not None:
            tdx = [int(c["svn"]) for c in tcb.get("tdxtcbcomponents", [])]
            if len(tdx) != 16:
                continue
            start = 2 if tee_tcb_svn[1] > 0 else 0
            if any(tee_tcb_svn[i] < tdx[i] for i in range(start, 16)):
                continue
        return level
    return None


def match_isvsvn_level(levels: list[dict], isv_svn: int) -> dict | None:
    """First level whose ``tcb.isvsvn`` the given SVN meets (QE identity, TDX module identity)."""
    for level in levels:
        if isv_svn >= int(level["tcb"]["isvsvn"]):
            return level
    return None


def verdict_of(level: dict) -> TcbVerdict:
    return TcbVerdict(TcbStatus.parse(level["tcbStatus"]), tuple(level.get("advisoryIDs", ())), level.get("tcbDate"))
