"""The record of a verification: numbered, named steps with result and timing.

A verifier runs its checks inside ``trail.step(name)``; an :class:`~ratls.errors.EvidenceError`
raised inside is recorded as a failed step (its ``step`` attribute set to the step name) and
re-raised. Reviewers read the same step names in ``ratls inspect`` and in the handshake log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import EvidenceError, RatlsError


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    ms: float = 0.0
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "ok": self.ok, "detail": self.detail, "ms": round(self.ms, 3)}
        if self.reason:
            d["reason"] = self.reason
        return d


class StepDetail:
    """Mutable detail a step body may fill in (``with trail.step(...) as s: s.detail = ...``)."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


@dataclass
class Trail:
    steps: list[Step] = field(default_factory=list)

    @contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[StepDetail]:
        sd = StepDetail(detail)
        t0 = time.perf_counter()
        try:
            yield sd
        except RatlsError as e:
            if e.step is None:
                e.step = name
            self.steps.append(Step(name, False, e.detail, (time.perf_counter() - t0) * 1e3, e.reason.value))
            raise
        self.steps.append(Step(name, True, sd.detail, (time.perf_counter() - t0) * 1e3))

    def add(self, name: str, ok: bool, detail: str = "", reason: str | None = None) -> None:
        self.steps.append(Step(name, ok, detail, 0.0, reason))

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def failed_step(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)


@dataclass
class Verification:
    """What a verifier returns: never raises for bad evidence, the error is kept here instead."""

    evidence_type: str
    steps: list[Step]
    claims: dict[str, Any]
    error: EvidenceError | None = None
    #: raw report_data the evidence signs (binding checks read it)
    report_data: bytes = b""

    @property
    def verified(self) -> bool:
        return self.error is None and bool(self.steps) and all(s.ok for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "evidence_type": self.evidence_type,
            "steps": [s.to_dict() for s in self.steps],
            "claims": self.claims,
            "error": self.error.to_dict() if self.error else None,
        }
