"""deploy/compose: the one-machine topology says what the Kubernetes pod says.

No Docker engine here, so the file is checked by parsing it (PyYAML resolves the ``<<`` merge keys
and anchors as Compose does) with Compose's ``${VAR:-default}`` interpolation and its override-file
merge rules, and every ``ratls`` command line in it is parsed by the real ``ratls`` parsers.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose"
SERVICES = {"sim-init", "keybroker", "unseal", "pod", "backend", "sidecar", "proxy"}
ONE_SHOT = {"sim-init", "unseal"}
RATLS_MODULE = {"sidecar": "sidecar.cli", "proxy": "proxy.cli", "keybroker": "keybroker.cli", "sim": "ratls.io.simdir"}
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}`` / ``${VAR:-default}`` substitution, recursively."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def merge_override(base: dict, override: dict) -> dict:
    """Compose's override merge: maps merge, sequences of volumes/devices/ports append, scalars replace."""
    out = dict(base)
    for k, v in override.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = merge_override(out[k], v)
        elif k in out and isinstance(out[k], list) and isinstance(v, list) and k in ("volumes", "devices", "ports", "secrets"):
            out[k] = out[k] + [x for x in v if x not in out[k]]
        else:
            out[k] = v
    return out


def load(*files: str, env: dict[str, str] | None = None) -> dict:
    doc: dict = {}
    for f in files:
        doc = merge_override(doc, yaml.safe_load((COMPOSE / f).read_text()))
    return interpolate(doc, env or {})


def ratls_args(service: dict) -> argparse.Namespace:
    """Parse a ratls service's command with the real subcommand parser."""
    argv = [str(a) for a in service["command"]]
    parser = argparse.ArgumentParser(prog="ratls")
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(RATLS_MODULE[argv[0]]).configure(sub.add_parser(argv[0]))
    return parser.parse_args(argv)


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yaml")


