"""A server speaking the TF Serving API, a stand-in for ``tensorflow_model_server`` (no registry ships it).

- gRPC ``tensorflow.serving.PredictionService/Predict`` (real message definitions, ``client/tfserving``)
  on ``--grpc-port`` (TF Serving's 8500);
- REST ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` and ``GET /v1/models/NAME`` (model
  status) on ``--rest-port`` (8501), in TF Serving's row (``instances`` -> ``predictions``) and
  columnar (``inputs`` -> ``outputs``) formats.

Models (signature ``serving_default``): ``digits`` (input ``pixels`` [n, 64] -> ``label`` [n],
``probabilities`` [n, 10]; see ``client.backends.digits``), ``identity_fp32`` and ``mean_fp32``
(input ``input`` [n, 150528], as on the Triton backend).

The request handling (``predict_grpc``, ``predict_rest``) is plain functions over messages and
dicts; ``serve`` only binds them to grpc.aio and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .process import ChildServer

IMAGE_FLOATS = 3 * 224 * 224
DEFAULT_SIGNATURE = "serving_default"
MODEL_VERSION = 1


class PredictError(Exception):
    """A request the model cannot answer; ``code`` is the gRPC status name TF Serving would use."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Signature:
    """One served signature: named float32 inputs (with their per-row width) -> named outputs."""

    inputs: dict[str, int]
    fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def build_models(model_dir: Path | None = None) -> dict[str, Signature]:
    from .digits import N_FEATURES, train_or_load

    digits = train_or_load(model_dir)

    def _digits(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels, proba = digits.predict(x["pixels"])
        return {"label": labels, "probabilities": proba}

    return {
        "digits": Signature({"pixels": N_FEATURES}, _digits),
        "identity_fp32": Signature({"input": IMAGE_FLOATS}, lambda x: {"output": x["input"]}),
        "mean_fp32": Signature({"input": IMAGE_FLOATS}, lambda x: {"mean": x["input"].mean(axis=1, dtype=np.float32)}),
    }


def _run(models: dict[str, Signature], name: str, signature_name: str, inputs: dict[str, np.ndarray], output_filter=()) -> dict[str, np.ndarray]:
    sig = models.get(name)
    if sig is None:
        raise PredictError(f"Servable not found for request: Latest({name})", "NOT_FOUND")
    if signature_name not in ("", DEFAULT_SIGNATURE):
        raise PredictError(f"Serving signature name: \"{signature_name}\" not found in signature def", "INVALID_ARGUMENT")
    if set(inputs) != set(sig.inputs):
        raise PredictError(f"input names {sorted(inputs)} do not match the signature's {sorted(sig.inputs)}")
    batch: dict[str, np.ndarray] = {}
    for key, width in sig.inputs.items():
        arr = np.asarray(inputs[key], dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise PredictError(f"input {key!r} must have shape [batch, {width}], got {list(arr.shape)}")
        batch[key] = arr
    outputs = sig.fn(batch)
    if output_filter:
        unknown = set(output_filter) - set(outputs)
        if unknown:
            raise PredictError(f"output_filter names unknown outputs {sorted(unknown)}")
        outputs = {k: v for k, v in outputs.items() if k in output_filter}
    return outputs


def predict_grpc(models: dict[str, Signature], request):  # -> predict_pb2.PredictResponse
    """One PredictRequest -> PredictResponse (raises PredictError)."""
    from client.tfserving import make_ndarray, make_tensor_proto, model_pb2, predict_pb2

    try:
        inputs = {k: make_ndarray(v) for k, v in request.inputs.items()}
    except ValueError as e:
        raise PredictError(str(e)) from e
    spec = request.model_spec
    outputs = _run(models, spec.name, spec.signature_name, inputs, tuple(request.output_filter))
    response = predict_pb2.PredictResponse(
        model_spec=model_pb2.ModelSpec(name=spec.name, signature_name=spec.signature_name or DEFAULT_SIGNATURE)
    )
    response.model_spec.version.value = MODEL_VERSION
    for k, v in outputs.items():
        response.outputs[k].CopyFrom(make_tensor_proto(v))
    return response


def predict_rest(models: dict[str, Signature], name: str, body: dict) -> dict:
    """TF Serving's REST predict: row format (``instances``) or columnar (``inputs``)."""
    if not isinstance(body, dict):
        raise PredictError("request body must be a JSON object")
    sig = models.get(name)
    if sig is None:
        raise PredictError(f"Servable not found for request: Latest({name})", "NOT_FOUND")
    names = list(sig.inputs)
    signature_name = body.get("signature_name", "")
    if ("instances" in body) == ("inputs" in body):
        raise PredictError('request must hold exactly one of "instances" (row format) or "inputs" (columnar format)')
    try:
        if "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list) or not rows:
                raise PredictError('"instances" must be a non-empty list')
            if all(isinstance(r, dict) for r in rows):
                inputs = {k: np.asarray([r[k] for r in rows], dtype=np.float32) for k in rows[0]}
            elif len(names) == 1:
                inputs = {names[0]: np.asarray(rows, dtype=np.float32)}
            else:
                raise PredictError("instances must be objects naming each input")
            outputs = _run(models, name, signature_name, inputs)
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values())).tolist()}
            n = len(next(iter(outputs.values())))
            return {"predictions": [{k: v[i].tolist() for k, v in outputs.items()} for i in range(n)]}
        cols = body["inputs"]
        inputs = {k: np.asarray(v, dtype=np.float32) for k, v in cols.items()} if isinstance(cols, dict) else {names[0]: np.asarray(cols, dtype=np.float32)}
        outputs = _run(models, name, signature_name, inputs)
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values())).tolist()}
        return {"outputs": {k: v.tolist() for k, v in outputs.items()}}
    except (KeyError, TypeError, ValueError) as e:
        raise PredictError(f"malformed input: {e}") from e


