"""Answer an HTTP/2 (gRPC) client with an error, sans-IO: bytes in, bytes out.

Where the relay can only tunnel HTTP/2 (the proxy's port maps, the sidecar's ``h2`` ALPN), a refusal
or a dead backend used to be a closed connection, which a gRPC client reports as a bare
``UNAVAILABLE`` with no reason. :class:`H2Answer` speaks just enough HTTP/2 (the ``h2`` state
machine) to answer every request stream the client opens: gRPC requests get a trailers-only
response whose ``grpc-status`` and ``grpc-message`` carry the reason (the message is the same JSON
body an HTTP/1.1 client would get); other requests get the HTTP status with that JSON body. Every
stream the client opens is answered (concurrent calls all get the reason, none is left to a
retry); :meth:`H2Answer.close` then says GOAWAY.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

#: gRPC status codes (grpc/doc/statuscodes.md)
GRPC_PERMISSION_DENIED = 7
GRPC_UNAVAILABLE = 14


def grpc_message(text: str) -> str:
    """``grpc-message`` encoding: percent-encode everything outside printable ASCII and ``%``."""
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


class H2Answer:
    """Server side of an HTTP/2 connection that answers each request with one error.

    ``receive(data)`` returns the bytes to send (the server preface first). ``idle`` is true while
    no request is half-way (every opened stream answered and ended by the client): the caller may
    then :meth:`close` (GOAWAY) and drop the connection. Malformed HTTP/2 gives a GOAWAY and
    ``closed``, never an exception.
    """

    def __init__(self, body: dict[str, Any], *, http_status: int, grpc_status: int) -> None:
        self.body = json.dumps(body, default=str, separators=(",", ":")).encode()
        self.http_status = http_status
        self.grpc_status = grpc_status
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self._conn.initiate_connection()
        self._open: set[int] = set()
        self._last = 0
        self.closed = False
        self.answered = 0

    @property
    def idle(self) -> bool:
        return not self._open

    def receive(self, data: bytes) -> bytes:
        if self.closed:
            return b""
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            self._open.clear()
            return self._conn.data_to_send()
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._answer(ev.stream_id, dict(ev.headers or ()))
            elif isinstance(ev, h2.events.DataReceived):
                # the request body is not wanted; keep the window open so the client can finish sending it
                self._conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                self._open.discard(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.closed = True
                self._open.clear()
        return self._conn.data_to_send()

    def close(self) -> bytes:
        """GOAWAY naming the last stream answered (nothing after it was processed)."""
        if self.closed:
            return b""
        self.closed = True
        self._conn.close_connection(last_stream_id=self._last)
        return self._conn.data_to_send()

    def _answer(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        if headers.get(b"content-type", b"").startswith(b"application/grpc"):
            out = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", str(self.grpc_status)),
                   ("grpc-message", grpc_message(self.body.decode()))]
            self._conn.send_headers(stream_id, out, end_stream=True)
        else:
            out = [(":status", str(self.http_status)), ("content-type", "application/json"), ("content-length", str(len(self.body)))]
            self._conn.send_headers(stream_id, out)
            self._conn.send_data(stream_id, self.body, end_stream=True)
        self.answered += 1
        self._last = max(self._last, stream_id)
        stream = self._conn.streams.get(stream_id)
        if stream is not None and not stream.closed:  # the client is still sending its request body
            self._open.add(stream_id)


async def answer_h2(ep: Any, answer: H2Answer, *, linger: float = 1.0, limit: float = 30.0) -> None:
    """Drive ``answer`` over a :class:`~proxy.relay.Endpoint` (BUFFER mode): answer every request
    until the client has been idle for ``linger`` seconds (or ``limit`` passed), then GOAWAY."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not ep.closed and not answer.closed:
        if ep.buf:
            out = answer.receive(ep.take())
            if out:
                ep.write(out)
        if ep.eof:
            break
        wait = min(deadline - loop.time(), linger if answer.idle and answer.answered else deadline - loop.time())
        if wait <= 0 or not await ep.wait_for_data(wait):
            break
    if not ep.closed:
        ep.write(answer.close())
        ep.close()
