"""Keybroker: the sans-IO KBS core driven request by request, the sealed store, the HTTP edge."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk

from keybroker.server import Broker, make_verifier
from keybroker.store import SecretStore
from ratls import kbs
from ratls.errors import Reason, UsageError
from ratls.evidence import Evidence
from ratls.policy import Policy
from ratls.sim import DEFAULT_MEASUREMENT, SimAuthority

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SECRET = bytes(range(32))
GOOD_M = DEFAULT_MEASUREMENT.hex()
POLICY = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": GOOD_M, "x-ms-sevsnpvm-is-debuggable": False}


@pytest.fixture(scope="module")
def sim():
    """A simulated TEE whose chain is valid at NOW (the verifier's reference time), whatever the clock says."""
    auth = SimAuthority.generate(now=NOW - timedelta(days=1))
    return auth, auth.root_der


class Dict:
    def __init__(self, items: dict[str, tuple[bytes, dict]]) -> None:
        self.items = items

    def get(self, secret_id: str):
        if secret_id not in self.items:
            raise UsageError(Reason.NOT_FOUND, f"no secret {secret_id!r}")
        s, p = self.items[secret_id]
        return s, Policy.from_mapping(p, name=secret_id)


@pytest.fixture
def core(sim):
    return kbs.KbsCore(Dict({"model-key": (SECRET, POLICY)}), make_verifier(sim[1]))


class Tee:
    """The TEE side of the exchange, in-process: an ephemeral key and the simulated authority."""

    def __init__(self, authority, crv: str = "P-384", kty: str = "EC", **report_kw) -> None:
        self.key = jwk.JWK.generate(kty=kty, crv=crv)
        self.pub = json.loads(self.key.export_public())
        self.authority = authority
        self.report_kw = report_kw

    def evidence(self, nonce: bytes, pub: dict | None = None) -> Evidence:
        return self.authority.report(kbs.expected_report_data(nonce, kbs.public_key_bytes(pub or self.pub)), **self.report_kw)

    def attest_body(self, nonce: bytes, **over) -> dict:
        body = {"nonce": kbs.b64url(nonce), "tee-pubkey": self.pub, "tee-evidence": kbs.encode_evidence(self.evidence(nonce))}
        body.update(over)
        return body


def _nonce(core: kbs.KbsCore, now=NOW) -> bytes:
    out = core.auth({"version": kbs.PROTOCOL_VERSION, "tee": "sim"}, now)
    assert out.status == 200 and out.audit["decision"] == "challenge"
    return kbs.unb64url(out.body["nonce"], "nonce")


@pytest.mark.parametrize(("kty", "crv"), [("EC", "P-384"), ("EC", "P-256"), ("OKP", "X25519")])
def test_release_wrapped_to_the_tee_key(core, sim, kty, crv):
    tee = Tee(sim[0], crv=crv, kty=kty)
    n = _nonce(core)
    att = core.attest(tee.attest_body(n), NOW)
    assert att.status == 200, att.body
    assert [s["name"] for s in att.audit["steps"]][:4] == ["request", "nonce", "tee-pubkey", "evidence-decode"]
    assert att.audit["steps"][-1] == {"name": "binding", "ok": True, "detail": "report data = SHA-512(nonce || tee-pubkey)", "ms": 0.0}
    res = core.resource(att.body["session"], "model-key", NOW)
    assert res.status == 200 and res.audit["decision"] == "release"
    assert SECRET.hex() not in json.dumps(res.body) and SECRET.hex() not in json.dumps(res.audit)
    assert kbs.unwrap_secret(res.body["jwe"], tee.key, secret_id="model-key") == SECRET
    other = jwk.JWK.generate(kty=kty, crv=crv)
    with pytest.raises(kbs.VerificationError):
        kbs.unwrap_secret(res.body["jwe"], other)
    assert all(r["ok"] for r in res.audit["rules"])


def test_measurement_not_allowed_nothing_released(core, sim):
    tee = Tee(sim[0], measurement=b"\x42" * 48)
    att = core.attest(tee.attest_body(_nonce(core)), NOW)
    assert att.status == 200  # evidence is genuine ...
    res = core.resource(att.body["session"], "model-key", NOW)
    assert res.status == 403 and "jwe" not in res.body  # ... but the release policy says no
    assert res.body["error"] == Reason.POLICY_FAILED.value and res.body["step"] == "policy"
    (rule,) = res.body["failed_rules"]
    assert rule["claim"] == "x-ms-sevsnpvm-launchmeasurement"
    assert (rule["expected"], rule["actual"]) == (GOOD_M, "42" * 48)
    assert res.audit["decision"] == "deny" and res.audit["failed_rules"] == res.body["failed_rules"]


def test_debug_tee_refused_by_implicit_rule(sim):
    c = kbs.KbsCore(Dict({"k": (SECRET, {"x-ms-attestation-type": "sim"})}), make_verifier(sim[1]))
    tee = Tee(sim[0], debug=True)
    att = c.attest(tee.attest_body(_nonce(c)), NOW)
    res = c.resource(att.body["session"], "k", NOW)
    assert res.status == 403
    assert [r["claim"] for r in res.body["failed_rules"]] == ["x-ms-sevsnpvm-is-debuggable"]


def test_replayed_attestation(core, sim):
    tee = Tee(sim[0])
    body = tee.attest_body(_nonce(core))
    assert core.attest(body, NOW).status == 200
    again = core.attest(body, NOW + timedelta(seconds=1))
    assert again.status == 401 and again.body["error"] == Reason.NONCE_REUSED.value and again.body["step"] == "nonce"
    assert "session" not in again.body


def test_failed_attestation_still_consumes_the_nonce(core, sim):
    tee = Tee(sim[0])
    n = _nonce(core)
    bad = tee.attest_body(n, **{"tee-pubkey": Tee(sim[0]).pub})
    assert core.attest(bad, NOW).status == 401
    assert core.attest(tee.attest_body(n), NOW).body["error"] == Reason.NONCE_REUSED.value


def test_expired_nonce(core, sim):
    tee = Tee(sim[0])
    n = _nonce(core)
    late = core.attest(tee.attest_body(n), NOW + timedelta(seconds=core.nonce_ttl_s + 1))
    assert late.status == 401 and late.body["error"] == Reason.NONCE_EXPIRED.value


def test_nonce_never_issued(core, sim):
    tee = Tee(sim[0])
    out = core.attest(tee.attest_body(os.urandom(32)), NOW)
    assert out.status == 401 and out.body["error"] == Reason.NONCE_MISMATCH.value


def test_evidence_bound_to_another_key(core, sim):
    """A man in the middle swaps in its own key but replays the TEE's evidence: refused."""
    tee, mitm = Tee(sim[0]), Tee(sim[0])
    n = _nonce(core)
    body = {"nonce": kbs.b64url(n), "tee-pubkey": mitm.pub, "tee-evidence": kbs.encode_evidence(tee.evidence(n))}
    out = core.attest(body, NOW)
    assert out.status == 401 and out.body["error"] == Reason.REPORT_DATA_MISMATCH.value and out.body["step"] == "binding"
    assert out.audit["steps"][-1]["name"] == "binding" and not out.audit["steps"][-1]["ok"]


def test_evidence_bound_to_another_nonce(core, sim):
    tee = Tee(sim[0])
    n1, n2 = _nonce(core), _nonce(core)
    body = {"nonce": kbs.b64url(n2), "tee-pubkey": tee.pub, "tee-evidence": kbs.encode_evidence(tee.evidence(n1))}
    assert core.attest(body, NOW).body["error"] == Reason.REPORT_DATA_MISMATCH.value


def test_untrusted_sim_root(sim):
    c = kbs.KbsCore(Dict({"model-key": (SECRET, POLICY)}), make_verifier(None))
    tee = Tee(sim[0])
    out = c.attest(tee.attest_body(_nonce(c)), NOW)
    assert out.status == 401 and out.body["error"] == Reason.UNTRUSTED_ROOT.value


def test_tampered_evidence(core, sim):
    tee = Tee(sim[0])
    n = _nonce(core)
    ev = tee.evidence(n)
    data = bytearray(ev.data)
    data[0x90] ^= 1  # inside the signed body (measurement)
    body = {
        "nonce": kbs.b64url(n),
        "tee-pubkey": tee.pub,
        "tee-evidence": kbs.encode_evidence(Evidence(ev.type, bytes(data), ev.endorsements)),
    }
    out = core.attest(body, NOW)
    assert out.status == 401 and out.body["error"] == Reason.BAD_SIGNATURE.value


def test_challenge_for_another_tee_type(core, sim):
    out = core.auth({"tee": "tdx"}, NOW)
    n = kbs.unb64url(out.body["nonce"], "n")
    res = core.attest(Tee(sim[0]).attest_body(n), NOW)
    assert res.status == 400 and res.body["error"] == Reason.UNSUPPORTED_EVIDENCE.value


def test_resource_needs_a_session_and_a_known_secret(core, sim):
    assert core.resource(None, "model-key", NOW).status == 401
    assert core.resource("f" * 32, "model-key", NOW).status == 401
    att = core.attest(Tee(sim[0]).attest_body(_nonce(core)), NOW)
    sid = att.body["session"]
    miss = core.resource(sid, "nope", NOW)
    assert miss.status == 404 and miss.body["error"] == Reason.NOT_FOUND.value
    assert core.resource(sid, "../etc", NOW).status == 404
    assert core.resource(sid, "model-key", NOW + timedelta(seconds=core.session_ttl_s + 1)).status == 401


def test_bad_requests_are_400(core):
    assert core.auth(None, NOW).status == 400
    assert core.auth({"tee": "nitro"}, NOW).status == 400
    assert core.attest("x", NOW).status == 400
    n = _nonce(core)
    out = core.attest({"nonce": kbs.b64url(n), "tee-pubkey": {"kty": "EC", "crv": "P-521"}}, NOW)
    assert out.status == 400 and out.body["step"] == "tee-pubkey"


@settings(max_examples=80, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(["nonce", "tee-pubkey", "tee-evidence", "x"]),
        st.none()
        | st.text(max_size=20)
        | st.integers()
        | st.dictionaries(st.sampled_from(["kty", "crv", "x", "y", "type", "data"]), st.text(max_size=12), max_size=4),
        max_size=4,
    )
)
def test_attest_on_any_body_answers_4xx(body):
    c = kbs.KbsCore(Dict({}), make_verifier(None))
    n = _nonce(c)
    if "nonce" in body and body["nonce"] is None:
        body["nonce"] = kbs.b64url(n)
    out = c.attest(body, NOW)
    assert 400 <= out.status < 500 and out.audit["decision"] == "deny"


