"""A real NVIDIA Triton Inference Server (the ``tritonserver`` binary in the nvidia-pytriton wheel).

Models served (KServe v2 HTTP and gRPC, ports chosen by the caller):
- ``digits``: the classifier of ``client.backends.digits``; input ``pixels`` FP32 [-1, 64], outputs
  ``label`` INT64 [-1, 1] and ``probabilities`` FP32 [-1, 10];
- ``identity_fp32``: echoes ``input`` FP32 [-1, 150528] (a 3x224x224 image, 602 KB) as ``output``,
  the big-tensor case for benchmarks (600 KB each way);
- ``mean_fp32``: ``input`` FP32 [-1, 150528] -> ``mean`` FP32 [-1, 1] (600 KB in, a few bytes out,
  the shape of an image classifier's traffic);
- ``echo_fp32``: ``input`` FP32 [-1, -1] echoed as ``output`` (any size: the small-request benchmark).

Run it: ``python -m client.backends.triton_digits --http-port P --grpc-port Q`` (blocks; Ctrl-C or
SIGTERM stops it). From Python/tests: ``TritonDigits(http_port, grpc_port).start()`` runs that same
command as a child process and ``wait_ready()`` waits until every model answers ready.

Why the environment matters: pytriton's Python-backend stub links ``libpython3.11.so.1.0`` by
soname. Without help the loader picks the system's copy (another 3.11 patch release) while
``sys.path`` points at this interpreter's stdlib, and the stub fails inside ``multiprocessing``
(``'_thread.RLock' object has no attribute '_recursion_count'``). ``triton_env()`` puts this
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` for tritonserver and its stubs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sysconfig
from pathlib import Path

import numpy as np

from .process import ChildServer

IMAGE_FLOATS = 3 * 224 * 224
MODELS = ("digits", "identity_fp32", "mean_fp32", "echo_fp32")


def python_libdir() -> str:
    """The directory holding this interpreter's ``libpython`` (what the stub must load)."""
    return str(sysconfig.get_config_var("LIBDIR"))


def triton_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with this Python's LIBDIR first on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    libdir = python_libdir()
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    env["LD_LIBRARY_PATH"] = ":".join([libdir, *parts])
    return env


def serve(
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str = "127.0.0.1",
    model_dir: Path | None = None,
    workspace: Path | None = None,
    verbose: bool = False,
) -> None:
    """Start tritonserver with the three models and block until SIGINT/SIGTERM."""
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from .digits import N_CLASSES, N_FEATURES, train_or_load

    # pytriton copies os.environ for tritonserver: this is how the child gets the right libpython.
    os.environ.update(triton_env())
    model = train_or_load(model_dir)

    @batch
    def digits(pixels: np.ndarray) -> dict[str, np.ndarray]:
        labels, proba = model.predict(pixels)
        return {"label": labels.reshape(-1, 1), "probabilities": proba}

    @batch
    def identity(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"output": input}

    @batch
    def mean(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": input.mean(axis=1, keepdims=True, dtype=np.float32)}

    config = TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=2,  # idle keep-alive client connections must not hold a stop for 30 s
        log_verbose=1 if verbose else 0,
    )

    def _sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    with Triton(config=config, workspace=workspace) as triton:
        triton.bind(
            model_name="digits",
            infer_func=digits,
            inputs=[Tensor(name="pixels", dtype=np.float32, shape=(N_FEATURES,))],
            outputs=[
                Tensor(name="label", dtype=np.int64, shape=(1,)),
                Tensor(name="probabilities", dtype=np.float32, shape=(N_CLASSES,)),
            ],
            config=ModelConfig(max_batch_size=1024),
        )
        triton.bind(
            model_name="identity_fp32",
            infer_func=identity,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(IMAGE_FLOATS,))],
            outputs=[Tensor(name="output", dtype=np.float32, shape=(IMAGE_FLOATS,))],
            config=ModelConfig(max_batch_size=64),
        )
        triton.bind(
            model_name="mean_fp32",
            infer_func=mean,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(IMAGE_FLOATS,))],
            outputs=[Tensor(name="mean", dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=64),
        )
        triton.bind(
            model_name="echo_fp32",
            infer_func=identity,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="output", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=64),
        )
        print(f"triton_digits: serving {', '.join(MODELS)} on http {host}:{http_port} grpc {host}:{grpc_port}", flush=True)
        triton.serve()


class TritonDigits(ChildServer):
    """``python -m client.backends.triton_digits`` as a child process (see ``ChildServer``).

    Ready when the server and every model answer ready on HTTP; the child gets ``triton_env()``.
    """

    module = "client.backends.triton_digits"

    def __init__(
        self,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        host: str = "127.0.0.1",
        model_dir: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        args = ["--host", host, "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
        if model_dir:
            args += ["--model-dir", str(model_dir)]
        base = f"http://{host}:{http_port}"
        ready = [f"{base}/v2/health/ready", *(f"{base}/v2/models/{m}/ready" for m in MODELS)]
        super().__init__(args, ready, log_path=log_path, env=triton_env())

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.backends.triton_digits", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: only the sidecar reaches it)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-dir", type=Path, help="serve digits.pkl from this (unsealed, verified) directory instead of training")
    parser.add_argument("--workspace", type=Path, help="pytriton workspace (default: a temporary directory)")
    parser.add_argument("--save-model", type=Path, metavar="DIR", help="train, write DIR/digits.pkl and exit (input for `ratls model encrypt`)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.save_model:
        from .digits import save, train

        print(save(train(), args.save_model))
        return 0
    serve(args.http_port, args.grpc_port, args.metrics_port, args.host, args.model_dir, args.workspace, args.verbose)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
