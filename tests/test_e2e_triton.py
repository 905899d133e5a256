"""A real tritonserver end to end through the attested pair, with the clients Triton users run:
tritonclient gRPC (only ``grpc_proxy`` set), tritonclient HTTP (through the port-mapping listener,
since it ignores proxy variables), ``curl -x`` (health and a KServe v2 infer), ``ratls client``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from client.backends.digits import held_out
from tests.pair import free_port, pair

pytestmark = pytest.mark.triton

IMAGE_FLOATS = 3 * 224 * 224
HTTP_SERVICE = "triton.svc:8000"
GRPC_SERVICE = "triton.svc:8001"


@pytest.fixture(scope="module")
def triton():
    from client.backends.triton_digits import TritonDigits

    with TritonDigits(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as t:
        yield t


@pytest.fixture(scope="module")
def p(triton, tmp_path_factory):
    with pair(tmp_path_factory.mktemp("pair"), http_backend=triton.http_url, grpc_backend=triton.grpc_url,
              http_service=HTTP_SERVICE, grpc_service=GRPC_SERVICE, maps=[HTTP_SERVICE]) as pr:
        yield pr


@pytest.fixture
def proxy_env(p, monkeypatch):
    for k, v in p.env({}).items():
        monkeypatch.setenv(k, v)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    return p


def test_tritonclient_grpc_through_grpc_proxy(proxy_env):
    import tritonclient.grpc as tg

    p = proxy_env
    x, y = held_out()
    client = tg.InferenceServerClient(GRPC_SERVICE)  # the service name; grpcio CONNECTs through $grpc_proxy
    try:
        assert client.is_server_ready()
        assert client.get_model_metadata("digits").name == "digits"
        inp = tg.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("digits", [inp])
        assert (res.as_numpy("label").ravel() == y).mean() > 0.9
        big = np.random.default_rng(4).random((1, IMAGE_FLOATS), dtype=np.float32)
        inp = tg.InferInput("input", list(big.shape), "FP32")
        inp.set_data_from_numpy(big)
        np.testing.assert_array_equal(client.infer("identity_fp32", [inp]).as_numpy("output"), big)
    finally:
        client.close()
    hs = [e for e in p.proxy_events("handshake") if e["target"] == GRPC_SERVICE]
    assert hs and hs[-1]["decision"] == "admit" and hs[-1]["alpn"] == "h2"


def test_tritonclient_http_through_the_map_listener(p):
    import tritonclient.http as th

    x, y = held_out()
    client = th.InferenceServerClient(f"127.0.0.1:{p.map_ports[HTTP_SERVICE]}", network_timeout=60)
    try:
        assert client.is_server_ready()
        inp = th.InferInput("pixels", [64, 64], "FP32")
        inp.set_data_from_numpy(x[:64], binary_data=True)
        labels = client.infer("digits", [inp]).as_numpy("label").ravel()
        assert (labels == y[:64]).mean() > 0.9
        big = np.random.default_rng(5).random((1, IMAGE_FLOATS), dtype=np.float32)
        inp = th.InferInput("input", list(big.shape), "FP32")
        inp.set_data_from_numpy(big)
        np.testing.assert_allclose(client.infer("mean_fp32", [inp]).as_numpy("mean").ravel(), big.mean(axis=1), rtol=1e-5)
    finally:
        client.close()
    hs = [e for e in p.proxy_events("handshake") if e["target"] == HTTP_SERVICE]
    assert hs and hs[-1]["decision"] == "admit"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_x_health_and_infer(p):
    x, y = held_out()
    ready = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", p.proxy_url, f"http://{HTTP_SERVICE}/v2/health/ready"],
                           capture_output=True, text=True, timeout=30)
    assert ready.stdout == "200", ready.stderr
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": x[:2].ravel().tolist()}]})
    out = subprocess.run(["curl", "-sS", "--fail-with-body", "-x", p.proxy_url, "-H", "Content-Type: application/json", "--data-binary", "@-",
                          f"http://{HTTP_SERVICE}/v2/models/digits/infer"], input=body, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + out.stdout
    outputs = {o["name"]: o for o in json.loads(out.stdout)["outputs"]}
    assert outputs["label"]["data"] == [int(v) for v in y[:2]]


def test_ratls_client_triton_kinds(p):
    runs = [("triton-grpc", GRPC_SERVICE, p.env()), ("triton-http", f"127.0.0.1:{p.map_ports[HTTP_SERVICE]}", None)]
    for kind, url, env in runs:
        out = subprocess.run([sys.executable, "-m", "ratls.cli", "client", "--kind", kind, "--url", url, "--batch", "16", "--cnum", "2", "--loop", "2"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert sum(ln.startswith("query: ") for ln in out.stdout.splitlines()) == 4
        summary = re.search(r"summary: cnum 2, batch 16, .* accuracy ([\d.]+)", out.stdout)
        assert summary and float(summary.group(1)) > 0.9, out.stdout


def test_refused_sidecar_reaches_no_tritonclient(triton, tmp_path):
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    policy = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": "cd" * 48}
    with pair(tmp_path, http_backend=triton.http_url, grpc_backend=triton.grpc_url, http_service=HTTP_SERVICE, grpc_service=GRPC_SERVICE,
              policy=policy) as bad:
        client = tg.InferenceServerClient(GRPC_SERVICE, channel_args=[("grpc.http_proxy", bad.proxy_url)])
        with pytest.raises(InferenceServerException) as e:
            client.is_server_ready(client_timeout=10)
        client.close()
        assert "UNAVAILABLE" in str(e.value.status())
        refused = [h for h in bad.proxy_events("handshake") if h["decision"] != "admit"]
        assert refused and refused[-1]["failed_step"] == "policy"
