"""Operating the proxy: SIGHUP reloads routes and policies, idle tunnels are closed, byte counters
move while a tunnel is open. Real proxy and sidecar (tests/pair.py), real sockets and clients."""

from __future__ import annotations

import json
import signal
import socket
import time

import grpc
import pytest
import requests

from tests.pair import pair, pattern, sim_policy, wait_for

pytestmark = pytest.mark.slow


def test_sighup_applies_a_new_policy_and_keeps_the_old_one_when_the_new_one_is_bad(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, mode="process") as p:
        proxies = {"http": p.proxy_url}
        url = f"http://{p.http_service}/hello"
        assert requests.get(url, proxies=proxies, timeout=10).status_code == 200
        good = p.policy_path.read_text()
        pid = p._procs["proxy"].pid

        def hup_andwait_for(event: str) -> dict:
            n = len(p.proxy_events(event))
            p._procs["proxy"].send_signal(signal.SIGHUP)
            wait_for(event, lambda: len(p.proxy_events(event)) > n)
            return p.proxy_events(event)[-1]

        # tighten: another measurement; the pooled connection must not carry on under the old verdict
        p.policy_path.write_text(json.dumps(sim_policy(b"\x42" * 48)))
        ev = hup_andwait_for("reloaded")
        assert ev["changed"] == sorted([p.http_service, p.grpc_service]) and ev["needs_restart"] == []
        r = requests.get(url, proxies=proxies, timeout=10)
        assert r.status_code == 502, r.text
        assert [f["claim"] for f in r.json()["failed"]] == ["x-ms-sevsnpvm-launchmeasurement"]
        # a policy that does not load: logged, the running (refusing) configuration stays
        p.policy_path.write_text("{}")
        ev = hup_andwait_for("reload-failed")
        assert "no rules" in ev["error"]
        assert p._procs["proxy"].poll() is None and p._procs["proxy"].pid == pid
        assert requests.get(url, proxies=proxies, timeout=10).status_code == 502
        # and back: admitted again, without a restart
        p.policy_path.write_text(good)
        hup_andwait_for("reloaded")
        assert requests.get(url, proxies=proxies, timeout=10).status_code == 200
        assert p.metric(p.proxy_admin_url, "ratls_proxy_errors_total", kind="reload") == 1


def _connect_tunnel(p) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10)
    s.sendall(f"CONNECT {p.http_service} HTTP/1.1\r\nHost: {p.http_service}\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    return s


def _get_through(s: socket.socket, service: str) -> bytes:
    s.sendall(f"GET /hello HTTP/1.1\r\nHost: {service}\r\n\r\n".encode())
    data = b""
    while b"hello from the backend" not in data:
        chunk = s.recv(4096)
        assert chunk, f"tunnel closed early: {data!r}"
        data += chunk
    return data


def test_an_idle_tunnel_is_closed_and_a_busy_one_is_not(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, proxy_options={"tunnel_idle_timeout": 1}) as p:
        busy, idle = _connect_tunnel(p), _connect_tunnel(p)
        try:
            _get_through(idle, p.http_service)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:  # the busy tunnel moves bytes every 0.3 s: more than the limit in all
                _get_through(busy, p.http_service)
                time.sleep(0.3)
            idle.settimeout(5)
            assert idle.recv(4096) == b"", "the idle tunnel was closed"
            assert b"200 OK" in _get_through(busy, p.http_service)
            closed = p.proxy_events("tunnel-closed")
            assert len(closed) == 1 and closed[0]["reason"] == "idle" and closed[0]["limit_s"] == 1
            assert p.metric(p.proxy_admin_url, "ratls_proxy_errors_total", kind="tunnel-idle") == 1
        finally:
            busy.close()
            idle.close()


def test_bytes_are_counted_while_a_grpc_channel_stays_open(tmp_path, grpc_backend):
    # pool idle 1 s: the proxy's sweep (which brings the counters up to date) runs every 0.25 s
    with pair(tmp_path, grpc_backend=grpc_backend.addr, proxy_options={"pool_idle_timeout": 1}) as p:
        opts = [("grpc.http_proxy", p.proxy_url), ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 1 << 22),
                ("grpc.max_receive_message_length", 1 << 22)]
        with grpc.insecure_channel(p.grpc_service, options=opts) as ch:
            payload = pattern(200_000)
            assert ch.unary_unary("/ratls.test.Echo/Echo")(payload, timeout=15) == payload

            def counted(direction: str) -> float:
                return p.metric(p.proxy_admin_url, "ratls_proxy_bytes_total", direction=direction)

            wait_for("the counters", lambda: counted("from_client") >= 200_000 and counted("to_client") >= 200_000)
            assert p.metric(p.proxy_admin_url, "ratls_proxy_client_connections") == 1, "the channel (tunnel) is still open"
            assert counted("to_sidecar") >= 200_000 and counted("from_sidecar") >= 200_000
        # closing adds only what was not counted yet: totals stay equal to what crossed, not doubled
        wait_for("the tunnel to close", lambda: p.metric(p.proxy_admin_url, "ratls_proxy_client_connections") == 0)
        assert counted("from_client") < 2 * 200_000


