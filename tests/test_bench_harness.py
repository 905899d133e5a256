"""The benchmark harness's pure pieces: config rendering, output parsing, goal evaluation, the report.

Nothing here times anything (speed goals live in bench/, measured against baselines in the same run).
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.suite import configs, report
from bench.suite.loadgen import LoadError, grpc_frame, parse_h2load, parse_wrk, percentile
from bench.suite.procs import parse_stat

WRK_OUT = """Running 5s test @ https://127.0.0.1:4443
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  312.00us  12.50ms   90.00%
  50000 requests in 5.00s, 60.00MB read
Requests/sec:  10000.00
BENCH_JSON {"requests":50000,"duration_us":5000000,"bytes":62914560,"errors":{"connect":0,"read":1,"write":0,"status":2,"timeout":0},"latency_us":{"p50":950,"p90":1300,"p99":2500,"max":12500,"mean":1020.5}}
"""

H2LOAD_OUT = """finished in 6.00s, 8000.00 req/s, 9.50MB/s
requests: 48010 total, 48010 started, 48010 done, 47990 succeeded, 20 failed, 0 errored, 0 timeout
status codes: 40000 2xx, 0 3xx, 20 4xx, 0 5xx
traffic: 47.50MB (49807360) total, 1.00MB (1048576) headers (space savings 30.00%), 46.00MB (48234496) data
"""


def test_parse_wrk_reads_the_json_line():
    r = parse_wrk(WRK_OUT)
    assert (r.requests, r.errors, r.seconds) == (49998, 3, 5.0)  # the 2 non-2xx answers are not throughput
    assert (r.p50_ms, r.p99_ms) == (0.95, 2.5)
    assert r.rps == pytest.approx(9999.6)
    assert r.extra["errors"]["status"] == 2


def test_parse_wrk_without_summary_is_an_error():
    with pytest.raises(LoadError):
        parse_wrk("Running 5s test @ http://x\nunable to connect to 127.0.0.1:1 Connection refused\n")


def test_parse_h2load_uses_the_measured_rate_and_the_log_percentiles():
    log = "".join(f"{1700000000000000 + i}\t200\t{(i + 1) * 1000}\n" for i in range(100)) + "1700000000000999\t404\t1\n"
    r = parse_h2load(H2LOAD_OUT, log)
    assert r.requests == 40000
    assert r.seconds == pytest.approx(5.0)  # 40000 good requests at 8000 req/s: the warm-up is not counted
    assert r.errors == 20
    assert r.p50_ms in (50.0, 51.0) and r.p99_ms == 99.0  # the 404 is not in the latency distribution
    assert r.bytes == 49807360


def test_parse_h2load_garbage_is_an_error():
    with pytest.raises(LoadError):
        parse_h2load("TLS handshake failed\n")


def test_percentile_edges():
    assert percentile([], 50) == 0.0
    assert percentile([1.0], 99) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 50) in (50.0, 51.0)


def test_parse_stat_handles_spaces_in_comm():
    line = "1234 (nginx: worker process) S 1200 1234 1234 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 1000000 300 " + " ".join(["0"] * 30)
    assert parse_stat(line) == (1200, 22, 300)


def test_grpc_frame():
    assert grpc_frame(b"ab") == b"\x00\x00\x00\x00\x02ab"
    assert grpc_frame(b"") == configs.GRPC_EMPTY_REPLY


def test_wrk_script_absolute_form_with_body(tmp_path):
    body = tmp_path / "b.bin"
    s = configs.wrk_script("http://bench-http/upload", host="bench-http", method="POST", body_file=body,
                           headers={"Content-Type": "application/octet-stream"})
    assert 'wrk.path = "http://bench-http/upload"' in s
    assert 'wrk.method = "POST"' in s
    assert f'io.open("{body}", "rb")' in s
    assert "BENCH_JSON" in s and "latency:percentile(99)" in s


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_script_is_valid_lua(tmp_path):
    """wrk loads the script before connecting and names the script in a Lua error: good scripts load silently."""
    body = tmp_path / "b.bin"
    body.write_bytes(b"x" * 10)
    for text in (configs.wrk_script("/1k"), configs.wrk_script("http://h/upload", host="h", method="POST", body_file=body)):
        script = tmp_path / "s.lua"
        script.write_text(text)
        p = subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), "http://127.0.0.1:9/"], capture_output=True, text=True, timeout=20)
        out = p.stdout + p.stderr
        assert "unable to connect" in out and str(script) not in out, out
    script.write_text("this is not lua")
    p = subprocess.run(["wrk", "-t1", "-c1", "-d1s", "-s", str(script), "http://127.0.0.1:9/"], capture_output=True, text=True, timeout=20)
    assert str(script) in p.stdout + p.stderr


def _nginx_ok(tmp_path: Path, text: str) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx not installed")
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    p = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_nginx_configs_render_and_pass_nginx_t(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    from bench.suite.env import write_tls

    tls = write_tls(tmp_path)
    cert, key, ca = tls["cert"], tls["key"], tls["ca"]
    backend = configs.nginx_backend(tmp_path, tmp_path, 18080, 18081)
    assert "listen 127.0.0.1:18081 http2" in backend and "add_trailer grpc-status 0" in backend
    _nginx_ok(tmp_path, backend)
    term = configs.nginx_tls_terminator(tmp_path, 2, cert, key, 18443, 18444, 18080, 18081)
    assert "worker_processes 2;" in term and "ssl_protocols TLSv1.3;" in term and "proxy_request_buffering off;" in term
    _nginx_ok(tmp_path, term)
    fwd = configs.nginx_forward(tmp_path, 1, 18000, 18443, ca, "bench.local")
    assert "proxy_ssl_verify on;" in fwd and "proxy_pass https://tls_up;" in fwd
    _nginx_ok(tmp_path, fwd)
    _nginx_ok(tmp_path, configs.nginx_grpc_tls(tmp_path, 1, cert, key, 18445, 18081))


def test_haproxy_config_renders_and_passes_check(tmp_path):
    from bench.suite.env import write_tls

    tls = write_tls(tmp_path)
    cfg = configs.haproxy_tls_terminator(3, tls["combined"], 18443, 18444, 18080, 18081)
    assert "nbthread 3" in cfg and "proto h2" in cfg
    haproxy = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if haproxy is None:
        pytest.skip("haproxy not installed")
    f = tmp_path / "h.cfg"
    f.write_text(cfg)
    p = subprocess.run([haproxy, "-c", "-f", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_tinyproxy_config():
    cfg = configs.tinyproxy_conf(18888, Path("/tmp/x.pid"))
    assert "Port 18888" in cfg and "Listen 127.0.0.1" in cfg and "Allow 127.0.0.1" in cfg


def _scenarios(sidecar_rps: float, nginx_rps: float) -> dict:
    sc = {"id": "tls-h1-1k-c16", "title": "t", "params": {}, "runs": [
        {"name": "sidecar", "role": "subject", "rps": sidecar_rps, "p50_ms": 1, "p99_ms": 2, "cpu_ms_per_req": 0.1, "errors": 0},
        {"name": "nginx", "role": "baseline", "rps": nginx_rps, "p50_ms": 1, "p99_ms": 2, "cpu_ms_per_req": 0.05, "errors": 0},
        {"name": "haproxy", "role": "baseline", "error": "RuntimeError: did not start", "rps": 0},
    ]}
    report.add_ratios(sc)
    mem = {"id": "pair-600k-c64", "title": "m", "runs": [], "memory": {
        "sidecar": {"idle_mb": 40.0, "peak_mb": 95.0, "after_mb": 45.0}, "proxy": {"idle_mb": 40.0, "peak_mb": 60.0, "after_mb": 70.0}}}
    return {"tls-h1-1k-c16": sc, "pair-600k-c64": mem, "grpc-600k": {"id": "grpc-600k", "title": "g", "skipped": "not installed: nginx", "runs": []}}


def test_goal_evaluation_met_missed_and_not_measured():
    scs = _scenarios(800.0, 1000.0)
    assert scs["tls-h1-1k-c16"]["runs"][0]["ratios"] == {"nginx": 0.8}
    by = {g.text: report.evaluate(g, scs) for g in report.GOALS}
    g = by["sidecar ≥ 1.0× nginx, 1 KB, h1 c16"]
    assert (g["measured"], g["met"], g["margin_pct"]) == (0.8, False, -20.0)
    assert by["sidecar < 80 MB RSS, 64 conns × 600 KB"]["met"] is False
    assert by["proxy < 80 MB RSS, 64 conns × 600 KB"]["met"] is True
    assert by["proxy back to its idle RSS (at start) after load (≤ +10 MB)"]["met"] is False  # 30 MB above idle
    assert by["sidecar back to its idle RSS (at start) after load (≤ +10 MB)"]["met"] is True
    grpc = by["gRPC 600 KB: pair ≥ 0.9× nginx grpc_pass"]
    assert grpc["met"] is None and "not installed" in grpc["note"]
    assert by["Triton 602 KB: pair ≥ 0.85× direct"]["met"] is None  # scenario absent: never "met"
    ok = report.evaluate(report.GOALS[0], _scenarios(1100.0, 1000.0))
    assert ok["met"] is True and ok["margin_pct"] == 10.0


def test_markdown_and_json_report(tmp_path):
    scs = _scenarios(800.0, 1000.0)
    goals = [report.evaluate(g, scs) for g in report.GOALS]
    meta = {"date": "2026-01-01 00:00 UTC", "machine": "2 cores (Test CPU)", "commit": "abc123", "command": "python bench/run.py",
            "duration_s": 5, "workers": 1, "tools": "nginx 1.22", "skips": {"proxy": "not available"}}
    md = report.markdown(scs, goals, meta)
    assert "2 cores (Test CPU)" in md and "`abc123`" in md
    assert "| sidecar ≥ 1.0× nginx, 1 KB, h1 c16 | 0.80× | 1.0× | **missed** (-20.0%) |" in md
    assert "haproxy | failed: RuntimeError: did not start" in md
    assert "skipped: not installed: nginx" in md
    report.write_json(tmp_path, scs, goals, meta)
    summary = json.loads((tmp_path / "suite-summary.json").read_text())
    assert summary["meta"]["commit"] == "abc123" and len(summary["goals"]) == len(report.GOALS)
    assert json.loads((tmp_path / "suite-tls-h1-1k-c16.json").read_text())["runs"][0]["ratios"] == {"nginx": 0.8}


def test_readme_block_is_replaced_between_its_markers_only():
    scs = _scenarios(800.0, 1000.0)
    goals = [report.evaluate(g, scs) for g in report.GOALS]
    meta = {"date": "2026-01-01 00:00 UTC", "machine": "2 cores (Test CPU)", "commit": "abc123", "duration_s": 3, "rounds": 3}
    section = report.readme_section(goals, meta)
    assert "2026-01-01 00:00 UTC, 2 cores (Test CPU), commit `abc123`" in section
    assert "| sidecar ≥ 1.0× nginx, 1 KB, h1 c16 | 0.80× | 1.0× | **missed** (-20.0%) |" in section
    text = f"# t\n\nbefore\n{report.README_BEGIN}\nold table\n{report.README_END}\nafter\n"
    new = report.update_readme(text, section)
    assert new.startswith("# t\n\nbefore\n") and new.endswith("\nafter\n") and "old table" not in new and section in new
    assert report.update_readme(new, section) == new  # idempotent
    assert report.update_readme("no markers here", section) == "no markers here"


def test_rounds_combine_to_the_lower_median_and_keep_every_rate():
    from bench.suite.runner import Spec, Suite

    spec = Spec("pair", "subject", list, list, group="wrk")
    rounds = [{"rps": 300.0, "errors": 1, "p50_ms": 2}, {"error": "LoadError: boom", "rps": 0}, {"rps": 100.0, "errors": 2, "p50_ms": 5}]
    out = Suite._combine(spec, rounds)
    assert out["rps"] == 100.0 and out["p50_ms"] == 5  # two good rounds: the lower one stands
    assert out["errors"] == 3 and out["rounds_rps"] == [300.0, 0, 100.0]
    assert out["round_errors"] == ["LoadError: boom"] and out["group"] == "wrk"
    failed = Suite._combine(spec, [{"error": "RuntimeError: x", "rps": 0}])
    assert failed["error"] == "RuntimeError: x"


def _scale(cores: int, rps: dict[str, float]) -> dict:
    runs = [{"name": n, "role": "subject" if n.startswith("sidecar") else "baseline", "rps": v, "gb_per_s": round(v * 614400 / 1e9, 3),
             "p50_ms": 1.0, "p99_ms": 2.0, "cpu_ms_per_req": 0.5, "errors": 0, "group": f"w{n.rsplit('w', 1)[1]}"} for n, v in rps.items()]
    sc = {"id": "scale-600k", "title": "s", "params": {"cores": cores}, "runs": runs}
    sc["scaling"] = {r["name"]: round(r["rps"] / rps["sidecar-w1"], 2) for r in runs if r["name"].startswith("sidecar-w")}
    return {"scale-600k": sc}


def test_gpu_machine_goals_are_judged_only_on_16_cores():
    by_text = {g.text: g for g in report.GOALS}
    scaling = by_text["16 cores: sidecar at 4 workers ≥ 3× 1 worker, 600 KB"]
    gbps = by_text["16 cores: sidecar ≥ 4 GB/s of 600 KB requests (8 workers)"]
    small = _scale(2, {"sidecar-w1": 1000.0, "nginx-w1": 1100.0, "sidecar-w2": 1500.0, "nginx-w2": 1900.0})
    for goal in (scaling, gbps):
        g = report.evaluate(goal, small)
        assert g["met"] is None and g["measured"] is None
        assert g["note"].startswith("not judged: needs 16 cores, this machine has 2")
        assert "sidecar-w2 0.92 GB/s = 1.5x" in g["note"]  # what 2 cores did measure is still shown
    big = _scale(16, {"sidecar-w1": 2000.0, "sidecar-w4": 6500.0, "sidecar-w8": 7000.0, "nginx-w1": 2500.0})
    g = report.evaluate(scaling, big)
    assert (g["measured"], g["met"]) == (3.25, True)
    g = report.evaluate(gbps, big)
    assert (g["measured"], g["met"], g["margin_pct"]) == (4.301, True, 7.5)
    slow = _scale(16, {"sidecar-w1": 2000.0, "sidecar-w4": 5000.0, "sidecar-w8": 6000.0})
    assert report.evaluate(scaling, slow)["met"] is False and report.evaluate(gbps, slow)["met"] is False
    missing = _scale(16, {"sidecar-w1": 2000.0, "sidecar-w4": 6500.0})
    assert report.evaluate(gbps, missing)["note"] == "not measured: sidecar-w8 did not run"
    md = "\n".join(report.goals_table([report.evaluate(gbps, big)]))
    assert "| 4.30 GB/s | 4.0 GB/s | met (+7.5%) |" in md


def test_scale_and_resnet_extras_in_the_markdown():
    scs = _scale(2, {"sidecar-w1": 1000.0, "nginx-w1": 1100.0})
    scs["resnet50-b8"] = {"id": "resnet50-b8", "title": "r", "device": {"device": "cuda:0", "dtype": "float16"}, "runs": [
        {"name": "direct", "role": "baseline", "rps": 250.0, "p50_ms": 60, "p99_ms": 90, "cpu_ms_per_req": None, "errors": 0,
         "images_per_s": 2000.0, "input_gb_per_s": 1.204}]}
    md = report.markdown(scs, [], {"date": "d", "machine": "m", "commit": "c", "command": "x", "duration_s": 1, "workers": 1, "tools": "t"})
    assert "GB/s of request bodies: sidecar-w1 0.614, nginx-w1 0.676" in md
    assert "speed-up over one sidecar worker: sidecar-w1 1.0×" in md
    assert "images/s: direct 2,000.0" in md and "GB/s of input tensors: direct 1.204" in md
    assert "model device: device cuda:0, dtype float16" in md


def test_resnet_request_body_is_a_kserve_binary_tensor(tmp_path):
    from bench.suite import resnet

    hlen = resnet.request_body(2, tmp_path / "b.bin")
    raw = (tmp_path / "b.bin").read_bytes()
    header = json.loads(raw[:hlen])
    (inp,) = header["inputs"]
    assert inp["name"] == "image" and inp["shape"] == [2, 3, 224, 224] and inp["datatype"] == "FP32"
    assert inp["parameters"]["binary_data_size"] == len(raw) - hlen == 2 * resnet.IMAGE_BYTES == 1_204_224
    assert header["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]


def test_resnet50_has_resnet50s_shape():
    torch = pytest.importorskip("torch")
    from bench.suite import resnet

    model = resnet.build()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # ResNet-50's parameter count
    with torch.inference_mode():
        out = model(torch.zeros(2, *resnet.IMAGE_SHAPE))
    assert out.shape == (2, resnet.CLASSES) and bool(torch.isfinite(out).all())


def test_resnet_scenarios_skip_with_the_reason_where_they_cannot_run(tmp_path):
    """Without CUDA (and without --resnet-device cpu) the GPU scenarios are skipped, each saying why; never measured."""
    from bench.suite.env import Env
    from bench.suite.runner import Suite

    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        torch, cuda = None, False
    if cuda:
        pytest.skip("a CUDA machine runs these scenarios for real")
    suite = Suite(Env(tmp_path), duration=1, warmup=0, only={"resnet50"})
    suite.resnet()
    assert sorted(suite.scenarios) == ["resnet50-b1", "resnet50-b32", "resnet50-b8"]
    for sc in suite.scenarios.values():
        why = sc["skipped"]
        if not suite.need("wrk", "nginx"):
            assert ("torch not importable" in why) if torch is None else why.startswith("no CUDA device")
        assert sc["runs"] == []
    suite.only = {"tls-h1"}
    suite.scenarios.clear()
    suite.resnet()
    assert suite.scenarios == {}  # not asked for: nothing recorded
