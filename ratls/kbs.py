"""Key release, sans-IO: the request/challenge/attestation/response exchange of the keybroker.

The shape is the Confidential Containers KBS protocol (``docs/keybroker.md`` has the wire
details): ``auth`` hands out a single-use, short-lived nonce; ``attest`` takes the TEE's evidence
and an ephemeral public key made in the TEE, and checks that the evidence verifies and that its
report data is ``SHA-512(nonce || public-key-bytes)``; ``resource`` evaluates the named secret's
release policy on the verified claims and returns the secret as a JWE (``ECDH-ES`` + ``A256GCM``)
that only the holder of the ephemeral private key can open.

:class:`KbsCore` does no I/O: every call takes the request as data and ``now`` from the caller
and returns an :class:`Outcome` (HTTP status, JSON body, audit record). The verifier and the
secret source are injected, so tests drive the whole protocol without a socket or a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, x25519

from .errors import EvidenceError, ParseError, RatlsError, Reason, UsageError, VerificationError
from .evidence import Evidence, EvidenceType
from .policy import Policy, PolicyResult
from .trail import Trail, Verification

PROTOCOL_VERSION = "0.1.0"
NONCE_LEN = 32
DEFAULT_NONCE_TTL_S = 60.0
DEFAULT_SESSION_TTL_S = 60.0
MAX_PENDING_CHALLENGES = 10_000
REPORT_DATA_LEN = 64
JWE_ALG = "ECDH-ES"
JWE_ENC = "A256GCM"
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: JWK curve name -> (cryptography curve, coordinate length)
EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {"P-256": (ec.SECP256R1(), 32), "P-384": (ec.SECP384R1(), 48)}


# -- encodings shared by the broker and the TEE side --------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ParseError(Reason.BAD_ENCODING, f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ParseError(Reason.BAD_ENCODING, f"{what} is not base64url: {e}") from e


def check_secret_id(secret_id: str) -> str:
    if not isinstance(secret_id, str) or not SECRET_ID_RE.match(secret_id):
        raise UsageError(Reason.CONFIG_INVALID, f"secret id {secret_id!r} must match {SECRET_ID_RE.pattern}")
    return secret_id


def encode_evidence(ev: Evidence) -> dict[str, Any]:
    return {"type": ev.type.value, "data": b64url(ev.data), "endorsements": [b64url(e) for e in ev.endorsements]}


def decode_evidence(obj: Any) -> Evidence:
    if not isinstance(obj, Mapping):
        raise ParseError(Reason.BAD_FORMAT, "tee-evidence must be an object {type, data, endorsements}")
    try:
        kind = EvidenceType(obj.get("type"))
    except ValueError as e:
        raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"unknown evidence type {obj.get('type')!r}") from e
    ends = obj.get("endorsements", [])
    if not isinstance(ends, list):
        raise ParseError(Reason.BAD_FORMAT, "endorsements must be a list")
    return Evidence(kind, unb64url(obj.get("data"), "evidence data"), tuple(unb64url(e, "endorsement") for e in ends))


def public_key_bytes(jwk: Any) -> bytes:
    """The bytes the report data binds: SEC1 uncompressed point (EC) or the raw 32 bytes (X25519).

    Validates the key (a point on the curve), so a broker never wraps to garbage.
    """
    if not isinstance(jwk, Mapping):
        raise ParseError(Reason.BAD_FORMAT, "tee-pubkey must be a JWK object")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "EC" and crv in EC_CURVES:
        curve, n = EC_CURVES[crv]
        x, y = unb64url(jwk.get("x"), "jwk x"), unb64url(jwk.get("y"), "jwk y")
        if len(x) != n or len(y) != n:
            raise ParseError(Reason.BAD_FORMAT, f"{crv} coordinates must be {n} bytes")
        point = b"\x04" + x + y
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError as e:
            raise ParseError(Reason.BAD_FORMAT, f"tee-pubkey is not a point on {crv}") from e
        return point
    if kty == "OKP" and crv == "X25519":
        x = unb64url(jwk.get("x"), "jwk x")
        if len(x) != 32:
            raise ParseError(Reason.BAD_FORMAT, "X25519 key must be 32 bytes")
        x25519.X25519PublicKey.from_public_bytes(x)
        return x
    raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"tee-pubkey must be EC P-256/P-384 or OKP X25519, got kty={kty!r} crv={crv!r}")


def expected_report_data(nonce: bytes, pubkey_bytes: bytes) -> bytes:
    """``SHA-512(nonce || public-key-bytes)``: 64 bytes, the whole SNP/TDX/SGX report_data."""
    return hashlib.sha512(nonce + pubkey_bytes).digest()


def wrap_secret(secret: bytes, jwk: Mapping[str, Any], *, secret_id: str) -> str:
    """JWE compact serialization, ``ECDH-ES`` key agreement with ``A256GCM``, to the TEE's key."""
    from jwcrypto import jwe
    from jwcrypto import jwk as jwk_mod

    key = jwk_mod.JWK(**{k: jwk[k] for k in ("kty", "crv", "x", "y") if k in jwk})
    token = jwe.JWE(secret, protected=json.dumps({"alg": JWE_ALG, "enc": JWE_ENC, "kid": secret_id}))
    token.add_recipient(key)
    return token.serialize(compact=True)