def test_services_and_start_order(compose):
    s = compose["services"]
    assert set(s) == SERVICES
    assert s["unseal"]["depends_on"]["keybroker"]["condition"] == "service_healthy"
    assert s["keybroker"]["depends_on"]["sim-init"]["condition"] == "service_completed_successfully"
    assert s["backend"]["depends_on"]["unseal"]["condition"] == "service_completed_successfully", "Triton starts only on unsealed models"
    assert s["sidecar"]["depends_on"]["backend"]["condition"] == "service_healthy"
    assert s["proxy"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    for name in ONE_SHOT:
        assert s[name]["restart"] == "no"
    for name in SERVICES - ONE_SHOT:
        assert "healthcheck" in s[name] or name == "pod", f"{name} has no healthcheck for depends_on to wait on"
    # every depends_on target exists, and there is no cycle
    order: list[str] = []

    def visit(n: str, path: tuple[str, ...] = ()) -> None:
        assert n not in path, f"depends_on cycle: {(*path, n)}"
        for dep in s[n].get("depends_on", {}):
            assert dep in s
            visit(dep, (*path, n))
        if n not in order:
            order.append(n)

    for n in s:
        visit(n)
    assert order.index("unseal") < order.index("backend") < order.index("sidecar") < order.index("proxy")


def test_models_only_on_tmpfs_written_by_unseal_read_by_backend(compose):
    s = compose["services"]
    vol = compose["volumes"]["models"]
    assert vol["driver_opts"]["type"] == "tmpfs" and vol["driver_opts"]["device"] == "tmpfs"
    assert "uid=10001" in vol["driver_opts"]["o"]
    users = {name: mounts(svc) for name, svc in s.items()}
    holders = {name: m for name, m in users.items() for target, (src, _) in m.items() if src == "models"}
    assert set(holders) == {"unseal", "backend"}
    unseal = ratls_args(s["unseal"])
    assert users["unseal"][unseal.out] == ("models", False)
    backend_cmd = s["backend"]["command"]
    model_dir = backend_cmd[backend_cmd.index("--model-dir") + 1]
    assert users["backend"][model_dir] == ("models", True)


def test_only_the_attested_port_and_the_local_proxy_are_published(compose):
    s = compose["services"]
    published = {name: svc["ports"] for name, svc in s.items() if svc.get("ports")}
    assert published == {"pod": ["8443:8443"], "proxy": ["127.0.0.1:15001:15001"]}
    for name in ("backend", "sidecar"):
        assert s[name]["network_mode"] == "service:pod", f"{name} must share the pod's network namespace"
        assert "networks" not in s[name]
    backend_cmd = s["backend"]["command"]
    assert backend_cmd[backend_cmd.index("--host") + 1] == "127.0.0.1"
    side = ratls_args(s["sidecar"])
    assert side.http_backend == f"127.0.0.1:{backend_cmd[backend_cmd.index('--http-port') + 1]}"
    assert side.grpc_backend == f"127.0.0.1:{backend_cmd[backend_cmd.index('--grpc-port') + 1]}"
    assert side.listen.endswith(":8443") and side.admin.startswith("127.0.0.1:")
    # the keybroker lives on the owner's network only; the unseal step is the only other member
    members = {n for n, svc in s.items() if "owner" in svc.get("networks", [])}
    assert members == {"keybroker", "unseal"}


def test_everything_runs_non_root_read_only_without_capabilities(compose):
    for name, svc in compose["services"].items():
        assert svc["user"] == "10001:10001", name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert not svc.get("privileged") and not svc.get("cap_add"), name


def test_ratls_commands_parse_and_agree(compose):
    from ratls.policy import parse_policy
    from ratls.sim import DEFAULT_MEASUREMENT

    s = compose["services"]
    kb, unseal, side, proxy = (ratls_args(s[n]) for n in ("keybroker", "unseal", "sidecar", "proxy"))
    assert unseal.sidecar_command == "unseal" and side.sidecar_command is None
    assert unseal.tee == side.tee == "sim"
    assert unseal.signer and not unseal.dangerous_allow_unsigned
    assert unseal.keybroker == f"http://keybroker:{kb.listen.rpartition(':')[2]}"
    assert kb.master_key == "/run/secrets/master_key" and s["keybroker"]["secrets"] == ["master_key"]
    assert compose["secrets"]["master_key"]["file"].startswith("./owner/")
    sim_dirs = {kb.sim_dir, unseal.sim_dir, side.sim_dir, proxy.sim_dir}
    assert len(sim_dirs) == 1 and all(mounts(s[n])["/var/run/ratls"][0] == "sim" for n in ("keybroker", "unseal", "sidecar", "proxy"))
    routes = dict(r.split("=", 1) for r in proxy.route)
    assert set(routes.values()) == {f"pod:{side.listen.rpartition(':')[2]}"}
    assert side.dns_name == [next(iter(routes)).rpartition(":")[0]]
    policy_file = COMPOSE / mounts(s["proxy"])[proxy.policy][0]
    text = policy_file.read_text()
    assert parse_policy(text) is not None
    assert yaml.safe_load(text)["x-ms-sevsnpvm-launchmeasurement"] == DEFAULT_MEASUREMENT.hex()
    assert ratls_args(s["sim-init"]).dir == Path(side.sim_dir)


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_tee_overrides_give_evidence_interfaces_to_unseal_and_sidecar_only(tee):
    doc = load("docker-compose.yaml", f"docker-compose.{tee}.yaml", env={"RATLS_TEE": tee})
    s = doc["services"]
    override = yaml.safe_load((COMPOSE / f"docker-compose.{tee}.yaml").read_text())
    assert set(override["services"]) == {"unseal", "sidecar"}
    for name in ("unseal", "sidecar"):
        assert ratls_args(s[name]).tee == tee
        assert mounts(s[name])["/sys/kernel/config"] == ("/sys/kernel/config", False)
        assert ("/dev/sev-guest:/dev/sev-guest" in s[name].get("devices", [])) == (tee == "snp")
    for name in SERVICES - {"unseal", "sidecar"}:
        assert "devices" not in s[name] and "/sys/kernel/config" not in mounts(s[name])
