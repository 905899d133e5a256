"""The README demo: a real Triton behind a sidecar (simulated TEE) and a client-side proxy; real
inference through the proxy with tritonclient (gRPC via ``http_proxy``, HTTP via the port map) and
``curl -x``; the handshake log line; one refusal; everything it started stopped at the end.

Run it with ``./scripts/demo`` (or ``.venv/bin/python -m client.demo``). ``--keep`` leaves the pair
running until Ctrl-C and prints commands to try. Files go under ``.ratls-demo/`` in the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from client.backends.process import REPO, ChildServer, free_port
from client.backends.process import RatlsProcess as Ratls
from client.backends.triton_digits import TritonDigits

HTTP_SERVICE = "triton.demo:8000"
GRPC_SERVICE = "triton.demo:8001"
#: the launch measurement the demo's simulated TEE reports (what a policy pins)
MEASUREMENT = hashlib.sha384(b"ratls demo: triton + sidecar image v1").hexdigest()
OTHER_MEASUREMENT = hashlib.sha384(b"ratls demo: some other image").hexdigest()

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 5


def title(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def show_cmd(cmd: list[str]) -> None:
    print(f"{DIM}$ {' '.join(cmd)}{RESET}", flush=True)


def pretty_handshake(event: dict) -> str:
    """The reviewer's view of one handshake log line: decision, steps, policy rules."""
    ok = event.get("decision") == "admit"
    mark = f"{GREEN}ADMIT{RESET}" if ok else f"{RED}REFUSE{RESET}"
    lines = [
        f"{mark} {event.get('target')} -> sidecar {event.get('sidecar')}  ({event.get('tls_version')}, {event.get('cipher')}, ALPN {event.get('alpn')})",
        f"  certificate sha256 {event.get('cert_sha256')}  evidence {event.get('evidence_type')}  cached {event.get('cached')}  "
        f"timings {event.get('timings_ms')}",
    ]
    for step in event.get("steps") or []:
        lines.append(f"  {'✓' if step.get('ok') else '✗'} {step.get('name'):<20} {step.get('detail', '')}")
    for rule in event.get("policy") or []:
        lines.append(f"  {'✓' if rule.get('ok') else '✗'} policy {rule.get('claim')}: expected {rule.get('expected')!r}, actual {rule.get('actual')!r}")
    if not ok:
        lines.append(f"  failed step: {event.get('failed_step')}  reason: {event.get('reason')}")
    return "\n".join(lines)


def read_events(path: Path, event: str) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("event") == event:
                out.append(rec)
    return out