def unwrap_secret(token: str, private_jwk: Any, *, secret_id: str | None = None) -> bytes:
    """The TEE side of :func:`wrap_secret`. ``private_jwk`` is a ``jwcrypto.jwk.JWK``."""
    from jwcrypto import jwe
    from jwcrypto.common import JWException

    obj = jwe.JWE()
    try:
        obj.deserialize(token, key=private_jwk)
    except (JWException, ValueError) as e:
        raise VerificationError(Reason.BAD_SIGNATURE, f"wrapped secret does not open with the ephemeral key: {e}", step="unwrap") from e
    hdr = obj.jose_header
    if hdr.get("alg") != JWE_ALG or hdr.get("enc") != JWE_ENC:
        raise VerificationError(Reason.BAD_FORMAT, f"unexpected JWE alg/enc {hdr.get('alg')}/{hdr.get('enc')}", step="unwrap")
    if secret_id is not None and hdr.get("kid") != secret_id:
        raise VerificationError(Reason.BAD_FORMAT, f"JWE is for secret {hdr.get('kid')!r}, asked for {secret_id!r}", step="unwrap")
    return obj.payload


# -- the broker's state machine -----------------------------------------------------------------


class SecretSource(Protocol):
    """Where the core gets a secret and its policy (the encrypted store, or a dict in tests)."""

    def get(self, secret_id: str) -> tuple[bytes, Policy]:
        """Raises ``UsageError(Reason.NOT_FOUND)`` for an unknown id."""
        ...


VerifyFn = Callable[[Evidence, datetime], Verification]


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    tee: str
    expires: float


