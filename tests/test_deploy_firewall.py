"""The pod firewall (``firewall.sh`` of the inference ConfigMap), run for real in a network namespace.

A "pod" namespace gets listeners on every port the pod uses, all bound to 0.0.0.0 on purpose (as
if Triton were misconfigured), then the script exactly as the firewall init container runs it. From
a "peer" namespace across a veth link: the sidecar's attested port and the admin port answer,
Triton's ports do not (dropped, not even refused); inside the pod, loopback still reaches Triton
(the sidecar's path); and connections the pod opens (unseal -> keybroker) still get their replies.

Needs root, ``ip`` and ``iptables``; skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from tests.test_deploy_kubernetes import TARGETS, container, one, pod_spec, render
from tests.test_multihost import in_netns, netns_unusable

pytestmark = pytest.mark.slow

POD_ADDR, PEER_ADDR = "169.254.20.2", "169.254.20.1"
TRITON_PORTS = (8000, 8001, 8002)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and iptables"
    missing = [t for t in ("ip", "iptables", "ip6tables") if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    return netns_unusable(["iptables", "-w", "-S"], ["ip6tables", "-w", "-S"])


def _listen(port: int, addr: str = "0.0.0.0") -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    return s


def _reach(addr: str, port: int) -> str:
    """'open', 'refused' or 'dropped' (no answer within a second)."""
    try:
        socket.create_connection((addr, port), timeout=1).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "dropped"


@pytest.mark.parametrize("target", ["base", "snp"])
def test_firewall_script_leaves_only_the_sidecar_ports_open(target, tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    docs = render(TARGETS[target])
    script = one(docs, "ConfigMap", "ratls-inference")["data"]["firewall.sh"]
    sidecar_ports = sorted(p["containerPort"] for p in container(pod_spec(docs), "sidecar")["ports"])
    (tmp_path / "firewall.sh").write_text(script)
    prefix = f"ratls-fw{os.getpid()}"
    pod, peer = f"{prefix}-pod", f"{prefix}-peer"
    sockets: list[socket.socket] = []
    try:
        for ns in (pod, peer):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        subprocess.run(
            ["ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", peer],
            check=True,
            capture_output=True,
        )
        for ns, addr in ((pod, POD_ADDR), (peer, PEER_ADDR)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", "eth0"], check=True, capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True, capture_output=True)
        sockets += in_netns(pod, lambda: [_listen(p) for p in (*sidecar_ports, *TRITON_PORTS)])
        sockets.append(in_netns(peer, lambda: _listen(7000, PEER_ADDR)))

        before = {p: in_netns(peer, lambda p=p: _reach(POD_ADDR, p)) for p in (*sidecar_ports, *TRITON_PORTS)}
        assert set(before.values()) == {"open"}, f"the listeners are not all reachable before the firewall: {before}"

        fw = container(pod_spec(docs), "firewall")
        proc = subprocess.run(
            ["ip", "netns", "exec", pod, fw["command"][0], str(tmp_path / "firewall.sh")], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr

        after = {p: in_netns(peer, lambda p=p: _reach(POD_ADDR, p)) for p in (*sidecar_ports, *TRITON_PORTS)}
        assert {p: after[p] for p in sidecar_ports} == dict.fromkeys(sidecar_ports, "open"), after
        assert {p: after[p] for p in TRITON_PORTS} == dict.fromkeys(TRITON_PORTS, "dropped"), after
        assert in_netns(pod, lambda: _reach("127.0.0.1", TRITON_PORTS[0])) == "open", "loopback (sidecar -> Triton) must stay open"
        assert in_netns(pod, lambda: _reach(PEER_ADDR, 7000)) == "open", (
            "replies to the pod's own connections (unseal -> keybroker) must pass"
        )
        rules = subprocess.run(["ip", "netns", "exec", pod, "iptables", "-S", "INPUT"], capture_output=True, text=True, check=True).stdout
        assert "-P INPUT DROP" in rules
    finally:
        for s in sockets:
            s.close()
        for ns in (pod, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
