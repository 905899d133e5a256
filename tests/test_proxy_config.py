"""``ratls proxy`` configuration: command line, YAML with per-route policies, and clear refusals."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from proxy import cli as pcli
from ratls.errors import Reason, UsageError
from tests.pair import REPO


def build(argv):
    parser = argparse.ArgumentParser()
    pcli.configure(parser)
    return pcli.build_config(parser.parse_args(argv))


def test_routes_policies_and_maps_from_yaml_and_command_line(tmp_path):
    (tmp_path / "default.json").write_text(json.dumps({"x-ms-attestation-type": "sim"}))
    (tmp_path / "strict.yaml").write_text("x-ms-attestation-type: sevsnpvm\nx-ms-sevsnpvm-is-debuggable: false\n")
    conf = tmp_path / "proxy.yaml"
    conf.write_text(
        "listen: 127.0.0.1:0\npolicy: default.json\nroutes:\n"
        "  - {service: 'a.test:8000', sidecar: '10.0.0.1:8443', policy: strict.yaml}\n"
        "  - {service: 'b.test:8001', sidecar: '10.0.0.2:8443', policy: {x-ms-attestation-type: tdxvm}}\n"
        "  - 'c.test:80=10.0.0.3:8443'\n"
        "maps: ['127.0.0.1:0=a.test:8000']\n"
    )
    cfg = build(["--config", str(conf), "--route", "D.test:9000=10.0.0.4:8443", "--idle-timeout", "7"])
    assert cfg.routes[("a.test", 8000)].policy.rules == {"x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": False}
    assert cfg.routes[("b.test", 8001)].policy.rules == {"x-ms-attestation-type": "tdxvm"}
    assert cfg.routes[("c.test", 80)].policy.rules == {"x-ms-attestation-type": "sim"}  # the file's default policy
    assert cfg.routes[("d.test", 9000)].sidecar == ("10.0.0.4", 8443)  # service names are case-insensitive
    assert cfg.maps == [(("127.0.0.1", 0), "a.test:8000")]
    assert cfg.idle_timeout == 7.0


def test_route_without_policy_stays_configured_but_has_none(tmp_path):
    cfg = build(["--route", "a.test:80=127.0.0.1:1"])
    assert cfg.routes[("a.test", 80)].policy is None


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no routes
        ["--route", "a.test:80"],  # no '='
        ["--route", "a.test=127.0.0.1:1"],  # no port
        ["--route", "a.test:80=127.0.0.1:1", "--map", "127.0.0.1:0=b.test:80"],  # map to an unrouted service
        ["--route", "a.test:80=127.0.0.1:1", "--route", "a.test:80=127.0.0.1:2"],  # duplicate
    ],
)
def test_bad_configuration_is_a_usage_error(argv):
    with pytest.raises(UsageError) as e:
        build(argv)
    assert e.value.reason is Reason.CONFIG_INVALID


def test_bad_policy_file_is_a_policy_error(tmp_path):
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(UsageError) as e:
        build(["--route", "a.test:80=127.0.0.1:1", "--policy", str(tmp_path / "p.json")])
    assert e.value.reason is Reason.POLICY_INVALID


def test_console_script_exit_code_2_with_one_line_reason(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ratls.cli", "proxy", "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("ratls proxy:") and "no routes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
