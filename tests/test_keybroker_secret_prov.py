"""Gramine secret_prov compatible endpoint: an RA-TLS client certificate in, the secret out.

The enclave side is played by Python's ssl presenting a real RA-TLS certificate (simulated TEE
evidence in the TCG tagged-evidence extension, bound to the certificate key), speaking Gramine's
wire format byte for byte.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keybroker.secret_prov import REQUEST, RESPONSE, SecretProvServer
from keybroker.server import AuditLog
from keybroker.store import SecretStore
from ratls.certificate import issue_certificate, new_key
from ratls.io.simdir import load_or_create, load_root
from ratls.policy import Policy
from ratls.sim import DEFAULT_MEASUREMENT

SECRET = b"protected-files-key-0123456789ab"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    auth = load_or_create(d / "sim")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(7)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (d / "srv.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "srv.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    store = SecretStore(d / "store", b"\x01" * 32)
    store.put(
        "pf-key",
        SECRET,
        Policy.from_mapping({"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": DEFAULT_MEASUREMENT.hex()}),
    )
    audit = io.StringIO()
    srv = SecretProvServer(store, "pf-key", str(d / "srv.pem"), str(d / "srv.key"), AuditLog(audit), sim_root=load_root(d / "sim"))
    srv.start()
    yield d, auth, srv, audit
    srv.stop()


def _enclave(d: Path, auth, port: int, **report_kw) -> bytes:
    """What Gramine's secret_provision_start() does, with a simulated-TEE RA-TLS certificate."""
    key = new_key("P-256")
    cert = issue_certificate(key, lambda rd: auth.report(rd, **report_kw), now=datetime.now(UTC))
    (d / "cli.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "cli.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(cafile=str(d / "srv.pem"))
    ctx.load_cert_chain(str(d / "cli.pem"), str(d / "cli.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(REQUEST)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
        return out


def _last(audit: io.StringIO) -> dict:
    return json.loads(audit.getvalue().splitlines()[-1])


def test_attested_enclave_gets_the_secret_in_gramine_format(env):
    d, auth, srv, audit = env
    out = _enclave(d, auth, srv.port)
    assert out[: len(RESPONSE)] == RESPONSE
    size = int.from_bytes(out[len(RESPONSE) : len(RESPONSE) + 4], "big")
    assert size == len(SECRET) and out[len(RESPONSE) + 4 :] == SECRET
    rec = _last(audit)
    assert rec["decision"] == "release" and rec["evidence_type"] == "sim"
    assert {"key-binding", "report-data-binding"} <= {s["name"] for s in rec["steps"]}
    assert SECRET.decode() not in audit.getvalue()


def test_wrong_measurement_gets_nothing(env):
    d, auth, srv, audit = env
    out = _enclave(d, auth, srv.port, measurement=b"\x33" * 48)
    assert out == b""
    rec = _last(audit)
    assert rec["decision"] == "deny" and rec["reason"] == "policy-failed"
    assert rec["failed_rules"][0]["claim"] == "x-ms-sevsnpvm-launchmeasurement"


def test_plain_certificate_gets_nothing(env):
    """A client certificate without evidence (an ordinary TLS client) is refused."""
    d, _auth, srv, audit = env
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-an-enclave")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(9)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (d / "plain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "plain.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(cafile=str(d / "srv.pem"))
    ctx.load_cert_chain(str(d / "plain.pem"), str(d / "plain.key"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(REQUEST)
        try:
            data = s.recv(100)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
    assert data == b""
    rec = _last(audit)
    assert rec["decision"] == "deny" and rec["reason"] == "no-evidence"


@pytest.mark.slow
def test_cli_serves_secret_prov_beside_the_kbs_api(env):
    """`ratls keybroker --secret-prov-listen` as a user runs it: both endpoints from one store."""
    import subprocess
    import sys

    d, auth, _srv, _audit = env
    (d / "master.key").write_bytes(b"\x01" * 32)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratls.cli", "keybroker", "--listen", "127.0.0.1:0", "--store", str(d / "store"), "--master-key", str(d / "master.key"),
         "--tls-cert", str(d / "srv.pem"), "--tls-key", str(d / "srv.key"), "--sim-dir", str(d / "sim"), "--log", str(d / "audit.jsonl"),
         "--secret-prov-listen", "127.0.0.1:0", "--secret-prov-id", "pf-key"],
        cwd=repo, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = json.loads(proc.stderr.readline())
        assert info["url"].startswith("https://")
        out = _enclave(d, auth, int(info["secret_prov"].rsplit(":", 1)[1]))
        assert out == RESPONSE + len(SECRET).to_bytes(4, "big") + SECRET
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
    lines = [json.loads(x) for x in (d / "audit.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "secret-prov" and lines[-1]["decision"] == "release"
