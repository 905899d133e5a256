"""The broker's secret store: one JSON file per named secret, the secret sealed under the master key.

On disk (``<store>/<id>.json``)::

    {"format": "ratls-keybroker-secret", "version": 1, "id": "model-key",
     "policy": {...release policy...}, "nonce": "<b64url 12 bytes>", "sealed": "<b64url>"}

``sealed`` is AES-256-GCM under the owner's master key with associated data
``"ratls-keybroker-secret-v1\\0" || id || "\\0" || SHA-256(canonical policy JSON)``: the secret never
touches the disk in the clear, a sealed secret cannot be renamed to another id, and whoever can
write the store directory cannot loosen a policy without the master key (the secret then no
longer opens, and the broker refuses to release it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ratls.errors import Reason, UsageError
from ratls.kbs import b64url, check_secret_id, unb64url
from ratls.policy import Policy

FORMAT = "ratls-keybroker-secret"
AAD_LABEL = b"ratls-keybroker-secret-v1\x00"


def _canonical(policy_doc: Any) -> bytes:
    return json.dumps(policy_doc, sort_keys=True, separators=(",", ":")).encode()


def secret_aad(secret_id: str, policy_doc: Any) -> bytes:
    return AAD_LABEL + secret_id.encode() + b"\x00" + hashlib.sha256(_canonical(policy_doc)).digest()


class SecretStore:
    """Implements :class:`ratls.kbs.SecretSource` over a directory. Reads on every ``get``, so a
    secret added by ``ratls keybroker add-secret`` is served without a restart."""

    def __init__(self, directory: str | os.PathLike[str], master_key: bytes) -> None:
        if len(master_key) != 32:
            raise UsageError(Reason.CONFIG_INVALID, "master key must be 32 bytes")
        self.dir = Path(directory)
        self._aead = AESGCM(master_key)

    def _path(self, secret_id: str) -> Path:
        return self.dir / f"{check_secret_id(secret_id)}.json"

    def put(self, secret_id: str, secret: bytes, policy: Policy, *, replace: bool = False) -> Path:
        doc_policy = {**policy.meta, **policy.rules}
        Policy.from_mapping(doc_policy)  # it round-trips
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret, secret_aad(secret_id, doc_policy))
        doc = {"format": FORMAT, "version": 1, "id": secret_id, "policy": doc_policy, "nonce": b64url(nonce), "sealed": b64url(sealed)}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(secret_id)
        if path.exists() and not replace:
            raise UsageError(Reason.CONFIG_INVALID, f"secret {secret_id!r} exists (use --replace)")
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{secret_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def get(self, secret_id: str) -> tuple[bytes, Policy]:
        path = self._path(secret_id)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise UsageError(Reason.NOT_FOUND, f"no secret {secret_id!r} in the store", step="secret") from e
        except (OSError, ValueError) as e:
            raise UsageError(Reason.CONFIG_INVALID, f"secret file {path} unreadable: {e}", step="secret") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1 or doc.get("id") != secret_id:
            raise UsageError(Reason.CONFIG_INVALID, f"{path} is not a v1 secret for {secret_id!r}", step="secret")
        policy = Policy.from_mapping(doc.get("policy"), name=f"{secret_id}-release")
        try:
            secret = self._aead.decrypt(
                unb64url(doc.get("nonce"), "nonce"), unb64url(doc.get("sealed"), "sealed"), secret_aad(secret_id, doc["policy"])
            )
        except (InvalidTag, ValueError) as e:
            raise UsageError(
                Reason.TAMPERED,
                f"secret {secret_id!r} does not open under the master key (wrong key, or the file or its policy was altered)",
                step="secret",
            ) from e
        except Exception as e:  # a ParseError from unb64url: the file is the local side's problem
            raise UsageError(Reason.CONFIG_INVALID, f"{path}: {e}", step="secret") from e
        return secret, policy

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json")) if self.dir.is_dir() else []
