"""A Gramine ``secret_prov`` compatible endpoint, so Gramine/SGX deployments use the same broker.

Gramine's secret provisioning (``tools/sgx/ra-tls/secret_prov_*.c``): the enclave is the TLS
*client* and presents a self-signed RA-TLS certificate; the server verifies it, then:

    enclave -> server   "SECRET_PROVISION_RA_TLS_REQUEST_V1\\0"                 (35 bytes)
    server  -> enclave  "SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0" || uint32_be(len) || secret

and closes. Python's ``ssl`` cannot accept an unchained client certificate, so the handshake runs
in pyOpenSSL with a verify callback that admits any certificate; the real decision is made right
after the handshake, before a byte of the secret is written, by
:func:`ratls.certificate.verify_certificate` (evidence to a trusted root, key binding, Gramine's
legacy extension included) and the secret's own release policy from the store. One JSON audit
line per connection. Freshness is RA-TLS's: the certificate's evidence age, bounded by the
policy (there is no nonce in this protocol).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ratls.evidence import VerifyOptions
from ratls.kbs import SecretSource

from .server import AuditLog, utcnow

REQUEST = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\x00"
RESPONSE = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"
IO_TIMEOUT_S = 15.0


def response_for(secret: bytes) -> bytes:
    return RESPONSE + len(secret).to_bytes(4, "big") + secret


class SecretProvServer:
    """Threaded TLS listener serving one named secret of the store to attested Gramine enclaves."""

    def __init__(
        self,
        secrets: SecretSource,
        secret_id: str,
        cert_file: str,
        key_file: str,
        audit: AuditLog,
        *,
        sim_root: bytes | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        from OpenSSL import SSL

        self.secrets, self.secret_id, self.audit, self.sim_root, self.clock = secrets, secret_id, audit, sim_root, clock
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(cert_file)
        ctx.use_privatekey_file(key_file)
        # Admit any client certificate at the TLS layer: RA-TLS certificates are self-signed, and
        # the attestation decision is made on the certificate right after the handshake.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_a: True)
        self._ctx = ctx
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        s = socket.create_server((host, port), reuse_port=False)
        self._sock = s
        self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="secret-prov", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while self._sock is not None:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, raw: socket.socket, peer: Any) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding
        from OpenSSL import SSL

        from ratls.certificate import verify_certificate

        t0 = time.perf_counter()
        now = self.clock()
        rec: dict[str, Any] = {
            "ts": now.isoformat(),
            "request_id": uuid.uuid4().hex[:16],
            "peer": peer[0],
            "event": "secret-prov",
            "secret": self.secret_id,
        }
        # pyOpenSSL needs a blocking socket (a Python-level timeout makes it non-blocking and
        # surfaces WantReadError): bound each read/write in the kernel instead.
        raw.setblocking(True)
        tv = struct.pack("ll", int(IO_TIMEOUT_S), 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        conn = SSL.Connection(self._ctx, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            rec["tls_version"] = conn.get_protocol_version_name()
            cert = conn.get_peer_certificate(as_cryptography=True)
            if cert is None:
                raise _Refused("handshake", "no client certificate")
            der = cert.public_bytes(Encoding.DER)
            try:
                secret, policy = self.secrets.get(self.secret_id)
            except Exception as e:
                raise _Refused("secret", str(e)) from e
            verdict = verify_certificate(der, VerifyOptions(now=now, sim_root=self.sim_root), policy)
            rec.update(verdict.to_log())
            rec["policy_name"] = policy.name
            if not verdict.ok:
                failed = [r.to_dict() for r in verdict.policy.failed] if verdict.policy else []
                rec["failed_rules"] = failed
                raise _Refused(verdict.failed_step or "verify", verdict.reason or "refused")
            got = _recv_exact(conn, len(REQUEST))
            if got != REQUEST:
                raise _Refused("request", f"expected {REQUEST!r}, got {got[:40]!r}")
            conn.sendall(response_for(secret))
            rec.update(decision="release", status="sent")
            with contextlib.suppress(SSL.Error, OSError):
                conn.shutdown()
        except _Refused as e:
            rec.update(decision="deny", step=e.step, detail=e.detail)
        except (SSL.Error, OSError) as e:
            rec.update(decision="deny", step=rec.get("step", "tls"), detail=f"{type(e).__name__}: {e}")
        finally:
            rec["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
            self.audit.write(rec)
            with contextlib.suppress(OSError):
                raw.close()


class _Refused(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step, self.detail = step, detail


def _recv_exact(conn: Any, n: int) -> bytes:
    from OpenSSL import SSL

    buf = b""
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except SSL.ZeroReturnError:
            break
        if not chunk:
            break
        buf += chunk
    return buf
