"""Byte relay on asyncio Protocols: the hot path of both the proxy and the sidecar.

One :class:`Endpoint` wraps one socket (plain or TLS). It is in one of three modes:

* ``BUFFER``: bytes accumulate in ``buf``; a coroutine awaits :meth:`Endpoint.wait_for` (heads,
  the HTTP/2 preface sniff). Reading pauses when the buffer passes its limit.
* ``FORWARD``: bytes go straight to another endpoint's transport, as many as a
  :class:`~proxy.http1.BodyFramer` says belong to the current body; the rest stays in ``buf`` and
  the endpoint falls back to ``BUFFER``. :meth:`forward` returns a future that completes then.
* ``TUNNEL``: every byte goes straight to the peer transport (CONNECT, port maps, the sidecar).

Bytes are never copied into Python buffers on the forward paths: ``data_received`` hands the
chunk it got to ``transport.write``. Back-pressure is transport-level: when the destination's
write buffer passes its high-water mark (``pause_writing``), the source stops reading until it
drains (``resume_writing``). Counters are plain ints the shells turn into metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .http1 import BodyFramer, Framing, HttpError

#: read-side buffer limit in BUFFER mode (heads, sniffing): past it, reading pauses until a
#: coroutine asks for more. Body bytes that arrive with a head wait here while the upstream is
#: chosen, so this bounds the memory of many concurrent uploads (64 x 600 KB: ~15 MB at 256 KB).
BUFFER_LIMIT = 64 * 1024
#: transport write buffer marks: what waits in write buffers grows with the connections carrying bulk
#: bodies, so half the earlier 512 KB; loopback throughput showed no loss even at 64 KB (noisy runs)
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
#: writes into a TLS transport go in slices of at most this: uvloop encrypts a whole write into its
#: outgoing BIO before sending any of it, and the BIO keeps that capacity for the connection's life
TLS_SLICE = 64 * 1024


#: a head and at most this many buffered body bytes are joined into one write
_COALESCE = 64 * 1024


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Mode:
    """An endpoint's mode (plain constants compared with ``is``, as :class:`proxy.http1.Framing`:
    checked on every ``data_received``)."""

    BUFFER = 0
    FORWARD = 1
    TUNNEL = 2


class Endpoint(asyncio.Protocol):
    """One side of a relay. See the module docstring for the modes."""

    def __init__(self, on_lost: Callable[[Endpoint], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.mode = Mode.BUFFER
        self.dst: Endpoint | None = None
        #: the endpoint currently writing into us (paused when our write buffer is full)
        self.feeder: Endpoint | None = None
        self.framer: BodyFramer | None = None
        self._done: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        #: the waiter's timeout, cancelled by whoever completes the waiter (no done-callback per wait)
        self._timer: asyncio.TimerHandle | None = None
        self.eof = False
        self.eof_sent = False
        self.closed = False
        self.exc: BaseException | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        #: what of bytes_in / bytes_out a metrics counter has been told already (see count_bytes)
        self.counted_in = 0
        self.counted_out = 0
        #: bytes both ways at the last idle check, and when they last moved (see idle_for)
        self._seen = -1
        self._moved_at = 0.0
        self._tls = False
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._on_lost = on_lost
        #: kept: in CPython 3.11 each ``asyncio.get_running_loop()`` costs a getpid() syscall
        self._loop = loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self._tls = transport.get_extra_info("sslcontext") is not None
        if not self.connected.done():
            self.connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        mode = self.mode
        if mode is Mode.TUNNEL:
            self.dst.write(data)  # type: ignore[union-attr]
            return
        if mode is Mode.FORWARD:
            try:
                n, done = self.framer.feed(data)  # type: ignore[union-attr]
            except HttpError as e:
                self._finish_forward(e)
                return
            if n:
                self.dst.write(data if n == len(data) else data[:n])  # type: ignore[union-attr]
            if done:
                if n < len(data):
                    self.buf += data[n:]
                self._finish_forward(None)
            return
        self.buf += data
        self._wake()
        if len(self.buf) > BUFFER_LIMIT:
            self.pause_reading()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.mode is Mode.TUNNEL and self.dst is not None:
            self.dst.half_close()
            if self.eof_sent:
                self.close()
        elif self.mode is Mode.FORWARD:
            try:
                self.framer.eof()  # type: ignore[union-attr]
                self._finish_forward(None)
            except HttpError as e:
                self._finish_forward(e)
        self._wake()
        # keep the write side open (half-close) where the transport can; TLS transports close instead
        t = self.transport
        return True if t is not None and t.can_write_eof() else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self.exc = exc
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("connection lost before it was made"))
        if self.mode is Mode.TUNNEL and self.dst is not None:
            self.dst.close()
        elif self.mode is Mode.FORWARD:
            if self.framer is not None and self.framer.framing is Framing.UNTIL_CLOSE:
                self.framer.eof()
                self._finish_forward(None)
            else:
                self._finish_forward(ConnectionError(f"connection closed mid-body ({exc or 'eof'})"))
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.feeder is not None and self.feeder.transport is not None:
            self.feeder.resume_reading()
        if self._on_lost is not None:
            self._on_lost(self)
        self._unlink()

    def _unlink(self) -> None:
        """Drop what ties this endpoint into reference cycles (transport <-> protocol, peer <->
        peer, callbacks, the exception's traceback). Otherwise each closed connection waits for a
        full GC pass, and with it its OpenSSL buffers (hundreds of KB, invisible to the GC's
        thresholds): the sidecar grew by ~40 MB per 64 connections of 600 KB bodies."""
        self.transport = None
        self.dst = None
        self.feeder = None
        self.framer = None
        self._on_lost = None
        self._waiter = None
        self._cancel_timer()
        self._drain = None
        if self.exc is not None:
            self.exc.__traceback__ = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.feeder is not None:
            self.feeder.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.feeder is not None:
            self.feeder.resume_reading()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- helpers ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        t = self.transport
        if not self.closed and t is not None:
            n = len(data)
            if self._tls and n > TLS_SLICE:
                view = memoryview(data)
                for off in range(0, n, TLS_SLICE):
                    t.write(view[off : off + TLS_SLICE])
            else:
                t.write(data)
            self.bytes_out += n

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = self._loop.create_future()
            await self._drain

    def half_close(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        self.eof_sent = True
        if t.can_write_eof():
            t.write_eof()
            if self.eof:
                t.close()
        else:  # TLS: no half-close in asyncio; closing flushes what is buffered
            t.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def idle_for(self, now: float) -> float:
        """Seconds (loop time) since bytes last moved through this endpoint either way, as seen by
        periodic calls: a sweep's granularity, at no cost per read on the relay path."""
        moved = self.bytes_in + self.bytes_out
        if moved != self._seen:
            self._seen, self._moved_at = moved, now
        return now - self._moved_at

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            self._cancel_timer()
            if not w.done():
                w.set_result(True)

    def _cancel_timer(self) -> None:
        t = self._timer
        if t is not None:
            self._timer = None
            t.cancel()

    def wait_for_data(self, timeout: float | None = None) -> asyncio.Future[bool]:
        """A future that completes with True when more bytes arrive in ``buf`` or the stream ends
        (BUFFER mode), or with False after ``timeout`` seconds.

        A plain function, not a coroutine: the waiter must exist *before* the caller yields, or
        bytes that arrive in between would be buffered with nobody woken. The timeout is a timer
        on the loop rather than ``asyncio.wait_for`` (a task per wait) because it runs per request.
        """
        loop = self._loop
        fut: asyncio.Future[bool] = loop.create_future()
        if self.eof or self.closed:
            fut.set_result(True)
            return fut
        self.resume_reading()
        self._waiter = fut
        self._cancel_timer()  # the last wait's, if it expired
        if timeout is not None:
            self._timer = loop.call_later(max(0.0, timeout), _expire, fut)
        return fut

    def take(self, n: int | None = None) -> bytes:
        """Remove and return the first ``n`` buffered bytes (all if None)."""
        if n is None:
            data = bytes(self.buf)
            self.buf.clear()
        else:
            data = bytes(self.buf[:n])
            del self.buf[:n]
        return data

    def _link(self, dst: Endpoint) -> None:
        self.dst = dst
        dst.feeder = self
        if dst._write_paused:
            self.pause_reading()

    def forward(self, framer: BodyFramer, dst: Endpoint, prefix: bytes = b"") -> asyncio.Future[None]:
        """Relay one body to ``dst``, after ``prefix`` (its message head); the future completes
        when the body ended (or fails with why). Head and the body bytes already buffered go out
        in one write: a small message costs one send, not two."""
        self._done = fut = self._loop.create_future()
        self._link(dst)
        self.framer = framer
        if self.buf:
            data = self.take()
            try:
                n, done = framer.feed(data)
            except HttpError as e:
                if prefix:
                    dst.write(prefix)
                fut.set_exception(e)
                return fut
            if prefix and n <= _COALESCE:
                dst.write(prefix + data[:n] if n < len(data) else prefix + data)
            else:
                if prefix:
                    dst.write(prefix)
                if n:
                    dst.write(data if n == len(data) else data[:n])
            prefix = b""
            if done:
                self.buf += data[n:]
                fut.set_result(None)
                return fut
        if prefix:
            dst.write(prefix)
        if framer.done:
            fut.set_result(None)
            return fut
        if self.eof:
            try:
                framer.eof()
                fut.set_result(None)
            except HttpError as e:
                fut.set_exception(e)
            return fut
        self.mode = Mode.FORWARD
        if not dst._write_paused:  # else the destination's resume_writing resumes us
            self.resume_reading()
        return fut

    def _finish_forward(self, exc: BaseException | None) -> None:
        self.mode = Mode.BUFFER
        fut = self._done
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def tunnel(self, dst: Endpoint) -> None:
        """Relay every byte to ``dst`` from now on (buffered bytes first)."""
        self._link(dst)
        if self.buf:
            dst.write(self.take())
        self.mode = Mode.TUNNEL
        if self.eof:
            dst.half_close()
        elif not dst._write_paused:
            self.resume_reading()


def sweep_period(*limits: float) -> float:
    """How often a periodic sweep runs to enforce these timeouts (0 = off): a quarter of the
    shortest, between 0.25 s and 15 s."""
    on = [t for t in limits if t > 0]
    return min(15.0, max(0.25, min(on) / 4)) if on else 15.0


def count_bytes(ep: Endpoint, counter_in: Any, counter_out: Any) -> None:
    """Add what ``ep`` moved since the last call to two Prometheus counters. Called from a periodic
    sweep and at close, so long-lived tunnels show their traffic while it flows, at no cost per read."""
    d_in, d_out = ep.bytes_in - ep.counted_in, ep.bytes_out - ep.counted_out
    if d_in:
        counter_in.inc(d_in)
        ep.counted_in = ep.bytes_in
    if d_out:
        counter_out.inc(d_out)
        ep.counted_out = ep.bytes_out


def splice(a: Endpoint, b: Endpoint) -> asyncio.Future[None]:
    """Tunnel both ways; the future completes when both sides are closed."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = {id(a), id(b)}

    def lost(ep: Endpoint) -> None:
        remaining.discard(id(ep))
        if not remaining and not done.done():
            done.set_result(None)

    for ep in (a, b):
        prev = ep._on_lost

        def chained(e: Endpoint, prev: Callable[[Endpoint], None] | None = prev) -> None:
            if prev is not None:
                prev(e)
            lost(e)

        ep._on_lost = chained
        if ep.closed:
            lost(ep)
    a.tunnel(b)
    b.tunnel(a)
    return done
