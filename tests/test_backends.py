"""The example backends on their own (no proxy): a real tritonserver and the TF Serving API server
answer real clients correctly. The end-to-end tests through the pair build on these."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests

from client.backends.digits import held_out, load, save, train
from client.tfserving import make_ndarray, make_tensor_proto, predict_pb2, prediction_service_pb2_grpc, types_pb2

IMAGE_FLOATS = 3 * 224 * 224
NO_PROXY = {"http": None, "https": None}  # requests: straight to the backend, whatever the env says


@pytest.fixture(scope="module")
def ports():
    import socket

    socks = [socket.socket() for _ in range(5)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    got = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return got


@pytest.fixture(scope="module")
def digits_data():
    return held_out()


# --- the model itself -------------------------------------------------------------------------


def test_model_round_trips_through_a_model_dir(tmp_path, digits_data):
    x, y = digits_data
    model = train()
    save(model, tmp_path)
    labels, proba = load(tmp_path).predict(x)
    assert (labels == y).mean() > 0.9
    assert proba.shape == (len(x), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_model_dir_without_model_is_a_usage_error(tmp_path):
    from ratls.errors import Reason, UsageError

    with pytest.raises(UsageError) as e:
        load(tmp_path)
    assert e.value.reason is Reason.CONFIG_INVALID


# --- TF Serving API --------------------------------------------------------------------------


def test_tensor_proto_round_trip():
    for arr in [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[1, -2]], dtype=np.int64), np.zeros((0, 3), np.float32)]:
        t = make_tensor_proto(arr)
        back = make_ndarray(t)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr)


def test_tensor_proto_typed_values_as_tf_writes_them():
    """TF clients may send float_val instead of tensor_content (and one value to broadcast)."""
    from client.tfserving import tensor_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2), tensor_shape_pb2.TensorShapeProto.Dim(size=2)])
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[1, 2, 3, 4])
    np.testing.assert_array_equal(make_ndarray(t), [[1, 2], [3, 4]])
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[7])
    np.testing.assert_array_equal(make_ndarray(t), np.full((2, 2), 7, np.float32))
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[1, 2, 3])
    with pytest.raises(ValueError):
        make_ndarray(t)


def test_wire_format_matches_tensorflow_field_numbers():
    """Hand-encoded bytes with TF Serving's field numbers decode into our messages (interop)."""
    # PredictRequest{model_spec(1){name(1)="m", signature_name(3)="s"}, inputs(2){key(1)="x", value(2)=TensorProto{dtype(1)=DT_FLOAT}}}
    spec = b"\x0a\x01m" + b"\x1a\x01s"
    tensor = b"\x08\x01"
    entry = b"\x0a\x01x" + b"\x12" + bytes([len(tensor)]) + tensor
    wire = b"\x0a" + bytes([len(spec)]) + spec + b"\x12" + bytes([len(entry)]) + entry
    req = predict_pb2.PredictRequest.FromString(wire)
    assert req.model_spec.name == "m" and req.model_spec.signature_name == "s"
    assert req.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert predict_pb2.PredictRequest.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"
    # the gRPC method path real TF Serving clients call, and its message types
    from client.tfserving import prediction_service_pb2

    svc = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
    assert svc.full_name == "tensorflow.serving.PredictionService"
    predict = svc.methods_by_name["Predict"]
    assert (predict.input_type.full_name, predict.output_type.full_name) == ("tensorflow.serving.PredictRequest", "tensorflow.serving.PredictResponse")


@pytest.fixture(scope="module")
def tfs(ports):
    from client.backends.tfserving import TFServingBackend

    with TFServingBackend(grpc_port=ports[0], rest_port=ports[1]) as b:
        yield b


def _predict(channel_target: str, name: str, inputs: dict[str, np.ndarray], **spec):
    with grpc.insecure_channel(channel_target, options=[("grpc.enable_http_proxy", 0)]) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = name
        for k, v in spec.items():
            setattr(req.model_spec, k, v)
        for k, v in inputs.items():
            req.inputs[k].CopyFrom(make_tensor_proto(v))
        return stub.Predict(req, timeout=30)


def test_tfs_grpc_predict_digits(tfs, digits_data):
    x, y = digits_data
    resp = _predict(f"127.0.0.1:{tfs.grpc_port}", "digits", {"pixels": x})
    labels = make_ndarray(resp.outputs["label"])
    assert (labels == y).mean() > 0.9
    assert make_ndarray(resp.outputs["probabilities"]).shape == (len(x), 10)
    assert resp.model_spec.name == "digits" and resp.model_spec.signature_name == "serving_default"
    assert resp.model_spec.version.value == 1


def test_tfs_grpc_big_tensor(tfs):
    x = np.random.default_rng(1).random((2, IMAGE_FLOATS), dtype=np.float32)
    resp = _predict(f"127.0.0.1:{tfs.grpc_port}", "identity_fp32", {"input": x})
    np.testing.assert_array_equal(make_ndarray(resp.outputs["output"]), x)