def test_challenges_are_bounded(sim, monkeypatch):
    monkeypatch.setattr(kbs, "MAX_PENDING_CHALLENGES", 5)
    c = kbs.KbsCore(Dict({}), make_verifier(sim[1]))
    for _ in range(20):
        _nonce(c)
    assert c.pending == 5


# -- the sealed store --------------------------------------------------------------------------


def test_store_seals_at_rest(tmp_path):
    mk = os.urandom(32)
    st_ = SecretStore(tmp_path / "s", mk)
    st_.put("model-key", SECRET, Policy.from_mapping(POLICY))
    raw = (tmp_path / "s" / "model-key.json").read_bytes()
    assert SECRET not in raw and SECRET.hex().encode() not in raw and kbs.b64url(SECRET).encode() not in raw
    assert SecretStore(tmp_path / "s", mk).get("model-key")[0] == SECRET
    with pytest.raises(UsageError) as e:
        SecretStore(tmp_path / "s", os.urandom(32)).get("model-key")
    assert e.value.reason is Reason.TAMPERED
    with pytest.raises(UsageError) as e:
        st_.put("model-key", SECRET, Policy.from_mapping(POLICY))
    assert e.value.reason is Reason.CONFIG_INVALID


def test_store_loosened_policy_does_not_open(tmp_path):
    mk = os.urandom(32)
    st_ = SecretStore(tmp_path, mk)
    st_.put("model-key", SECRET, Policy.from_mapping(POLICY))
    p = tmp_path / "model-key.json"
    doc = json.loads(p.read_text())
    doc["policy"]["x-ms-sevsnpvm-launchmeasurement"] = [GOOD_M, "42" * 48]
    p.write_text(json.dumps(doc))
    with pytest.raises(UsageError) as e:
        st_.get("model-key")
    assert e.value.reason is Reason.TAMPERED


