"""``ratls client`` on its own: the numbers it prints, its usage errors, failures counted not hidden."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from client.load import make_infer, run_load, summarize
from ratls.cli import main
from ratls.errors import Reason, UsageError


def test_summary_follows_intel_client_formula():
    s = summarize("tfs-grpc", "digits", cnum=2, batch=4, loop=5, latencies_ms=[float(v) for v in range(1, 11)], failed=0, e2e_s=2.0, correct=36)
    assert s.tps == pytest.approx(2 * 5 * 4 / 2.0)
    assert s.avg_ms == pytest.approx(5.5)
    assert s.p50_ms == pytest.approx(5.5)
    assert s.p99_ms == pytest.approx(np.percentile(np.arange(1, 11), 99))
    assert s.accuracy == pytest.approx(36 / 40)
    line = s.line()
    assert line.startswith("summary: cnum 2, batch 4, e2e time(s) 2.0000, average latency(ms) 5.50, ")
    assert line.endswith("tps: 20.0, accuracy 0.900")


def test_summary_counts_failed_queries_out_of_tps():
    s = summarize("tfs-rest", "m", cnum=1, batch=2, loop=4, latencies_ms=[1.0, 3.0], failed=2, e2e_s=1.0, first_error="HTTP 502: x")
    assert s.ok == 2 and s.failed == 2 and s.tps == pytest.approx(4.0)
    assert "failed 2 of 4 (first: HTTP 502: x)" in s.line()
    empty = summarize("tfs-rest", "m", 1, 1, 1, [], failed=1, e2e_s=0.5)
    assert math.isnan(empty.avg_ms) and empty.accuracy is None


def test_triton_http_refuses_a_proxy_and_says_to_use_a_map():
    with pytest.raises(UsageError) as e:
        make_infer("triton-http", "triton.svc:8000", "digits", "pixels", proxy="127.0.0.1:15001")
    assert e.value.reason is Reason.CONFIG_INVALID


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "x:1", "--batch", "0"],
        ["--url", "x:1", "--model", "resnet50"],  # unknown model without --input/--width
        ["--url", "x:1", "--kind", "triton-http", "--proxy", "127.0.0.1:1"],
    ],
)
def test_cli_usage_errors_exit_2(argv, capsys):
    assert main(["client", *argv]) == 2
    assert capsys.readouterr().err.startswith("ratls client: ")


def test_unreachable_service_fails_every_query_with_exit_1(free_port, capsys):
    port = free_port()
    assert main(["client", "--kind", "tfs-rest", "--url", f"127.0.0.1:{port}", "--no-proxy", "--loop", "2", "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert out.count("failed: ") == 2 and "failed 2 of 2" in out


def test_run_load_runs_cnum_tasks_of_loop_queries():
    calls = []

    def factory():
        def infer(x):
            calls.append(len(x))
            return {"label": np.zeros(len(x), np.int64)}

        return infer, lambda: None

    out = io.StringIO()
    s = run_load(factory, kind="tfs-grpc", model="digits", x=np.zeros((3, 64), np.float32), labels=np.array([0, 0, 1]),
                 cnum=4, loop=5, channel="test", out=out, progress=False)
    assert calls == [3] * 20 and s.ok == 20 and s.failed == 0
    assert s.accuracy == pytest.approx(2 / 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and all(ln.startswith("query: test, task ") and ", batch 3, loop_idx " in ln for ln in lines)