def test_a_policy_change_rechecks_open_tunnels_and_closes_those_it_no_longer_admits(tmp_path, http_backend):
    with pair(tmp_path, http_backend=http_backend.addr, mode="process") as p:
        first, second = _connect_tunnel(p), _connect_tunnel(p)
        try:
            for s in (first, second):
                _get_through(s, p.http_service)

            def hup_and_wait_for(event: str, count: int) -> list[dict]:
                n = len(p.proxy_events(event))
                p._procs["proxy"].send_signal(signal.SIGHUP)
                wait_for(event, lambda: len(p.proxy_events(event)) >= n + count)
                return p.proxy_events(event)[n:]

            # a new policy that still admits the sidecar (one more rule, which holds): both tunnels stay
            p.policy_path.write_text(json.dumps({**sim_policy(p.measurement), "x-ms-sevsnpvm-is-debuggable": False}))
            kept = hup_and_wait_for("tunnel-rechecked", 2)
            assert {e["decision"] for e in kept} == {"admit"} and len({e["conn_id"] for e in kept}) == 2
            assert p.proxy_events("reloaded")[-1]["tunnels_rechecked"] == 2
            assert b"200 OK" in _get_through(first, p.http_service)
            # tightened to another measurement: the open tunnels no longer pass, and are closed, saying why
            p.policy_path.write_text(json.dumps(sim_policy(b"\x42" * 48)))
            closed = hup_and_wait_for("tunnel-closed", 2)
            for s in (first, second):
                s.settimeout(10)
                assert s.recv(4096) == b"", "a tunnel the new policy refuses is closed"
            for ev in closed:
                assert ev["reason"] == "policy-changed" and ev["target"] == p.http_service
                assert [f["claim"] for f in ev["failed"]] == ["x-ms-sevsnpvm-launchmeasurement"]
                assert ev["failed"][0]["expected"] == ("42" * 48)
            assert p.metric(p.proxy_admin_url, "ratls_proxy_errors_total", kind="tunnel-policy") == 2
            # and a new CONNECT is refused before any tunnel exists
            s = socket.create_connection(("127.0.0.1", p.proxy_port), timeout=10)
            s.sendall(f"CONNECT {p.http_service} HTTP/1.1\r\nHost: {p.http_service}\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 502 ")
            s.close()
        finally:
            first.close()
            second.close()


def test_a_tunnel_whose_service_loses_its_route_is_closed_on_reload(tmp_path, http_backend):
    import copy

    with pair(tmp_path, http_backend=http_backend.addr) as p:  # in-process: reload() called as SIGHUP would
        s = _connect_tunnel(p)
        try:
            _get_through(s, p.http_service)
            cfg = copy.copy(p._proxy.cfg)
            cfg.routes = {k: r for k, r in cfg.routes.items() if r.service != p.http_service}
            p._lt.loop.call_soon_threadsafe(p._proxy.reload, cfg)
            wait_for("tunnel-closed", lambda: p.proxy_events("tunnel-closed"))
            (ev,) = p.proxy_events("tunnel-closed")
            assert ev["reason"] == "route-removed" and ev["target"] == p.http_service
            s.settimeout(10)
            assert s.recv(4096) == b""
        finally:
            s.close()
