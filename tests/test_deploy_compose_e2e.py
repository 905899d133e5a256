"""deploy/compose, run for real without Docker: the Compose file's own commands, in its own order.

Each service's command line (image entry point + ``command``, as the Dockerfile and the Compose
file give them) runs as a local process inside a network namespace made for this test, so the
file's fixed ports cannot collide with anything. Container paths are mapped to temporary
directories (``/models`` to a tmpfs directory under /dev/shm, as the tmpfs volume would be), the
service names ``keybroker`` and ``pod`` to 127.0.0.1. One-shot services must exit 0; the others
are waited for with the file's own healthcheck commands. The model owner's material is made with
the exact commands docs/deploy.md lists. Then a real Triton inference request goes through the
proxy, the attested TLS, the sidecar, to Triton serving the model the unseal step decrypted.

Needs root (``ip netns``) and the tritonserver of nvidia-pytriton; skips otherwise.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.test_deploy_compose import interpolate
from tests.test_deploy_images import final
from tests.test_multihost import in_netns, netns_unusable

pytestmark = [pytest.mark.slow, pytest.mark.triton]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"
IMAGES = ROOT / "deploy" / "images"
SIM_MEASUREMENT_HEX = "831934ec5791f1ea951e5f90d21bf7188453c0a0a50a8687b13236c9d716a646dbb1a1ac141fbd87aa40480c6985e064"


def _skip_reason() -> str | None:
    why = netns_unusable()
    if why:
        return why
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return "nvidia-pytriton (tritonserver) is not installed"
    if shutil.which("openssl") is None:
        return "openssl CLI not installed (docs/deploy.md uses it for the owner's signing key)"
    return None


def _pythonpath() -> str:
    """This checkout first, whatever the environment has installed (the processes run from a temporary cwd)."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def _owner_material(work: Path) -> None:
    """The owner's steps of docs/deploy.md ("One machine: Compose"), verbatim but for the paths."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": _pythonpath()}
    script = f"""
set -e
cd {work}
mkdir -p owner/bundles owner/store model
ratls keybroker new-master-key owner/master.key
openssl genpkey -algorithm ed25519 -out owner/owner.pem
openssl pkey -in owner/owner.pem -pubout -out owner/owner.pub.pem
python -m client.backends.triton_digits --save-model model
ratls model encrypt model -o owner/bundles/digits.bundle --key-out owner/digits.key --sign-key owner/owner.pem
cat > owner/release-policy.yaml <<'EOF'
x-ms-attestation-type: sim
x-ms-sevsnpvm-launchmeasurement: {SIM_MEASUREMENT_HEX}
EOF
ratls keybroker add-secret --store owner/store --master-key owner/master.key \\
    --id digits --secret-file owner/digits.key --policy owner/release-policy.yaml
