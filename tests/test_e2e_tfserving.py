"""TF Serving API end to end through the attested pair: real grpcio and requests/curl clients that
only know the proxy address, a real sidecar (simulated TEE) and the TF Serving API backend."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests

from client.backends.digits import held_out
from client.backends.tfserving import TFServingBackend
from client.tfserving import make_ndarray, make_tensor_proto, predict_pb2, prediction_service_pb2_grpc
from tests.pair import free_port, pair

IMAGE_FLOATS = 3 * 224 * 224


@pytest.fixture(scope="module")
def tfs():
    with TFServingBackend(grpc_port=free_port(), rest_port=free_port()) as b:
        yield b


@pytest.fixture(scope="module")
def p(tfs, tmp_path_factory):
    with pair(tmp_path_factory.mktemp("pair"), http_backend=f"127.0.0.1:{tfs.rest_port}", grpc_backend=f"127.0.0.1:{tfs.grpc_port}",
              http_service="tfs.svc:8501", grpc_service="tfs.svc:8500") as pr:
        yield pr


@pytest.fixture
def proxy_env(p, monkeypatch):
    """The client's whole configuration: the proxy variables (and nothing bypassing them)."""
    for k, v in p.env({}).items():
        monkeypatch.setenv(k, v)
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    return p


def _request(name: str, key: str, x: np.ndarray) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs[key].CopyFrom(make_tensor_proto(x))
    return req


def _handshakes(p, target: str) -> list[dict]:
    return [e for e in p.proxy_events("handshake") if e.get("target") == target]


def test_grpc_predict_through_grpc_proxy_env(proxy_env):
    p = proxy_env
    x, y = held_out()
    with grpc.insecure_channel(p.grpc_service) as ch:  # grpcio sends CONNECT tfs.svc:8500 to $grpc_proxy
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(_request("digits", "pixels", x), timeout=30)
    assert (make_ndarray(resp.outputs["label"]) == y).mean() > 0.9
    hs = _handshakes(p, p.grpc_service)
    assert hs and hs[-1]["decision"] == "admit" and hs[-1]["alpn"] == "h2" and hs[-1]["evidence_type"] == "sim"


def test_grpc_big_tensor_with_explicit_proxy_option(p):
    x = np.random.default_rng(3).random((1, IMAGE_FLOATS), dtype=np.float32)
    opts = [("grpc.http_proxy", p.proxy_url), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(p.grpc_service, options=opts) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(_request("identity_fp32", "input", x), timeout=60)
    np.testing.assert_array_equal(make_ndarray(resp.outputs["output"]), x)


def test_rest_predict_through_requests_proxy(p):
    x, y = held_out()
    r = requests.post(f"http://{p.http_service}/v1/models/digits:predict", json={"instances": x[:40].tolist()},
                      proxies={"http": p.proxy_url}, timeout=30)
    assert r.status_code == 200, r.text
    labels = [pred["label"] for pred in r.json()["predictions"]]
    assert np.mean(np.asarray(labels) == y[:40]) > 0.9
    hs = _handshakes(p, p.http_service)
    assert hs and hs[-1]["decision"] == "admit" and hs[-1]["alpn"] == "http/1.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_rest_predict_through_curl_x(p):
    x, y = held_out()
    body = json.dumps({"inputs": {"pixels": x[:3].tolist()}})
    out = subprocess.run(["curl", "-sS", "--fail-with-body", "-x", p.proxy_url, "-H", "Content-Type: application/json", "--data-binary", "@-",
                          f"http://{p.http_service}/v1/models/digits:predict"], input=body, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["outputs"]["label"] == [int(v) for v in y[:3]]


def test_ratls_client_cli_through_the_proxy(p):
    """`ratls client` as a user runs it: only the proxy variables point it at the pair."""
    for kind, url in (("tfs-grpc", p.grpc_service), ("tfs-rest", p.http_service)):
        out = subprocess.run([sys.executable, "-m", "ratls.cli", "client", "--kind", kind, "--url", url, "--batch", "8", "--cnum", "2", "--loop", "3"],
                             env=p.env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        queries = [ln for ln in out.stdout.splitlines() if ln.startswith("query: ")]
        assert len(queries) == 6 and all("via proxy" in q for q in queries)
        summary = re.search(r"summary: cnum 2, batch 8, e2e time\(s\) [\d.]+, average latency\(ms\) [\d.]+, .* tps: [\d.]+, accuracy ([\d.]+)", out.stdout)
        assert summary and float(summary.group(1)) > 0.9, out.stdout


def test_refused_sidecar_gives_grpc_and_rest_clients_an_explicit_failure(tfs, tmp_path):
    """A policy naming another measurement: 502 JSON naming the claim for REST, a failed CONNECT for gRPC."""
    policy = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": "ab" * 48}
    with pair(tmp_path, http_backend=f"127.0.0.1:{tfs.rest_port}", grpc_backend=f"127.0.0.1:{tfs.grpc_port}", policy=policy,
              http_service="tfs.svc:8501", grpc_service="tfs.svc:8500") as bad:
        r = requests.post(f"http://{bad.http_service}/v1/models/digits:predict", json={"instances": [[0.0] * 64]},
                          proxies={"http": bad.proxy_url}, timeout=30)
        assert r.status_code == 502
        body = r.json()
        assert body["service"] == bad.http_service and body["step"] == "policy"
        assert any(f["claim"] == "x-ms-sevsnpvm-launchmeasurement" for f in body["failed"])
        with grpc.insecure_channel(bad.grpc_service, options=[("grpc.http_proxy", bad.proxy_url)]) as ch, pytest.raises(grpc.RpcError) as e:
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(_request("digits", "pixels", np.zeros((1, 64), np.float32)), timeout=10)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        assert all(h["decision"] != "admit" for h in bad.proxy_events("handshake"))
