"""The README demo runs to the end from this checkout and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def test_demo_runs_and_stops_everything(tmp_path):
    env = dict(os.environ)
    for k in ("http_proxy", "HTTP_PROXY", "grpc_proxy", "https_proxy", "no_proxy"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-m", "client.demo", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    predicted = [ln for ln in text.splitlines() if ln.strip().startswith("predicted ")]
    true = [ln for ln in text.splitlines() if ln.strip().startswith("true ")]
    assert len(predicted) == 2 and predicted[0].split("predicted")[1] == predicted[1].split("predicted")[1]
    assert predicted[0].split("predicted")[1].strip() == true[0].split("true")[1].strip()  # all 8 held-out digits right
    assert "HTTP 200" in text and '"model_name":"digits"' in text
    assert "ADMIT triton.demo:8001" in text and "REFUSE triton.demo:8000" in text and "HTTP 502" in text
    assert '"claim": "x-ms-sevsnpvm-launchmeasurement"' in text
    # the raw handshake log line, as a reviewer reads it in proxy.log
    raw = text.split("the line itself", 1)[1].splitlines()[1]
    line = json.loads(raw)
    assert line["event"] == "handshake" and line["decision"] == "admit" and line["evidence_type"] == "sim"
    assert line["steps"] and line["policy"] and line["cert_sha256"]
    assert "✗" not in text.split("== Done", 1)[1], "every closing check passed"
    # every server it started is gone (their command lines name the demo's directory or ports)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
