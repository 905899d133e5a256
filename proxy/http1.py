"""Sans-IO HTTP/1.1 framing for a relaying proxy: message heads and body boundaries, no sockets.

A relaying proxy does not need to understand bodies, only where they end, so that a keep-alive
connection can carry the next message and an upstream connection can go back to the pool. This
module therefore has two parts, in the h11 style (bytes in, events out, never a socket):

* :func:`parse_request_head` / :func:`parse_response_head`: find and parse a complete head in a
  buffer, or say that more bytes are needed. Heads are small, so they are parsed whole.
* :class:`BodyFramer`: told the framing of a body (length, chunked, until-close, none), it is fed
  the bytes that follow the head and answers how many of them belong to this body and whether the
  body ended. Body bytes are counted, never copied: chunk *data* is skipped by arithmetic, only chunk
  size lines and trailers are scanned (the hot path does no per-byte Python work).

Bad bytes raise :class:`HttpError` with the status a proxy should answer (400, 431, 501, 502);
nothing else escapes on hostile input (tests/test_relay_http1.py fuzzes this).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: default limit on a message head (request line + headers); over it: 431
MAX_HEAD = 64 * 1024
#: limit on one chunk-size line or trailer line
MAX_LINE = 8 * 1024

#: RFC 9110 token characters (method names, header names)
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(rb"^" + _TCHAR + rb"+$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,16})[ \t]*(;.*)?$")
_VERSION = re.compile(rb"^HTTP/1\.[01]$")
HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate", b"te", b"trailer", b"upgrade"}
)


class HttpError(Exception):
    """The peer's bytes are not HTTP/1.1 we can relay; ``status`` is what to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Head:
    """A parsed request or response head. ``headers`` keeps order and original case."""

    start: tuple[bytes, bytes, bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: bytes the head occupied in the buffer, terminator included
    size: int = 0
    #: lower-cased name -> values, built once (framing and hop-by-hop checks look names up often)
    index: dict[bytes, list[bytes]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.index:
            for k, v in self.headers:
                self.index.setdefault(k.lower(), []).append(v)

    def get(self, name: bytes) -> bytes | None:
        values = self.index.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: bytes) -> list[bytes]:
        return self.index.get(name.lower(), [])

    def tokens(self, name: bytes) -> list[bytes]:
        """Comma-separated tokens of every ``name`` header, lower-cased (Connection, Transfer-Encoding)."""
        values = self.index.get(name.lower())
        if not values:  # the usual case (asked ~7 times per proxied request, mostly for absent headers)
            return []
        return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


@dataclass
class Request(Head):
    @property
    def method(self) -> bytes:
        return self.start[0]

    @property
    def target(self) -> bytes:
        return self.start[1]

    @property
    def version(self) -> bytes:
        return self.start[2]

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens(b"connection") + self.tokens(b"proxy-connection")
        if self.version == b"HTTP/1.0":
            return b"keep-alive" in conn
        return b"close" not in conn


@dataclass
class Response(Head):
    @property
    def version(self) -> bytes:
        return self.start[0]

    @property
    def status(self) -> int:
        return int(self.start[1])

    @property
    def keep_alive(self) -> bool:
        conn = self.tokens(b"connection")
        if self.version == b"HTTP/1.0":
            return b"keep-alive" in conn
        return b"close" not in conn


def _split_head(buf: bytes | bytearray, max_head: int) -> tuple[list[bytes], int] | None:
    end = buf.find(b"\r\n\r\n", 0, max_head + 4)
    if end < 0:
        if len(buf) > max_head:
            raise HttpError(431, f"message head larger than {max_head} bytes")
        return None
    if end > max_head:
        raise HttpError(431, f"message head larger than {max_head} bytes")
    block = bytes(buf[:end])
    # one scan of the whole head instead of three per header: a CR or LF outside CRLF, or a NUL
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf or b"\x00" in block:
        raise HttpError(400, "control character (bare CR or LF, or NUL) in the message head")
    return block.split(b"\r\n"), end + 4


#: ``name: value`` with a token name and no leading whitespace (folding); leading OWS dropped here,
#: trailing OWS by the caller (a lazy ``(.*?)[ \t]*`` backtracks at every byte of the value: callgrind
#: put that regex at 15% of the proxy's instructions per 1 KB request)
_HEADER_LINE = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*(.*)")


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    match = _HEADER_LINE.fullmatch
    for line in lines:
        m = match(line)
        if m is None:
            if not line or line[0] in b" \t":
                raise HttpError(400, "obsolete header line folding is not accepted")
            raise HttpError(400, f"malformed header line {line[:60]!r}")
        name, value = m.groups()
        if value and value[-1] in b" \t":
            value = value.rstrip(b" \t")
        out.append((name, value))
    return out


def parse_request_head(buf: bytes | bytearray, max_head: int = MAX_HEAD) -> Request | None:
    """A complete request head at the start of ``buf``, or None if more bytes are needed."""
    split = _split_head(buf, max_head)
    if split is None:
        return None
    lines, size = split
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line received before the request-line.
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] or not _VERSION.match(parts[2]):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    return Request((parts[0], parts[1], parts[2]), _headers(lines[1:]), size)