def run_demo(workdir: Path, keep: bool = False) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.log"):
        stale.unlink()
    sim_dir = workdir / "sim"
    started: list[ChildServer] = []

    def start(server: ChildServer, what: str) -> ChildServer:
        print(f"starting {what} ...", flush=True)
        started.append(server)
        show_cmd(["python", "-m", server.module, *server.args])
        server.start()
        server.wait_ready(180)
        return server

    try:
        title("1. Triton Inference Server (the real tritonserver binary, model trained on scikit-learn's digits)")
        triton = TritonDigits(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=workdir / "triton.out")
        start(triton, "Triton on localhost (only the sidecar talks to it)")

        title("2. ratls sidecar (simulated TEE) in front of Triton")
        sc_port, sc_admin = free_port(), free_port()
        sidecar = Ratls("sidecar", ["sidecar", "--tee", "sim", "--sim-dir", str(sim_dir), "--sim-measurement", MEASUREMENT,
                                    "--listen", f"127.0.0.1:{sc_port}", "--http-backend", triton.http_url, "--grpc-backend", triton.grpc_url,
                                    "--admin", f"127.0.0.1:{sc_admin}", "--log", str(workdir / "sidecar.log")],
                        sc_admin, workdir / "sidecar.out")
        start(sidecar, "the sidecar: RA-TLS certificate carrying the simulated TEE's evidence")

        title("3. ratls proxy on the client's machine, with a policy naming sim and that measurement")
        policy = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT}
        (workdir / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
        print(f"policy.json: {json.dumps(policy)}")
        proxy_port, proxy_admin, map_port = free_port(), free_port(), free_port()
        proxy = Ratls("proxy", ["proxy", "--listen", f"127.0.0.1:{proxy_port}", "--route", f"{HTTP_SERVICE}=127.0.0.1:{sc_port}",
                                "--route", f"{GRPC_SERVICE}=127.0.0.1:{sc_port}", "--policy", str(workdir / "policy.json"),
                                "--map", f"127.0.0.1:{map_port}={HTTP_SERVICE}", "--sim-dir", str(sim_dir),
                                "--admin", f"127.0.0.1:{proxy_admin}", "--log", str(workdir / "proxy.log")],
                      proxy_admin, workdir / "proxy.out")
        start(proxy, "the proxy")
        proxy_url = f"http://127.0.0.1:{proxy_port}"

        from client.backends.digits import held_out

        x, y = held_out()
        x, y = x[:8], y[:8]

        title(f"4. tritonclient gRPC, configured only by http_proxy={proxy_url}")
        os.environ["http_proxy"] = proxy_url
        for k in ("grpc_proxy", "https_proxy", "no_proxy", "NO_PROXY"):
            os.environ.pop(k, None)
        import tritonclient.grpc as tg

        client = tg.InferenceServerClient(GRPC_SERVICE)
        inp = tg.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        labels = client.infer("digits", [inp]).as_numpy("label").ravel()
        client.close()
        print(f"tritonclient.grpc.InferenceServerClient({GRPC_SERVICE!r}).infer('digits', 8 held-out images)")
        print(f"  predicted {labels.tolist()}\n  true      {y.tolist()}")

        title(f"5. tritonclient HTTP through the port map 127.0.0.1:{map_port} -> {HTTP_SERVICE} (it ignores http_proxy)")
        import tritonclient.http as th

        hclient = th.InferenceServerClient(f"127.0.0.1:{map_port}")
        inp = th.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        hlabels = hclient.infer("digits", [inp]).as_numpy("label").ravel()
        hclient.close()
        print(f"  predicted {hlabels.tolist()}")

        title("6. curl -x through the proxy (KServe v2 JSON)")
        curl = shutil.which("curl")
        curl_ok = curl is None  # without curl this step is skipped, not failed
        body = json.dumps({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": x[:2].ravel().tolist()}],
                           "outputs": [{"name": "label"}]})
        if curl:
            cmd = [curl, "-sS", "-x", proxy_url, f"http://{HTTP_SERVICE}/v2/health/ready", "-o", "/dev/null", "-w", "%{http_code}\\n"]
            show_cmd(["curl", "-x", proxy_url, f"http://{HTTP_SERVICE}/v2/health/ready"])
            print("  HTTP", subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip())
            show_cmd(["curl", "-x", proxy_url, "-d", "'{\"inputs\": [{\"name\": \"pixels\", ...}]}'", f"http://{HTTP_SERVICE}/v2/models/digits/infer"])
            out = subprocess.run([curl, "-sS", "-x", proxy_url, "--data-binary", "@-", f"http://{HTTP_SERVICE}/v2/models/digits/infer"],
                                 input=body, capture_output=True, text=True, timeout=30)
            print(f"  {out.stdout.strip() or out.stderr.strip()}")
            with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                curl_labels = json.loads(out.stdout)["outputs"][0]["data"]
                curl_ok = [int(v) for v in curl_labels] == labels[:2].tolist()
        else:
            print("  (curl not installed: skipped)")

        title("7. The handshake log line (proxy.log: one JSON line per attested handshake)")
        time.sleep(0.2)
        events = read_events(workdir / "proxy.log", "handshake")
        if events:
            print(pretty_handshake(events[0]))
            print(f"\nthe line itself ({workdir / 'proxy.log'}):")
            print(json.dumps(events[0], separators=(",", ":")))
        else:
            print(f"{RED}  no handshake line in {workdir / 'proxy.log'}{RESET}")

        title("8. A refusal: a second proxy whose policy pins another measurement")
        bad_policy = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": OTHER_MEASUREMENT}
        (workdir / "policy-other.json").write_text(json.dumps(bad_policy, indent=2) + "\n")
        bad_port, bad_admin = free_port(), free_port()
        bad = Ratls("proxy-refusing", ["proxy", "--listen", f"127.0.0.1:{bad_port}", "--route", f"{HTTP_SERVICE}=127.0.0.1:{sc_port}",
                                       "--policy", str(workdir / "policy-other.json"), "--sim-dir", str(sim_dir),
                                       "--admin", f"127.0.0.1:{bad_admin}", "--log", str(workdir / "proxy-refusing.log")],
                    bad_admin, workdir / "proxy-refusing.out")
        start(bad, "a proxy with policy-other.json")
        import requests

        r = requests.post(f"http://{HTTP_SERVICE}/v2/models/digits/infer", data=body, proxies={"http": f"http://127.0.0.1:{bad_port}"}, timeout=30)
        print(f"  HTTP {r.status_code}: refused after the TLS handshake, before a request byte was relayed. Body:")
        with contextlib.suppress(ValueError):
            print("  " + json.dumps(r.json(), indent=2).replace("\n", "\n  "))
        refused = read_events(workdir / "proxy-refusing.log", "handshake")
        if refused:
            print(pretty_handshake(refused[-1]).split("\n")[0])

        correct = sum(int(a == b) for a, b in zip(labels.tolist(), y.tolist(), strict=True))
        checks = {"gRPC and HTTP answers agree": labels.tolist() == hlabels.tolist(),
                  f"{correct}/8 held-out digits right (at least 7)": correct >= 7,
                  "curl -x answered the inference": curl_ok, "the handshake was logged": bool(events),
                  "the other measurement was refused with a 502": r.status_code == 502}
        ok = all(checks.values())
        title("Done" + ("" if ok else " (with unexpected results, see above)"))
        for what, passed in checks.items():
            print(f"  {GREEN + '✓' if passed else RED + '✗'}{RESET} {what}")
        print(f"logs: {workdir}/proxy.log, sidecar.log; policy: {workdir}/policy.json")
        if keep:
            print(f"\nThe pair keeps running. Try:\n  curl -x {proxy_url} http://{HTTP_SERVICE}/v2/models/digits\n"
                  f"  http_proxy={proxy_url} .venv/bin/ratls client --kind triton-grpc --url {GRPC_SERVICE} --batch 8 --loop 20\n"
                  f"  .venv/bin/ratls client --kind triton-http --url 127.0.0.1:{map_port} --batch 8 --loop 20\n"
                  "Ctrl-C stops everything.")
            signal.pause()
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"\n{RED}demo failed: {type(e).__name__}: {e}{RESET}", file=sys.stderr)
        for s in started:
            if s.proc is not None and s.proc.poll() is not None:
                print(f"--- {s.log_path} ---\n{s.log_tail(15)}", file=sys.stderr)
        return 1
    finally:
        print("stopping everything the demo started ...", flush=True)
        # a second Ctrl-C must not cut the clean-up short and leave servers behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for s in reversed(started):
            s.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".ratls-demo", help="working directory (default .ratls-demo/)")
    parser.add_argument("--keep", action="store_true", help="keep the pair running until Ctrl-C")
    args = parser.parse_args(argv)

    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    return run_demo(args.dir, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
