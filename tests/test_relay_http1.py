"""The sans-IO HTTP/1.1 framing (proxy/http1.py): heads, body boundaries, and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1 import (
    BodyFramer,
    Framing,
    HttpError,
    origin_form,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    upstream_head,
)


def test_head_needs_terminator_then_parses_with_size():
    raw = b"GET http://svc.test:8000/v2/health?x=1 HTTP/1.1\r\nHost: svc.test:8000\r\nProxy-Connection: keep-alive\r\n\r\nNEXT"
    assert parse_request_head(raw[:30]) is None
    req = parse_request_head(raw)
    assert req is not None and req.method == b"GET" and req.size == len(raw) - 4
    assert origin_form(req) == (b"svc.test", 8000, b"/v2/health?x=1")
    assert req.keep_alive


def test_origin_form_defaults_and_refusals():
    req = parse_request_head(b"GET http://Svc.Test HTTP/1.1\r\n\r\n")
    assert origin_form(req) == (b"svc.test", 80, b"/")
    for target in (b"/relative", b"https://svc.test/", b"http://user@svc.test/", b"http://svc.test:99999/"):
        with pytest.raises(HttpError) as e:
            origin_form(parse_request_head(b"GET " + target + b" HTTP/1.1\r\n\r\n"))
        assert e.value.status == 400


def test_upstream_head_drops_hop_by_hop_and_connection_listed_headers():
    req = parse_request_head(
        b"POST http://svc.test:8000/p HTTP/1.1\r\nHost: svc.test:8000\r\nConnection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 3\r\n\r\n"
    )
    head = upstream_head(req, b"/p", b"svc.test:8000")
    assert head.startswith(b"POST /p HTTP/1.1\r\n")
    assert b"X-Secret-Hop" not in head and b"Proxy-Authorization" not in head and b"Connection" not in head
    assert b"Content-Length: 3\r\n" in head and head.endswith(b"\r\n\r\n")


def test_host_added_when_missing():
    req = parse_request_head(b"GET http://svc.test:8000/ HTTP/1.0\r\n\r\n")
    assert b"Host: svc.test:8000\r\n" in upstream_head(req, b"/", b"svc.test:8000")
    assert not req.keep_alive  # HTTP/1.0 without keep-alive


def test_head_too_large_is_431():
    raw = b"GET http://a:1/ HTTP/1.1\r\nX: " + b"a" * 2000
    with pytest.raises(HttpError) as e:
        parse_request_head(raw, max_head=1024)
    assert e.value.status == 431


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://a:1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET http://a:1/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"GET http://a:1/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET http://a:1/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET http://a:1/ HTTP/1.1\r\n folded: x\r\n\r\n",
        b"GET http://a:1/ HTTP/2.0\r\n\r\n",
    ],
)
def test_smuggling_shapes_are_refused(head):
    with pytest.raises(HttpError) as e:
        req = parse_request_head(head)
        request_framing(req)
    assert e.value.status == 400


def test_unknown_transfer_coding_is_501():
    req = parse_request_head(b"POST http://a:1/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
    with pytest.raises(HttpError) as e:
        request_framing(req)
    assert e.value.status == 501


def test_length_body_boundary_and_leftover():
    f = BodyFramer(Framing.LENGTH, 5)
    assert f.feed(b"abc") == (3, False)
    assert f.feed(b"deGET") == (2, True)
    assert f.feed(b"more") == (0, True)


CHUNKED = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("split", [1, 2, 3, 7, len(CHUNKED)])
def test_chunked_boundary_in_any_split(split):
    f = BodyFramer(Framing.CHUNKED)
    data = CHUNKED + b"NEXT"
    used = 0
    for i in range(0, len(data), split):
        piece = data[i : i + split]
        n, done = f.feed(piece)
        used += n
        if done:
            break
    assert done and used == len(CHUNKED)


def test_chunked_errors_name_the_problem():
    for bad in (b"zz\r\n", b"4\r\nWikiXX", b"4\nWiki\r\n"):
        with pytest.raises(HttpError):
            BodyFramer(Framing.CHUNKED).feed(bad)
    f = BodyFramer(Framing.CHUNKED)
    f.feed(b"4\r\nWi")
    with pytest.raises(HttpError) as e:
        f.eof()
    assert "chunked" in e.value.detail


def test_response_framing_rules():
    def resp(raw):
        return parse_response_head(raw)

    assert response_framing(resp(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"), b"HEAD") == (Framing.NONE, 0)
    assert response_framing(resp(b"HTTP/1.1 204 No Content\r\n\r\n"), b"GET") == (Framing.NONE, 0)
    assert response_framing(resp(b"HTTP/1.1 100 Continue\r\n\r\n"), b"POST") == (Framing.NONE, 0)
    assert response_framing(resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), b"GET") == (Framing.CHUNKED, 0)
    assert response_framing(resp(b"HTTP/1.1 200 OK\r\n\r\n"), b"GET") == (Framing.UNTIL_CLOSE, 0)
    assert response_framing(resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"), b"GET") == (Framing.LENGTH, 7)
    f = BodyFramer(Framing.UNTIL_CLOSE)
    assert f.feed(b"abc") == (3, False)
    f.eof()
    assert f.done
    with pytest.raises(HttpError) as e:
        parse_response_head(b"HTTP/1.1 2000 What\r\n\r\n")
    assert e.value.status == 502


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_heads_give_result_or_http_error(data):
    for parse in (parse_request_head, parse_response_head):
        try:
            head = parse(data, 256)
            if head is not None and parse is parse_request_head:
                request_framing(head)
        except HttpError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_fuzz_chunked_never_over_consumes(data, split):
    f = BodyFramer(Framing.CHUNKED)
    try:
        for i in range(0, len(data), split):
            piece = data[i : i + split]
            n, done = f.feed(piece)
            assert 0 <= n <= len(piece)
            if done:
                break
    except HttpError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=6), st.integers(1, 17))
def test_chunked_roundtrip_of_encoded_bodies(chunks, split):
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    f = BodyFramer(Framing.CHUNKED)
    used, done = 0, False
    data = encoded + b"GET "
    for i in range(0, len(data), split):
        n, done = f.feed(data[i : i + split])
        used += n
        if done:
            break
    assert done and used == len(encoded)


def test_upgrade_is_kept_only_when_the_client_asks_for_it():
    req = parse_request_head(b"GET http://a:1/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n")
    head = upstream_head(req, b"/ws", b"a:1")
    assert b"Upgrade: websocket\r\n" in head and b"Connection: Upgrade\r\n" in head
    req = parse_request_head(b"GET http://a:1/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
    assert b"Upgrade" not in upstream_head(req, b"/", b"a:1")