def parse_response_head(buf: bytes | bytearray, max_head: int = MAX_HEAD) -> Response | None:
    """A complete response head at the start of ``buf``, or None if more bytes are needed."""
    split = _split_head(buf, max_head)
    if split is None:
        return None
    lines, size = split
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not _VERSION.match(parts[0]) or len(parts[1]) != 3 or not parts[1].isdigit():
        raise HttpError(502, f"malformed status line {lines[0][:80]!r}")
    reason = parts[2] if len(parts) == 3 else b""
    return Response((parts[0], parts[1], reason), _headers(lines[1:]), size)


class Framing:
    """How a body is delimited: plain constants, compared with ``is``. Not an ``enum.Enum``: on
    Python 3.11 each member lookup goes through ``EnumType.__getattr__`` (4x a class attribute;
    callgrind: ~4% of the proxy's instructions per 1 KB request across the framing and relay modes)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def _content_length(head: Head, status_on_error: int) -> int | None:
    values = head.get_all(b"content-length")
    if not values:
        return None
    seen = {v.strip() for v in b",".join(values).split(b",")}
    if len(seen) != 1:
        raise HttpError(status_on_error, "conflicting Content-Length values")
    v = seen.pop()
    if not v.isdigit() or len(v) > 18:
        raise HttpError(status_on_error, f"bad Content-Length {v[:30]!r}")
    return int(v)


def request_framing(req: Request) -> tuple[str, int]:
    """RFC 9112 6.3 for requests. Both Transfer-Encoding and Content-Length: refused (smuggling)."""
    te = req.tokens(b"transfer-encoding")
    cl = _content_length(req, 400)
    if te:
        if cl is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length (request smuggling guard)")
        if te[-1] != b"chunked":
            raise HttpError(501, f"unsupported Transfer-Encoding {b', '.join(te).decode(errors='replace')!r}")
        return Framing.CHUNKED, 0
    if cl is None or cl == 0:
        return Framing.NONE, 0
    return Framing.LENGTH, cl


def response_framing(resp: Response, request_method: bytes) -> tuple[str, int]:
    """RFC 9112 6.3 for responses to ``request_method``."""
    status = resp.status
    if request_method == b"HEAD" or 100 <= status < 200 or status in (204, 304):
        return Framing.NONE, 0
    if request_method == b"CONNECT" and 200 <= status < 300:
        return Framing.NONE, 0
    te = resp.tokens(b"transfer-encoding")
    if te:
        if te[-1] == b"chunked":
            return Framing.CHUNKED, 0
        return Framing.UNTIL_CLOSE, 0
    cl = _content_length(resp, 502)
    if cl is None:
        return Framing.UNTIL_CLOSE, 0
    return (Framing.LENGTH, cl) if cl else (Framing.NONE, 0)


class _C:
    """Chunked-body parser states (plain constants, as :class:`Framing`)."""

    SIZE = 0
    DATA = 1
    DATA_CRLF = 2
    TRAILER = 3
    DONE = 4


class BodyFramer:
    """Counts the bytes of one body. ``feed(data) -> (n, done)``: the first ``n`` bytes of ``data``
    belong to the body; when ``done`` the body has ended and ``data[n:]`` is the next message.

    ``eof()`` reports the end of the stream: it completes an until-close body and raises
    :class:`HttpError` if a length or chunked body was cut short.
    """

    __slots__ = ("_err", "_line", "_remaining", "_state", "done", "framing", "total")

    def __init__(self, framing: str, length: int = 0, *, error_status: int = 400) -> None:
        self.framing = framing
        self._remaining = length
        self._state = _C.SIZE
        self._line = bytearray()
        self.total = 0
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self._err = error_status

    def feed(self, data: bytes | bytearray) -> tuple[int, bool]:
        if self.done:
            return 0, True
        n = len(data)
        if self.framing is Framing.UNTIL_CLOSE:
            self.total += n
            return n, False
        if self.framing is Framing.LENGTH:
            take = min(n, self._remaining)
            self._remaining -= take
            self.total += take
            self.done = self._remaining == 0
            return take, self.done
        used = self._feed_chunked(data)
        self.total += used
        return used, self.done

    def _feed_chunked(self, data: bytes | bytearray) -> int:
        pos, n = 0, len(data)
        while pos < n:
            st = self._state
            if st is _C.DATA:
                take = min(n - pos, self._remaining)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _C.DATA_CRLF
                    self._remaining = 2
                continue
            if st is _C.DATA_CRLF:
                take = min(n - pos, self._remaining)
                expect = b"\r\n"[2 - self._remaining : 2 - self._remaining + take]
                if data[pos : pos + take] != expect:
                    raise HttpError(self._err, "chunk data not followed by CRLF")
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _C.SIZE
                continue
            # SIZE or TRAILER: line-oriented
            nl = data.find(b"\n", pos, pos + MAX_LINE + 2)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_LINE:
                    raise HttpError(self._err, "chunk size or trailer line too long")
                return n
            self._line += data[pos:nl]
            pos = nl + 1
            line = bytes(self._line)
            self._line.clear()
            if len(line) > MAX_LINE:
                raise HttpError(self._err, "chunk size or trailer line too long")
            if not line.endswith(b"\r"):
                raise HttpError(self._err, "chunk line not terminated by CRLF")
            line = line[:-1]
            if st is _C.SIZE:
                m = _CHUNK_SIZE.match(line)
                if not m:
                    raise HttpError(self._err, f"bad chunk size line {line[:40]!r}")
                size = int(m.group(1), 16)
                if size == 0:
                    self._state = _C.TRAILER
                else:
                    self._state, self._remaining = _C.DATA, size
            else:  # trailer section: ends at the empty line
                if line == b"":
                    self._state = _C.DONE
                    self.done = True
                    return pos
                if b":" not in line:
                    raise HttpError(self._err, "malformed trailer line")
        return pos

    def eof(self) -> None:
        if self.done:
            return
        if self.framing is Framing.UNTIL_CLOSE:
            self.done = True
            return
        raise HttpError(self._err, f"connection closed inside a {self.framing} body")


def origin_form(req: Request) -> tuple[bytes, int, bytes]:
    """Split an absolute-form target ``http://host[:port]/path`` into (host, port, path).

    Only ``http`` is relayed: the proxy adds the attested TLS itself; an ``https`` URL would be a
    client asking for its own TLS through a CONNECT, not an absolute-form request.
    """
    t = req.target
    if not t.lower().startswith(b"http://"):
        raise HttpError(400, f"proxy requests use an absolute http:// URL, got {t[:80]!r}")
    rest = t[7:]
    slash = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=-1)
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    if path.startswith(b"?"):
        path = b"/" + path
    if b"@" in authority:
        raise HttpError(400, "userinfo in the request URL is not accepted")
    host, port = split_authority(authority, 80)
    return host, port, path


def split_authority(authority: bytes, default_port: int | None = None) -> tuple[bytes, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port)."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end < 0:
            raise HttpError(400, "unterminated IPv6 literal")
        host, rest = authority[1:end], authority[end + 1 :]
        port_s = rest[1:] if rest.startswith(b":") else b""
    else:
        host, _, port_s = authority.partition(b":")
    if not host:
        raise HttpError(400, "empty host")
    if not port_s:
        if default_port is None:
            raise HttpError(400, f"no port in {authority[:80]!r}")
        return host.lower(), default_port
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise HttpError(400, f"bad port in {authority[:80]!r}")
    return host.lower(), int(port_s)


def upstream_head(req: Request, path: bytes, host_header: bytes) -> bytes:
    """The head to send upstream: origin-form, hop-by-hop headers removed (except an Upgrade the
    client asked for), Host kept or set."""
    conn = req.tokens(b"connection")
    drop = HOP_BY_HOP | set(conn)
    upgrade = b"upgrade" in conn and req.get(b"upgrade") is not None
    # An HTTP/1.0 client cannot read a chunked response: ask upstream in its version, so the
    # answer comes with a length or close-delimited (RFC 9110 6.2 / 9112 7).
    out = [b"%s %s %s\r\n" % (req.method, path, req.version)]
    has_host = False
    for k, v in req.headers:
        lk = k.lower()
        if lk in drop and not (upgrade and lk == b"upgrade"):
            continue
        if lk == b"host":
            has_host = True
        out.append(b"%s: %s\r\n" % (k, v))
    if not has_host:
        out.insert(1, b"Host: %s\r\n" % host_header)
    if b"trailers" in req.tokens(b"te"):
        out.append(b"TE: trailers\r\n")
    if upgrade:  # a protocol switch (WebSocket) is end to end through the verified connection
        out.append(b"Connection: Upgrade\r\n")
    elif req.version == b"HTTP/1.0" and b"keep-alive" in conn:  # not Proxy-Connection: that one is about our hop
        out.append(b"Connection: keep-alive\r\n")  # an HTTP/1.0 keep-alive is asked for explicitly, end to end
    out.append(b"\r\n")
    return b"".join(out)


#: reason phrases of the statuses ratls answers itself (proxy, sidecar, admin port)
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
           504: "Gateway Timeout"}


def simple_response(status: int, body: bytes, content_type: bytes = b"application/json", *, close: bool = False,
                    head_only: bool = False) -> bytes:
    """A complete small response ratls writes itself (refusals, errors, the admin port);
    ``head_only`` answers a HEAD (the length of ``body``, without it)."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        status, REASONS.get(status, "Error").encode(), content_type, len(body))
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + (b"" if head_only else body)