"""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for line in script.strip().splitlines()[2:]:
        if line.startswith(("cat >", "x-ms", "EOF", "    --id")):
            continue
        assert line.replace(str(work), "").strip() in doc, f"docs/deploy.md no longer lists: {line}"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Runner:
    """Runs Compose services as processes in one network namespace."""

    def __init__(self, tmp: Path, models: Path) -> None:
        self.tmp = tmp
        self.ns = f"ratls-compose{os.getpid()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paths = {
            "/var/run/ratls": str(tmp / "sim-volume"),
            "/owner/store": str(tmp / "owner" / "store"),
            "/owner/bundles": str(tmp / "owner" / "bundles"),
            "/owner/owner.pub.pem": str(tmp / "owner" / "owner.pub.pem"),
            "/run/secrets/master_key": str(tmp / "owner" / "master.key"),
            "/policy/client-policy.yaml": str(COMPOSE / "client-policy.yaml"),
            "/models": str(models),
            "/tmp/pytriton": str(tmp / "pytriton"),
        }
        (tmp / "sim-volume").mkdir()
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True, capture_output=True)

    def rewrite(self, arg: str) -> str:
        for container_path, host_path in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            if arg == container_path or arg.startswith(container_path + "/"):
                return host_path + arg[len(container_path) :]
        return arg.replace("//keybroker:", "//127.0.0.1:").replace("=pod:", "=127.0.0.1:")

    def argv(self, svc: dict) -> list[str]:
        image = svc["image"]
        if "entrypoint" in svc:
            entry = list(svc["entrypoint"])
        else:
            dockerfile = "backend.Dockerfile" if "ratls-backend" in image else "ratls.Dockerfile"
            entry = final(IMAGES / dockerfile).ops("ENTRYPOINT")[-1].exec_form()
        entry = (
            [sys.executable, "-m", "ratls.cli"]
            if entry == ["ratls"]
            else [sys.executable if entry[0] == "python" else entry[0], *entry[1:]]
        )
        return entry + [self.rewrite(str(a)) for a in svc.get("command") or []]

    def env(self, svc: dict) -> dict[str, str]:
        image_env = {"RATLS_SIM_DIR": "/var/run/ratls/sim"} if "ratls-backend" not in svc["image"] else {}
        return {**os.environ, **{k: self.rewrite(v) for k, v in image_env.items()}, "HOME": str(self.tmp), "PYTHONPATH": _pythonpath()}

    def run_once(self, name: str, svc: dict) -> None:
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *self.argv(svc)], capture_output=True, text=True, env=self.env(svc),
                              cwd=self.tmp, timeout=120, check=False)  # fmt: skip
        assert proc.returncode == 0, f"one-shot service {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    def start(self, name: str, svc: dict) -> None:
        out = open(self.tmp / f"{name}.out", "ab")  # noqa: SIM115 - O_APPEND: --log /dev/stdout reopens this file
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.argv(svc)], stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env(svc), cwd=self.tmp, start_new_session=True)  # fmt: skip
        out.close()

    def wait_healthy(self, name: str, svc: dict, timeout: float = 90) -> None:
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD"
        cmd = [sys.executable if test[1] == "python" else test[1], *test[2:]]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, check=False).returncode == 0:
                return
            p = self.procs[name]
            if p.poll() is not None:
                break
            time.sleep(0.5)
        log = (self.tmp / f"{name}.out").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{name} never passed its healthcheck (exit {self.procs[name].poll()}):\n{log}")

    def close(self) -> None:
        for p in reversed(list(self.procs.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


def _order(services: dict) -> list[str]:
    order: list[str] = []

    def visit(n: str) -> None:
        for dep in services[n].get("depends_on", {}):
            visit(dep)
        if n not in order:
            order.append(n)

    for n in services:
        visit(n)
    return order


def test_compose_topology_serves_the_unsealed_model_through_the_proxy(tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    _owner_material(tmp_path)
    services = interpolate(yaml.safe_load((COMPOSE / "docker-compose.yaml").read_text()), {})["services"]
    models = Path(tempfile.mkdtemp(prefix="ratls-models-", dir="/dev/shm"))
    runner = Runner(tmp_path, models)
    try:
        for name in _order(services):
            svc = services[name]
            if svc.get("restart") == "no":
                runner.run_once(name, svc)
                if name == "unseal":
                    assert (models / "digits.pkl").exists(), "unseal did not decrypt the model into the tmpfs directory"
            else:
                runner.start(name, svc)
                if "healthcheck" in svc:
                    runner.wait_healthy(name, svc)

        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        rows = list(range(0, 200, 20))
        body = json.dumps({"inputs": [{"name": "pixels", "shape": [len(rows), 64], "datatype": "FP32", "data": x[rows].astype(float).ravel().tolist()}],
                           "outputs": [{"name": "label"}]}).encode()  # fmt: skip
        proxy_port = services["proxy"]["ports"][0].rsplit(":", 1)[1]
        service = next(r for r in services["proxy"]["command"] if str(r).startswith("inference.local:8000="))
        host = service.split("=")[0]

        def infer() -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", int(proxy_port), timeout=60)
            try:
                conn.request(
                    "POST", f"http://{host}/v2/models/digits/infer", body=body, headers={"Content-Type": "application/json", "Host": host}
                )
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read())
            finally:
                conn.close()

        status, answer = in_netns(runner.ns, infer)
        assert status == 200, answer
        labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        correct = sum(int(a) == int(b) for a, b in zip(labels, y[rows], strict=True))
        assert correct >= 8, f"the served model got {correct}/10 digits right: {labels} vs {list(y[rows])}"
        handshakes = [json.loads(line) for line in (tmp_path / "proxy.out").read_text().splitlines() if line.startswith("{")]
        assert any(e.get("event") == "handshake" and e.get("decision") == "admit" and e.get("evidence_type") == "sim" for e in handshakes)
    finally:
        runner.close()
        shutil.rmtree(models, ignore_errors=True)
