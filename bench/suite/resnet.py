"""ResNet-50 with random weights in a real Triton (nvidia-pytriton): the GPU machine's model (issue 6, item 4).

Why random weights: the relay's load depends only on the tensor shapes (602,112 bytes of FP32 per
3x224x224 image in, 4 KB of logits out) and on how fast the GPU eats them, not on what the weights
say; nothing has to be downloaded onto a machine that cannot reach the network.

The network is written here (torchvision's v1.5 layout: stride on the 3x3 convolution) so that the
only dependency is torch itself. On CUDA it runs in fp16, channels-last, under inference mode; on a
CPU in fp32 (a smoke test of the scenario, not a measurement).

Run it: ``python -m bench.suite.resnet --http-port P --grpc-port Q --metrics-port M`` (blocks).
From the suite: ``TritonResNet(...).start()`` / ``wait_ready()``, as ``TritonDigits``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import numpy as np

from client.backends.process import ChildServer
from client.backends.triton_digits import triton_env

MODEL = "resnet50"
IMAGE_SHAPE = (3, 224, 224)
IMAGE_BYTES = 4 * 3 * 224 * 224  # 602,112
CLASSES = 1000
MAX_BATCH = 32


def build(seed: int = 0):
    """The ResNet-50 module (25.6 M parameters), randomly initialised from ``seed``, in eval mode."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, CLASSES)]
    return nn.Sequential(*layers).eval()


class Runner:
    """The model on one device: numpy batch in, numpy FP32 logits out."""

    def __init__(self, device: str = "auto") -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.device = torch, torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = build().to(self.device, self.dtype).to(memory_format=torch.channels_last)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()

    def warm(self, batches: tuple[int, ...] = (1, 8, MAX_BATCH)) -> None:
        """cuDNN picks its algorithms per shape on first use: do it before the clock starts."""
        for b in batches:
            self(np.zeros((b, *IMAGE_SHAPE), np.float32))

    def describe(self) -> dict:
        d = {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "torch": self.torch.__version__}
        if self.device.type == "cuda":
            d["gpu"] = self.torch.cuda.get_device_name(self.device)
        return d


def request_body(batch: int, path: Path, seed: int = 1) -> int:
    """Write a KServe v2 binary-tensor request for ``batch`` images to ``path``; returns the JSON header's length."""
    from .env import write_binary_tensor_request

    return write_binary_tensor_request(path, "image", [batch, *IMAGE_SHAPE], "logits", binary_output=True, seed=seed)


def serve(http_port: int, grpc_port: int, metrics_port: int, host: str = "127.0.0.1", device: str = "auto", instances: int = 2,
          info: Path | None = None) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    os.environ.update(triton_env())
    runner = Runner(device)
    runner.warm()
    if info:
        info.write_text(json.dumps(runner.describe()) + "\n")

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": runner(image)}

    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port, metrics_address=host,
                          metrics_port=metrics_port, allow_gpu_metrics=False, exit_timeout_secs=2)

    def _sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)
    with Triton(config=config) as triton:
        # several instances: one batch is copied in and out while another runs (torch drops the GIL in kernels)
        triton.bind(model_name=MODEL, infer_func=[infer] * instances,
                    inputs=[Tensor(name="image", dtype=np.float32, shape=IMAGE_SHAPE)],
                    outputs=[Tensor(name="logits", dtype=np.float32, shape=(CLASSES,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH))
        print(f"resnet: serving {MODEL} ({runner.describe()}) on http {host}:{http_port}", flush=True)
        triton.serve()


class TritonResNet(ChildServer):
    """``python -m bench.suite.resnet`` as a child process, ready when the model answers ready."""

    module = "bench.suite.resnet"

    def __init__(self, http_port: int, grpc_port: int, metrics_port: int, device: str = "auto", instances: int = 2,
                 log_path: Path | None = None, info: Path | None = None) -> None:
        self.http_port, self.info = http_port, info
        args = ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--device", device,
                "--instances", str(instances)]
        if info:
            args += ["--info", str(info)]
        base = f"http://127.0.0.1:{http_port}"
        super().__init__(args, [f"{base}/v2/health/ready", f"{base}/v2/models/{MODEL}/ready"], log_path=log_path, env=triton_env())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.suite.resnet", description=__doc__.split("\n")[0])
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cuda or cpu")
    p.add_argument("--instances", type=int, default=2, help="Triton model instances (default 2)")
    p.add_argument("--info", type=Path, help="write the device, dtype and torch version here as JSON once warm")
    a = p.parse_args(argv)
    serve(a.http_port, a.grpc_port, a.metrics_port, device=a.device, instances=a.instances, info=a.info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