_PREDICT_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?:predict$")
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 400}


async def serve(grpc_port: int, rest_port: int, host: str = "127.0.0.1", model_dir: Path | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    import grpc
    from aiohttp import web

    from client.tfserving import prediction_service_pb2_grpc

    models = build_models(model_dir)

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            try:
                return predict_grpc(models, request)
            except PredictError as e:
                await context.abort(getattr(grpc.StatusCode, e.code), str(e))

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"{host}:{grpc_port}")

    async def predict(request: web.Request) -> web.Response:
        m = _PREDICT_PATH.match(request.path)
        if m is None:
            return web.json_response({"error": f"Malformed request: POST {request.path}"}, status=404)
        version = m["version"]
        if version is not None and int(version) != MODEL_VERSION:
            return web.json_response({"error": f"Servable not found for request: Specific({m['name']}, {version})"}, status=404)
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as e:
            return web.json_response({"error": f"JSON Parse error: {e}"}, status=400)
        try:
            return web.json_response(predict_rest(models, m["name"], body))
        except PredictError as e:
            return web.json_response({"error": str(e)}, status=_HTTP_STATUS.get(e.code, 400))

    async def status(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in models:
            return web.json_response({"error": f"Could not find any versions of model {name}"}, status=404)
        ok = {"error_code": "OK", "error_message": ""}
        return web.json_response({"model_version_status": [{"version": str(MODEL_VERSION), "state": "AVAILABLE", "status": ok}]})

    app = web.Application(client_max_size=256 << 20)
    app.router.add_get("/v1/models/{name}", status)
    app.router.add_post("/v1/models/{tail:.+}", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, rest_port).start()
    await server.start()
    print(f"tfserving: serving {', '.join(models)} on grpc {host}:{grpc_port} rest {host}:{rest_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)
    await runner.cleanup()


class TFServingBackend(ChildServer):
    """``python -m client.backends.tfserving`` as a child process; ready when ``GET /v1/models/digits`` answers."""

    module = "client.backends.tfserving"

    def __init__(self, grpc_port: int, rest_port: int, host: str = "127.0.0.1", model_dir: Path | None = None, log_path: Path | None = None) -> None:
        self.host, self.grpc_port, self.rest_port = host, grpc_port, rest_port
        args = ["--host", host, "--grpc-port", str(grpc_port), "--rest-port", str(rest_port)]
        if model_dir:
            args += ["--model-dir", str(model_dir)]
        super().__init__(args, [f"http://{host}:{rest_port}/v1/models/digits"], log_path=log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.backends.tfserving", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: only the sidecar reaches it)")
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--model-dir", type=Path, help="serve digits.pkl from this (unsealed, verified) directory instead of training")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.grpc_port, args.rest_port, args.host, args.model_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
