"""proxy/h2answer.py: an HTTP/2 client gets the reason of a refusal on every stream (sans-IO, with
``h2`` as the client), and the sidecar and the proxy's port map use it on real sockets with grpcio."""

from __future__ import annotations

import json
import time
import urllib.parse

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.h2answer import GRPC_PERMISSION_DENIED, GRPC_UNAVAILABLE, H2Answer, grpc_message
from tests.pair import GrpcEchoBackend, free_port, grpc_echo, pair

BODY = {"error": "backend 127.0.0.1:1 unreachable: refused", "service": "127.0.0.1:1", "step": "backend-connect",
        "reason": "backend-unreachable", "failed": [{"claim": "x-ms-é", "expected": "a", "actual": "b"}]}


def _client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    return c


def _request(c: h2.connection.H2Connection, grpc_call: bool, body: bytes = b"\x00\x00\x00\x00\x02hi") -> int:
    sid = c.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "svc:8001"), (":path", "/pkg.Svc/Call")]
    headers.append(("content-type", "application/grpc") if grpc_call else ("content-type", "application/json"))
    c.send_headers(sid, headers)
    c.send_data(sid, body, end_stream=True)
    return sid


def _events(c: h2.connection.H2Connection, data: bytes) -> list[h2.events.Event]:
    return c.receive_data(data)


def test_grpc_calls_get_trailers_only_with_the_reason_and_http_calls_the_json():
    ans = H2Answer(BODY, http_status=502, grpc_status=GRPC_UNAVAILABLE)
    c = _client()
    s1 = _request(c, grpc_call=True)
    s3 = _request(c, grpc_call=False)
    evs = _events(c, ans.receive(c.data_to_send()))
    heads = {e.stream_id: dict(e.headers) for e in evs if isinstance(e, h2.events.ResponseReceived)}
    data = {e.stream_id: e.data for e in evs if isinstance(e, h2.events.DataReceived)}
    ended = {e.stream_id for e in evs if isinstance(e, h2.events.StreamEnded)}
    assert ended == {s1, s3}, "every stream gets its answer"
    g = heads[s1]
    assert g[":status"] == "200" and g["content-type"] == "application/grpc" and g["grpc-status"] == str(GRPC_UNAVAILABLE)
    assert json.loads(urllib.parse.unquote(g["grpc-message"])) == BODY
    assert heads[s3][":status"] == "502" and json.loads(data[s3]) == BODY
    assert ans.answered == 2 and ans.idle
    goaway = [e for e in _events(c, ans.close()) if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].last_stream_id == s3 and ans.closed


def test_a_stream_still_sending_keeps_the_answer_busy_until_it_ends():
    ans = H2Answer(BODY, http_status=502, grpc_status=GRPC_PERMISSION_DENIED)
    c = _client()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/x"), ("content-type", "application/grpc")])
    c.send_data(sid, b"\x00" * 1000)
    ans.receive(c.data_to_send())
    assert ans.answered == 1 and not ans.idle
    c.send_data(sid, b"\x00" * 10, end_stream=True)
    ans.receive(c.data_to_send())
    assert ans.idle


def test_grpc_message_is_percent_encoded_ascii():
    enc = grpc_message('{"a": "é%"}')
    assert enc.isascii() and "%C3%A9" in enc and "%25" in enc
    assert urllib.parse.unquote(enc) == '{"a": "é%"}'


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data):
    ans = H2Answer(BODY, http_status=502, grpc_status=GRPC_UNAVAILABLE)
    out = ans.receive(data)
    assert isinstance(out, bytes)
    ans.receive(b"more")
    assert isinstance(ans.close(), bytes)


# -- on real sockets, with grpcio ----------------------------------------------------------------


@pytest.mark.slow
def test_sidecar_with_its_grpc_backend_down_answers_unavailable_with_the_reason(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    with pair(tmp_path, grpc_backend=dead) as p:
        with pytest.raises(grpc.RpcError) as e:
            grpc_echo(p.grpc_service, b"ping", proxy_url=p.proxy_url, timeout=15)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        reason = json.loads(e.value.details())
        assert reason["step"] == "backend-connect" and reason["reason"] == "backend-unreachable" and dead in reason["error"]
        deadline = time.monotonic() + 10  # the connection's log line comes when the sidecar closes it (after a linger)
        while not (conns := [c for c in p.sidecar_events("connection") if c["alpn"] == "h2"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert conns and conns[-1]["result"] == "backend-unreachable"


@pytest.mark.slow
def test_refused_sidecar_behind_a_port_map_answers_grpc_with_the_failed_claim(tmp_path):
    backend = GrpcEchoBackend()
    try:
        policy = {"x-ms-attestation-type": "sim", "x-ms-sevsnpvm-launchmeasurement": "ab" * 48}
        with pair(tmp_path, grpc_backend=backend.addr, policy=policy, maps=["inference.test:8001"]) as p:
            with pytest.raises(grpc.RpcError) as e:
                grpc_echo(f"127.0.0.1:{p.map_ports['inference.test:8001']}", b"ping", timeout=15)
            assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
            reason = json.loads(e.value.details())
            assert reason["step"] == "policy"
            assert [f["claim"] for f in reason["failed"]] == ["x-ms-sevsnpvm-launchmeasurement"]
            assert backend.calls == 0, "the refused service got nothing"
    finally:
        backend.stop()