def test_tfs_grpc_errors_use_tf_serving_status_codes(tfs):
    target = f"127.0.0.1:{tfs.grpc_port}"
    with pytest.raises(grpc.RpcError) as e:
        _predict(target, "no-such-model", {"pixels": np.zeros((1, 64), np.float32)})
    assert e.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        _predict(target, "digits", {"pixels": np.zeros((1, 63), np.float32)})
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        _predict(target, "digits", {"pixels": np.zeros((1, 64), np.float32)}, signature_name="other")
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_tfs_rest_row_and_columnar(tfs, digits_data):
    x, y = digits_data
    base = f"http://127.0.0.1:{tfs.rest_port}/v1/models/digits"
    r = requests.post(f"{base}:predict", json={"instances": x[:50].tolist()}, proxies=NO_PROXY, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 50 and set(preds[0]) == {"label", "probabilities"}
    assert np.mean([p["label"] for p in preds] == y[:50]) > 0.9
    r = requests.post(f"{base}/versions/1:predict", json={"inputs": {"pixels": x[:5].tolist()}}, proxies=NO_PROXY, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["label"] == [int(v) for v in load_labels(x[:5])]
    r = requests.post(f"http://127.0.0.1:{tfs.rest_port}/v1/models/mean_fp32:predict", json={"instances": [[1.0] * IMAGE_FLOATS]}, proxies=NO_PROXY, timeout=30)
    assert r.json() == {"predictions": [1.0]}


def load_labels(x):
    return train().predict(x)[0]


def test_tfs_rest_errors(tfs):
    base = f"http://127.0.0.1:{tfs.rest_port}/v1/models"
    r = requests.post(f"{base}/nope:predict", json={"instances": [[0] * 64]}, proxies=NO_PROXY, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = requests.post(f"{base}/digits:predict", data=b"{not json", proxies=NO_PROXY, timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(f"{base}/digits:predict", json={"instances": [[0] * 5]}, proxies=NO_PROXY, timeout=10)
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(f"{base}/digits/versions/7:predict", json={"instances": [[0] * 64]}, proxies=NO_PROXY, timeout=10)
    assert r.status_code == 404
    r = requests.get(f"{base}/digits", proxies=NO_PROXY, timeout=10)
    assert r.json()["model_version_status"][0]["state"] == "AVAILABLE"


# --- Triton ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(ports):
    from client.backends.triton_digits import TritonDigits

    with TritonDigits(http_port=ports[2], grpc_port=ports[3], metrics_port=ports[4]) as t:
        yield t


@pytest.mark.triton
def test_triton_env_points_the_stub_at_this_python():
    import sysconfig

    from client.backends.triton_digits import triton_env

    env = triton_env({"LD_LIBRARY_PATH": "/a:/b"})
    assert env["LD_LIBRARY_PATH"].split(":") == [sysconfig.get_config_var("LIBDIR"), "/a", "/b"]


@pytest.mark.triton
def test_triton_grpc_digits_accuracy(triton, digits_data):
    import tritonclient.grpc as tg

    x, y = digits_data
    client = tg.InferenceServerClient(triton.grpc_url)
    assert client.is_server_live() and client.is_model_ready("digits")
    inp = tg.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer("digits", [inp])
    labels = res.as_numpy("label").ravel()
    assert (labels == y).mean() > 0.9
    assert res.as_numpy("probabilities").shape == (len(x), 10)
    client.close()


@pytest.mark.triton
def test_triton_http_digits_and_big_tensors(triton, digits_data):
    import tritonclient.http as th

    x, y = digits_data
    client = th.InferenceServerClient(triton.http_url, network_timeout=60)
    inp = th.InferInput("pixels", [20, 64], "FP32")
    inp.set_data_from_numpy(x[:20], binary_data=False)  # JSON body
    labels = client.infer("digits", [inp]).as_numpy("label").ravel()
    assert (labels == y[:20]).mean() > 0.8
    big = np.random.default_rng(2).random((2, IMAGE_FLOATS), dtype=np.float32)
    inp = th.InferInput("input", list(big.shape), "FP32")
    inp.set_data_from_numpy(big)
    np.testing.assert_array_equal(client.infer("identity_fp32", [inp]).as_numpy("output"), big)
    np.testing.assert_allclose(client.infer("mean_fp32", [inp]).as_numpy("mean").ravel(), big.mean(axis=1), rtol=1e-5)
    client.close()


def test_tfs_serves_the_model_from_model_dir(tmp_path, digits_data):
    """--model-dir (what the unseal step decrypts into) replaces the trained-at-start model."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from client.backends.digits import DigitsModel
    from client.backends.tfserving import TFServingBackend
    from tests.pair import free_port

    x_all, y_all = load_digits(return_X_y=True)
    shifted = LogisticRegression(max_iter=2000).fit(x_all / 16.0, (y_all + 1) % 10)  # a model that answers digit+1
    save(DigitsModel(estimator=shifted), tmp_path)
    x, y = digits_data
    with TFServingBackend(grpc_port=free_port(), rest_port=free_port(), model_dir=tmp_path) as b:
        resp = _predict(f"127.0.0.1:{b.grpc_port}", "digits", {"pixels": x})
    assert (make_ndarray(resp.outputs["label"]) == (y + 1) % 10).mean() > 0.9
