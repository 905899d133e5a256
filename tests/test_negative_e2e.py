"""Refusals end to end: each case asserts the client's answer names why, and that the backend behind
the (real or fake) sidecar received zero bytes.

The backend is :class:`tests.pair.ByteCountingBackend`, a raw asyncio TCP server that counts every
byte it is sent. Fake sidecars are the real :class:`sidecar.server.Sidecar` with ``prepare()``
replaced, so the TLS stack, ALPN routing and relay are the production ones; only the certificate
differs.
"""

from __future__ import annotations

import json
import socket
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from proxy.obs import utcnow
from ratls.certificate import issue_certificate, new_key
from sidecar.server import Sidecar
from tests.pair import ByteCountingBackend, pair, sim_policy

pytestmark = pytest.mark.slow
MEASUREMENT_CLAIM = "x-ms-sevsnpvm-launchmeasurement"


@pytest.fixture
def backend():
    b = ByteCountingBackend()
    yield b
    b.stop()


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class PlainCertSidecar(Sidecar):
    """An ordinary TLS server: a self-signed certificate with no evidence at all."""

    def prepare(self, now=None):
        now = now or utcnow()
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inference.test")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
        return _pem(key), cert


class OtherKeySidecar(Sidecar):
    """Genuine evidence, lifted from a certificate for key A into one for key B (which it serves)."""

    def prepare(self, now=None):
        now = now or utcnow()
        cert_a = issue_certificate(new_key(), self.cfg.attest, now=now)
        key_b = new_key()
        builder = (x509.CertificateBuilder().subject_name(cert_a.subject).issuer_name(cert_a.issuer).public_key(key_b.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(cert_a.not_valid_before_utc)
                   .not_valid_after(cert_a.not_valid_after_utc))
        for ext in cert_a.extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        return _pem(key_b), builder.sign(key_b, hashes.SHA256())


def curl_x(p, path="/v2/models", *extra: str) -> tuple[int, dict]:
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "-x", p.proxy_url, *extra,
                        f"http://{p.http_service}{path}"], capture_output=True, timeout=30)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), json.loads(body) if body.strip() else {}


def raw_connect(proxy_port: int, target: str) -> tuple[int, dict, bytes]:
    """CONNECT by hand: status, JSON body, and whatever followed (must be nothing: no tunnel)."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=20) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return status, json.loads(body[:length]), body[length:]


def test_measurement_not_allowed_names_the_claim_expected_and_actual(tmp_path, backend):
    actual, expected = b"\x11" * 48, b"\x22" * 48
    with pair(tmp_path, http_backend=backend.addr, grpc_backend=backend.addr, measurement=actual, policy=sim_policy(expected),
              maps=["inference.test:8000"]) as p:
        code, body = curl_x(p, "/v2/models", "--data-binary", "secret inference input")
        assert code == 502
        assert body["service"] == p.http_service and body["step"] == "policy" and body["reason"] == "policy-failed"
        assert {"claim": MEASUREMENT_CLAIM, "expected": expected.hex(), "actual": actual.hex()} in body["failed"]
        assert MEASUREMENT_CLAIM in body["error"]

        status, cbody, after = raw_connect(p.proxy_port, p.grpc_service)
        assert status == 502 and after == b"", "a refused CONNECT must not open a tunnel"
        assert cbody["step"] == "policy" and cbody["failed"][0]["claim"] == MEASUREMENT_CLAIM

        r = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", f"http://127.0.0.1:{p.map_ports['inference.test:8000']}/x"],
                           capture_output=True, timeout=30)
        assert r.stdout.endswith(b"\n502") and MEASUREMENT_CLAIM.encode() in r.stdout

        hs = p.proxy_events("handshake")
        assert hs and all(h["decision"] == "refuse" and h["failed_step"] == "policy" for h in hs)
        rule = next(r for r in hs[0]["policy"] if r["claim"] == MEASUREMENT_CLAIM)
        assert rule == {"claim": MEASUREMENT_CLAIM, "expected": expected.hex(), "actual": actual.hex(), "ok": False}
    assert backend.bytes == 0


def test_ordinary_certificate_without_evidence_is_refused(tmp_path, backend):
    with pair(tmp_path, http_backend=backend.addr, grpc_backend=backend.addr, sidecar_factory=PlainCertSidecar) as p:
        code, body = curl_x(p, "/v2/models", "--data-binary", "secret")
        assert code == 502
        assert body["step"] == "evidence-extension" and body["reason"] == "no-evidence"
        status, cbody, after = raw_connect(p.proxy_port, p.grpc_service)
        assert status == 502 and after == b"" and cbody["reason"] == "no-evidence"
        [h, *_] = p.proxy_events("handshake")
        assert h["decision"] == "refuse" and h["failed_step"] == "evidence-extension"
    assert backend.bytes == 0


def test_evidence_bound_to_another_key_is_refused(tmp_path, backend):
    with pair(tmp_path, http_backend=backend.addr, grpc_backend=backend.addr, sidecar_factory=OtherKeySidecar) as p:
        code, body = curl_x(p, "/v2/models", "--data-binary", "secret")
        assert code == 502
        assert body["step"] == "key-binding" and body["reason"] == "key-binding"
        status, cbody, after = raw_connect(p.proxy_port, p.grpc_service)
        assert status == 502 and after == b"" and cbody["step"] == "key-binding"
    assert backend.bytes == 0


def test_no_policy_configured_refuses_without_connecting(tmp_path, backend):
    with pair(tmp_path, http_backend=backend.addr, grpc_backend=backend.addr, policy=None) as p:
        code, body = curl_x(p, "/v2/models", "--data-binary", "secret")
        assert code == 502 and body["reason"] == "no-policy" and body["step"] == "policy"
        status, cbody, after = raw_connect(p.proxy_port, p.grpc_service)
        assert status == 502 and after == b"" and cbody["reason"] == "no-policy"
        assert p.sidecar_events("connection") == [], "no policy: the sidecar is not even contacted"
    assert backend.bytes == 0 and backend.connections == 0


def test_unknown_route_is_refused(tmp_path, backend):
    with pair(tmp_path, http_backend=backend.addr, grpc_backend=backend.addr) as p:
        r = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", "-x", p.proxy_url, "--data-binary", "secret",
                            "http://not-routed.test:8000/v2/models"], capture_output=True, timeout=30)
        body, _, code = r.stdout.rpartition(b"\n")
        assert code == b"403"
        doc = json.loads(body)
        assert doc["service"] == "not-routed.test:8000" and doc["step"] == "route" and doc["reason"] == "unknown-route"
        status, cbody, after = raw_connect(p.proxy_port, "not-routed.test:8001")
        assert status == 403 and after == b"" and cbody["service"] == "not-routed.test:8001"
        assert p.proxy_events("handshake") == [] and p.sidecar_events("connection") == []
    assert backend.bytes == 0 and backend.connections == 0
