"""The whole confidential-model flow with a real Triton behind the proxy pair.

Model owner: train the digits classifier, `ratls model encrypt` + `sign`, seal the content key in
the keybroker with a release policy naming the simulated TEE's measurement. TEE: `ratls sidecar
unseal` attests to the keybroker and decrypts the model into tmpfs; tritonserver (pytriton)
loads it from there; a tritonclient inference goes client -> ratls proxy -> attested TLS -> ratls
sidecar -> Triton and answers correctly.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import numpy as np
import pytest

from tests.pair import free_port, pair
from tests.test_unseal import SHM, BrokerProc, _cmd, _shm_ok, _tree

pytestmark = [pytest.mark.slow, pytest.mark.triton]


@pytest.fixture
def owner_world(tmp_path):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec

    from client.backends.digits import save, train
    from ratls.sim import DEFAULT_MEASUREMENT

    w = tmp_path
    save(train(), w / "model")
    owner = ec.generate_private_key(ec.SECP384R1())
    (w / "owner.pem").write_bytes(owner.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    (w / "owner.pub").write_bytes(owner.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    assert _cmd("model", "encrypt", str(w / "model"), "-o", str(w / "model.rmb"), "--key-out", str(w / "content.key")).returncode == 0
    assert _cmd("model", "sign", str(w / "model.rmb"), "--key", str(w / "owner.pem")).returncode == 0
    assert _cmd("sim", "init", "--dir", str(w / "sim")).returncode == 0
    assert _cmd("keybroker", "new-master-key", str(w / "master.key")).returncode == 0
    (w / "policy.json").write_text(
        json.dumps({"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": DEFAULT_MEASUREMENT.hex()})
    )
    r = _cmd("keybroker", "add-secret", "--store", str(w / "store"), "--master-key", str(w / "master.key"), "--id", "digits-key",
             "--secret-file", str(w / "content.key"), "--policy", str(w / "policy.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    os.unlink(w / "content.key")
    broker = BrokerProc(w, w / "sim")
    broker.start()
    yield w, broker
    broker.stop()


def test_unsealed_model_served_by_triton_through_the_proxy_pair(owner_world, tmp_path):
    import tritonclient.http as th

    from client.backends.digits import held_out
    from client.backends.triton_digits import TritonDigits
    from ratls.sim import DEFAULT_MEASUREMENT

    w, broker = owner_world
    if _shm_ok():
        out, extra = SHM / f"ratls-triton-{uuid.uuid4().hex[:12]}", []
    else:
        out, extra = tmp_path / "models", ["--allow-disk"]
    try:
        r = _cmd(
            "sidecar", "unseal", "--keybroker", broker.url, "--bundle", str(w / "model.rmb"), "--key-id", "digits-key",
            "--out", str(out), "--signer", str(w / "owner.pub"), "--tee", "sim", "--sim-dir", str(w / "sim"), *extra,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _tree(out) == _tree(w / "model")
        assert [x["decision"] for x in broker.audit()] == ["challenge", "attested", "release"]

        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        with (
            TritonDigits(http_port, grpc_port, metrics_port, model_dir=out, log_path=tmp_path / "triton.log"),
            pair(tmp_path / "pair", http_backend=f"127.0.0.1:{http_port}", maps=["inference.test:8000"]) as p,
        ):
            client = th.InferenceServerClient(f"127.0.0.1:{p.map_ports['inference.test:8000']}", network_timeout=60)
            x, y = held_out()
            inp = th.InferInput("pixels", list(x[:64].shape), "FP32")
            inp.set_data_from_numpy(x[:64].astype(np.float32))
            res = client.infer("digits", [inp], outputs=[th.InferRequestedOutput("label")])
            labels = res.as_numpy("label").reshape(-1)
            assert (labels == y[:64]).mean() > 0.9
            handshakes = p.proxy_events("handshake")
            assert handshakes and all(h["decision"] == "admit" and h["evidence_type"] == "sim" for h in handshakes)
            # the TEE the client talked to reports the measurement the keybroker released the key to
            assert handshakes[0]["claims"]["x-ms-sevsnpvm-launchmeasurement"] == DEFAULT_MEASUREMENT.hex()
    finally:
        shutil.rmtree(out, ignore_errors=True)