def test_store_renamed_secret_does_not_open(tmp_path):
    mk = os.urandom(32)
    st_ = SecretStore(tmp_path, mk)
    st_.put("a", SECRET, Policy.from_mapping(POLICY))
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["id"] = "b"
    (tmp_path / "b.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError) as e:
        st_.get("b")
    assert e.value.reason is Reason.TAMPERED


def test_store_rejects_bad_ids(tmp_path):
    st_ = SecretStore(tmp_path, os.urandom(32))
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(UsageError):
            st_.put(bad, SECRET, Policy.from_mapping(POLICY))


# -- the HTTP edge on a real socket --------------------------------------------------------------


async def test_http_round_trip_audit_and_restart(tmp_path, sim):
    """Two broker instances on one store: the second (a restart) still releases the secret."""
    import asyncio
    import io

    from sidecar.unseal import fetch_key

    mk = os.urandom(32)
    SecretStore(tmp_path / "store", mk).put("model-key", SECRET, Policy.from_mapping(POLICY))
    tee = Tee(sim[0])
    for _instance in range(2):
        audit = io.StringIO()
        b = Broker(SecretStore(tmp_path / "store", mk), sim_root=sim[1], audit_stream=audit)
        port = await b.start()
        try:
            rel = await asyncio.to_thread(
                fetch_key, f"http://127.0.0.1:{port}", "model-key", lambda rd: tee.authority.report(rd), "sim", retries=0
            )
        finally:
            await b.stop()
        assert rel.key == SECRET and rel.attempts == 1
        lines = [json.loads(x) for x in audit.getvalue().splitlines()]
        assert [x["event"] for x in lines] == ["kbs.auth", "kbs.attest", "kbs.resource"]
        assert [x["decision"] for x in lines] == ["challenge", "attested", "release"]
        assert all(x["peer"] == "127.0.0.1" and "request_id" in x and "ms" in x for x in lines)
        assert SECRET.hex() not in audit.getvalue()


async def test_http_refusal_is_4xx_json(tmp_path, sim):
    import asyncio
    import io

    from sidecar.unseal import fetch_key

    audit = io.StringIO()
    b = Broker(Dict({"model-key": (SECRET, POLICY)}), sim_root=sim[1], audit_stream=audit)
    port = await b.start()
    try:
        with pytest.raises(kbs.VerificationError) as e:
            await asyncio.to_thread(
                fetch_key, f"http://127.0.0.1:{port}", "model-key", lambda rd: sim[0].report(rd, measurement=b"\x01" * 48), "sim", retries=3
            )
    finally:
        await b.stop()
    assert e.value.reason is Reason.POLICY_FAILED and e.value.step == "resource"
    last = json.loads(audit.getvalue().splitlines()[-1])
    assert last["status"] == 403 and last["failed_rules"][0]["claim"] == "x-ms-sevsnpvm-launchmeasurement"
    assert len(audit.getvalue().splitlines()) == 3  # a refusal is final: no retries


async def test_https_broker(tmp_path, sim):
    """TLS at the edge: the TEE side trusts the broker's CA; the secret is still JWE-wrapped."""
    import asyncio
    import io
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from keybroker.server import server_ssl_context
    from sidecar.unseal import fetch_key

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.now(UTC) - timedelta(hours=1))
        .not_valid_after(datetime.now(UTC) + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    b = Broker(Dict({"model-key": (SECRET, POLICY)}), sim_root=sim[1], audit_stream=io.StringIO())
    port = await b.start(ssl_context=server_ssl_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")))
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        rel = await asyncio.to_thread(
            fetch_key, f"https://localhost:{port}", "model-key", lambda rd: sim[0].report(rd), "sim", retries=0, ctx=ctx
        )
    finally:
        await b.stop()
    assert rel.key == SECRET


def test_cli_add_secret_and_list(tmp_path, capsys):
    from ratls.cli import main

    mk = tmp_path / "master.key"
    assert main(["keybroker", "new-master-key", str(mk)]) == 0
    assert mk.stat().st_mode & 0o777 == 0o600
    (tmp_path / "p.json").write_text(json.dumps(POLICY))
    (tmp_path / "k").write_bytes(SECRET)
    args = ["--store", str(tmp_path / "s"), "--master-key", str(mk)]
    assert (
        main(
            [
                "keybroker",
                "add-secret",
                *args,
                "--id",
                "model-key",
                "--secret-file",
                str(tmp_path / "k"),
                "--policy",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    assert main(["keybroker", "list", *args]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert out[-1]["id"] == "model-key" and out[-1]["policy"] == POLICY
    (tmp_path / "empty.json").write_text("{}")
    assert (
        main(
            ["keybroker", "add-secret", *args, "--id", "x", "--secret-file", str(tmp_path / "k"), "--policy", str(tmp_path / "empty.json")]
        )
        == 2
    )
    assert SecretStore(tmp_path / "s", mk.read_bytes()).get("model-key")[0] == SECRET


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=1300), ends=st.lists(st.binary(max_size=64), max_size=2))
def test_attest_on_any_evidence_bytes_answers_4xx(sim, data, ends):
    """Hostile evidence bytes reach the real verifier: a 4xx with a reason, never an exception."""
    c = kbs.KbsCore(Dict({}), make_verifier(sim[1]))
    n = _nonce(c)
    tee = Tee(sim[0])
    body = {
        "nonce": kbs.b64url(n),
        "tee-pubkey": tee.pub,
        "tee-evidence": {"type": "sim", "data": kbs.b64url(data), "endorsements": [kbs.b64url(e) for e in ends]},
    }
    out = c.attest(body, NOW)
    assert out.status == 401 and out.body["error"] in {r.value for r in Reason}
