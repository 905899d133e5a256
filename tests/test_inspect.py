"""`ratls inspect`: exit codes, JSON shape and the reviewer's text, on real and simulated evidence."""

import json
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from ratls.certificate import issue_certificate, new_key
from ratls.cli import main
from ratls.io import simdir
from tests import vectors

GSG = "snp/gsg-milan-v2-noidblock"


def run(capsys, *argv):
    rc = main(["inspect", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def gsg_args():
    d = vectors.vector_dir(GSG)
    return [str(d / "attestation.bin"), "--collateral", str(d / "vcek.der"), "--at", "2022-09-24T01:00:00Z"]


def test_real_snp_report_verifies_json(capsys):
    rc, out, _ = run(capsys, *gsg_args(), "--json")
    doc = json.loads(out)
    assert rc == 0
    assert doc["verified"] is True and doc["evidence_type"] == "sev-snp"
    assert doc["claims"]["x-ms-sevsnpvm-launchmeasurement"].startswith("b07af9620f3b839b")
    assert all({"name", "ok", "detail"} <= set(s) for s in doc["steps"])
    assert doc["policy"] is None


def test_human_output_names_steps_claims_and_verdict(capsys):
    rc, out, _ = run(capsys, *gsg_args())
    assert rc == 0
    for needle in ("chain-to-root", "report-signature", "x-ms-sevsnpvm-is-debuggable      true", "verdict        VERIFIED"):
        assert needle in out


def test_collateral_folder_recognised_by_content(capsys):
    d = vectors.vector_dir(GSG)
    rc, out, _ = run(capsys, str(d / "attestation.bin"), "--collateral", str(d), "--at", "2022-09-24T01:00:00Z", "--json")
    assert rc == 0 and json.loads(out)["verified"]


def test_policy_failure_exits_1_with_every_rule(capsys, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("x-ms-attestation-type: sevsnpvm\nx-ms-sevsnpvm-launchmeasurement: '00'\n")
    rc, out, _ = run(capsys, *gsg_args(), "--policy", str(pol), "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["verified"] is True and doc["policy_ok"] is False
    by = {r["claim"]: r for r in doc["policy"]}
    assert by["x-ms-attestation-type"]["ok"] is True
    assert by["x-ms-sevsnpvm-launchmeasurement"] == {"claim": "x-ms-sevsnpvm-launchmeasurement", "expected": "00", "actual": doc["claims"]["x-ms-sevsnpvm-launchmeasurement"], "ok": False}
    # this report comes from a debug guest: the default rule refuses it too
    assert by["x-ms-sevsnpvm-is-debuggable"]["ok"] is False and by["x-ms-sevsnpvm-is-debuggable"]["implicit"] is True


def test_reference_time_outside_window_exits_1(capsys):
    args = gsg_args()
    args[-1] = "2035-01-01T00:00:00Z"
    rc, out, _ = run(capsys, *args, "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["error"]["step"] == "cert-validity" and doc["error"]["reason"] == "cert-expired"


@pytest.mark.parametrize("content", [b"", b"hello world, not evidence"])
def test_unusable_input_exits_2(capsys, tmp_path, content):
    f = tmp_path / "x.bin"
    f.write_bytes(content)
    rc, out, err = run(capsys, str(f))
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_missing_file_and_bad_time_exit_2(capsys, tmp_path):
    assert run(capsys, str(tmp_path / "nope.pem"))[0] == 2
    assert run(capsys, *gsg_args()[:3], "--at", "yesterday")[0] == 2


@pytest.fixture
def sim_cert(tmp_path):
    d = tmp_path / "sim"
    auth = simdir.load_or_create(d)
    key = new_key()
    now = datetime.now(UTC)
    cert = issue_certificate(key, lambda rd: auth.report(rd, measurement=b"\x22" * 48), now=now, lifetime=timedelta(hours=1))
    return d, cert, key


def test_ratls_certificate_file_with_sim_dir(capsys, tmp_path, sim_cert):
    d, cert, _ = sim_cert
    pem = tmp_path / "c.pem"
    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps({"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": "22" * 48}))
    rc, out, _ = run(capsys, str(pem), "--sim-dir", str(d), "--policy", str(pol), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["kind"] == "certificate" and doc["evidence_type"] == "sim" and doc["policy_ok"] is True
    # trusted only through that sim root: another simulated TEE's directory does not vouch for it
    other = tmp_path / "other-sim"
    simdir.load_or_create(other)
    rc2, out2, _ = run(capsys, str(pem), "--sim-dir", str(other), "--json")
    assert rc2 == 1 and json.loads(out2)["error"]["step"] == "chain-to-root"
    assert run(capsys, str(pem), "--sim-dir", str(tmp_path / "missing"))[0] == 2


def test_host_port_takes_the_live_certificate(capsys, tmp_path, sim_cert):
    d, cert, key = sim_cert
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    certfile.write_bytes(cert.public_bytes(Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    rc, out, _ = run(capsys, f"127.0.0.1:{port}", "--sim-dir", str(d), "--json")
    t.join(5)
    srv.close()
    doc = json.loads(out)
    assert rc == 0 and doc["verified"] and doc["cert_sha256"]


def test_real_tdx_quote_with_collateral(capsys):
    name = "tdx/gtg-spr-v4-collateral"
    d = vectors.vector_dir(name)
    rc, out, _ = run(capsys, str(d / "tdx_prod_quote_SPR_E4.dat"), "--collateral", str(d), "--at", "2023-07-01T01:00:00Z", "--json")
    doc = json.loads(out)
    # SOURCE.md: the platform's SVNs are below every level of this TCB info (go-tdx-guest zeroes them to pass)
    assert rc == 1 and doc["evidence_type"] == "tdx"
    assert doc["error"]["step"] == "tcb-level-match" and doc["error"]["reason"] == "tcb-level-not-found"
    assert [s["name"] for s in doc["steps"] if s["ok"]][:2] == ["parse-quote", "pck-chain"]


@pytest.mark.parametrize(("extra", "rc_want"), [({}, 1), ({"crl-checked": False, "qe-identity-checked": False}, 0)])
def test_tdx_without_crls_or_qe_identity_refused_by_default(capsys, tmp_path, extra, rc_want):
    """TCB info alone: verified, but the default policy refuses what was not checked unless named."""
    d = vectors.vector_dir("tdx/gtg-emr-v5-tdx15")
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"x-ms-attestation-type": "tdxvm", **extra}))
    rc, out, _ = run(capsys, str(d / "quote_v5_sample.dat"), "--collateral", str(d / "sample_tcbinfo_response_v5.json"),
                     "--at", "2026-02-03T01:00:00Z", "--policy", str(policy), "--json")
    doc = json.loads(out)
    assert rc == rc_want and doc["verified"] is True
    failed = sorted(r["claim"] for r in doc["policy"] if not r["ok"])
    assert failed == ([] if extra else ["crl-checked", "qe-identity-checked"])