@dataclass
class Session:
    id: str
    tee: str
    jwk: dict[str, Any]
    verification: Verification
    expires: float
    released: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What the HTTP edge sends back, and the audit line it writes (one per request)."""

    status: int
    body: dict[str, Any]
    audit: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status < 400


def _refusal(status: int, err: RatlsError, audit: dict[str, Any], **extra: Any) -> Outcome:
    body = {"error": err.reason.value, "step": err.step, "detail": err.detail, **extra}
    audit.update(decision="deny", status=status, reason=err.reason.value, step=err.step, detail=err.detail)
    for k in ("failed_rules", "rules"):
        if k in extra:
            audit[k] = extra[k]
    return Outcome(status, body, audit)


class KbsCore:
    """In-memory challenge and session state of one broker process.

    Challenges are single-use: the first ``attest`` naming a nonce consumes it whatever the
    outcome; a nonce used before is told apart from one never issued (``nonce-reused`` vs
    ``nonce-mismatch``) for as long as it would have been valid.
    """

    def __init__(
        self,
        secrets: SecretSource,
        verify: VerifyFn,
        *,
        nonce_ttl_s: float = DEFAULT_NONCE_TTL_S,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.secrets = secrets
        self.verify = verify
        self.nonce_ttl_s = nonce_ttl_s
        self.session_ttl_s = session_ttl_s
        self._random = random
        self._challenges: OrderedDict[bytes, Challenge] = OrderedDict()
        self._used: OrderedDict[bytes, float] = OrderedDict()
        self._sessions: dict[str, Session] = {}

    # housekeeping ----------------------------------------------------------------------------
    def _expire(self, t: float) -> None:
        # an expired challenge is kept one more ttl so a late attest hears "expired", not "unknown"
        while self._challenges and next(iter(self._challenges.values())).expires < t - self.nonce_ttl_s:
            self._challenges.popitem(last=False)
        while self._used and next(iter(self._used.values())) < t:
            self._used.popitem(last=False)
        for sid in [s for s, v in self._sessions.items() if v.expires < t]:
            del self._sessions[sid]

    @property
    def pending(self) -> int:
        return len(self._challenges)

    # POST /kbs/v0/auth -----------------------------------------------------------------------
    def auth(self, body: Any, now: datetime) -> Outcome:
        t = now.timestamp()
        self._expire(t)
        audit: dict[str, Any] = {"event": "kbs.auth"}
        try:
            if not isinstance(body, Mapping):
                raise ParseError(Reason.BAD_FORMAT, "request body must be a JSON object", step="request")
            tee = body.get("tee")
            try:
                tee = EvidenceType(tee).value
            except ValueError as e:
                raise ParseError(
                    Reason.UNSUPPORTED_EVIDENCE, f"tee must be one of {[x.value for x in EvidenceType]}, got {tee!r}", step="request"
                ) from e
        except RatlsError as e:
            return _refusal(400, e, audit)
        nonce = self._random(NONCE_LEN)
        while len(self._challenges) >= MAX_PENDING_CHALLENGES:
            self._challenges.popitem(last=False)
        ch = Challenge(nonce, tee, t + self.nonce_ttl_s)
        self._challenges[nonce] = ch
        audit.update(decision="challenge", status=200, tee=tee, nonce_sha256=hashlib.sha256(nonce).hexdigest()[:16])
        return Outcome(200, {"nonce": b64url(nonce), "extra-params": {"expires-in": self.nonce_ttl_s}}, audit)

    # POST /kbs/v0/attest ---------------------------------------------------------------------
    def attest(self, body: Any, now: datetime) -> Outcome:
        t = now.timestamp()
        self._expire(t)
        audit: dict[str, Any] = {"event": "kbs.attest"}
        trail = Trail()
        try:
            with trail.step("request"):
                if not isinstance(body, Mapping):
                    raise ParseError(Reason.BAD_FORMAT, "request body must be a JSON object")
                nonce = unb64url(body.get("nonce"), "nonce")
            with trail.step("nonce") as s:
                ch = self._consume(nonce, t)
                s.detail = f"issued for {ch.tee}, {ch.expires - t:.1f}s left"
            audit["nonce_sha256"] = hashlib.sha256(nonce).hexdigest()[:16]
            with trail.step("tee-pubkey") as s:
                jwk = body.get("tee-pubkey")
                pk = public_key_bytes(jwk)
                s.detail = f"{jwk.get('kty')} {jwk.get('crv')}"
            with trail.step("evidence-decode") as s:
                ev = decode_evidence(body.get("tee-evidence"))
                if ev.type.value != ch.tee:
                    raise ParseError(Reason.UNSUPPORTED_EVIDENCE, f"challenge was issued for {ch.tee}, evidence is {ev.type.value}")
                s.detail = ev.type.value
            audit["evidence_type"] = ev.type.value
        except EvidenceError as e:
            audit["steps"] = [x.to_dict() for x in trail.steps]
            return _refusal(401 if e.reason in (Reason.NONCE_EXPIRED, Reason.NONCE_REUSED, Reason.NONCE_MISMATCH) else 400, e, audit)

        ver = self.verify(ev, now)
        steps = [x.to_dict() for x in trail.steps] + [x.to_dict() for x in ver.steps]
        audit.update(steps=steps, claims=ver.claims)
        if not ver.verified:
            err = ver.error or VerificationError(Reason.INTERNAL, "verifier returned no error but did not verify", step="verify")
            return _refusal(401, err, audit, steps=steps)
        want = expected_report_data(nonce, pk)
        if not hmac.compare_digest(ver.report_data, want):
            err = VerificationError(
                Reason.REPORT_DATA_MISMATCH,
                f"report data {ver.report_data[:8].hex()}… != SHA-512(nonce || tee-pubkey) {want[:8].hex()}…: evidence bound to another key or nonce",
                step="binding",
            )
            steps.append({"name": "binding", "ok": False, "detail": err.detail, "ms": 0.0, "reason": err.reason.value})
            audit["steps"] = steps
            return _refusal(401, err, audit, steps=steps)
        steps.append({"name": "binding", "ok": True, "detail": "report data = SHA-512(nonce || tee-pubkey)", "ms": 0.0})
        sid = self._random(16).hex()
        self._sessions[sid] = Session(sid, ch.tee, dict(jwk), ver, t + self.session_ttl_s)
        audit.update(decision="attested", status=200, session=sid[:8])
        return Outcome(200, {"session": sid, "expires-in": self.session_ttl_s, "claims": ver.claims}, audit)

    def _consume(self, nonce: bytes, t: float) -> Challenge:
        ch = self._challenges.pop(nonce, None)
        if ch is None:
            if nonce in self._used:
                raise VerificationError(Reason.NONCE_REUSED, "nonce already used: a replayed attestation")
            raise VerificationError(Reason.NONCE_MISMATCH, "nonce was never issued by this broker (or long expired)")
        self._used[nonce] = ch.expires
        if t > ch.expires:
            raise VerificationError(Reason.NONCE_EXPIRED, f"nonce expired {t - ch.expires:.1f}s ago (ttl {self.nonce_ttl_s:.0f}s)")
        return ch

    # GET /kbs/v0/resource/<id> ---------------------------------------------------------------
    def resource(self, session_id: str | None, secret_id: str, now: datetime) -> Outcome:
        t = now.timestamp()
        self._expire(t)
        audit: dict[str, Any] = {"event": "kbs.resource", "secret": secret_id}
        sess = self._sessions.get(session_id or "")
        if sess is None:
            return _refusal(
                401, VerificationError(Reason.NONCE_MISMATCH, "no attested session (attest first, or it expired)", step="session"), audit
            )
        audit.update(session=sess.id[:8], evidence_type=sess.verification.evidence_type, claims=sess.verification.claims)
        try:
            check_secret_id(secret_id)
            secret, policy = self.secrets.get(secret_id)
        except UsageError as e:
            e.step = e.step or "secret"
            return _refusal(404 if e.reason in (Reason.NOT_FOUND, Reason.CONFIG_INVALID) else 500, e, audit)
        result: PolicyResult = policy.evaluate(sess.verification.claims)
        rules = result.to_list()
        audit.update(policy=policy.name, policy_digest=policy.digest[:16], rules=rules)
        if not result.ok:
            failed = [r.to_dict() for r in result.failed]
            names = ", ".join(r.claim for r in result.failed)
            err = VerificationError(Reason.POLICY_FAILED, f"release policy {policy.name!r} refused: {names}", step="policy")
            return _refusal(403, err, audit, failed_rules=failed, rules=rules)
        token = wrap_secret(secret, sess.jwk, secret_id=secret_id)
        sess.released.append(secret_id)
        audit.update(decision="release", status=200, wrapped_to=f"{sess.jwk.get('kty')} {sess.jwk.get('crv')}")
        return Outcome(200, {"secret-id": secret_id, "jwe": token, "rules": rules}, audit)
