"""Config text for the baseline servers (pure functions: ports and paths in, text out).

All servers are tuned the same way where they have the same knob: one worker per `workers`, keep-alive
upstream connections, request bodies streamed (never spooled to disk), TLS 1.3 only with the same
P-256 key type the sidecar uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GRPC_METHOD = "/bench.Bench/Call"
# One gRPC message frame (flag 0, length 0): the reply of the gRPC sink.
GRPC_EMPTY_REPLY = b"\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class NginxPaths:
    """Per-instance directories: every nginx runs with its own prefix so CPU and RSS stay separable."""

    prefix: Path

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"


def _nginx_main(prefix: Path, workers: int, body: str) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = prefix / "tmp"
    return f"""{user}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65535;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 64m;
  client_body_buffer_size 1m;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  http2_max_requests 10000000;
{body}}}
"""


def _backend_locations(www: Path) -> str:
    return f"""    root {www};
    location = /1k {{ }}
    location = /upload {{ mirror /sink; mirror_request_body on; error_page 404 405 =200 /ok; }}
    location /bench.Bench/ {{ mirror /sink; mirror_request_body on; error_page 404 405 =200 /grpc-reply; }}
    location = /sink {{ internal; return 204; }}
    location = /ok {{ internal; }}
    location = /grpc-reply {{
      internal;
      default_type application/grpc;
      add_trailer grpc-status 0 always;
    }}
"""


def nginx_backend(prefix: Path, www: Path, http_port: int, h2c_port: int, workers: int = 1) -> str:
    """The common backend: 1 KB static GET, 600 KB POST sink, and a gRPC sink on HTTP/2 cleartext.

    nginx is fast enough that it is never what a scenario measures; every server under test relays to it.
    The POST sinks read the whole body before answering (`mirror_request_body on` makes nginx read it
    before the content phase; a `return` would answer first and leave the upload half-sent, which
    breaks keep-alive for whoever relays it). The answer comes from the static module, which refuses
    POST (404/405), turned by error_page into a canned 200: "ok" for /upload, and for any POST under
    /bench.Bench/ an empty gRPC message with grpc-status 0.
    """
    locs = _backend_locations(www)
    body = f"""  server {{
    listen 127.0.0.1:{http_port} backlog=4096 reuseport;
{locs}  }}
  server {{
    listen 127.0.0.1:{h2c_port} http2 backlog=4096 reuseport;
{locs}  }}
"""
    return _nginx_main(prefix, workers, body)


def nginx_tls_terminator(prefix: Path, workers: int, cert: Path, key: Path, h1_port: int, h2_port: int,
                         http_backend: int, h2c_backend: int) -> str:
    """nginx doing the sidecar's job: TLS 1.3 in, HTTP/1.1 to the HTTP backend, h2 (ALPN) to the h2c backend."""
    tls = f"""    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
"""
    body = f"""  upstream be_http {{ server 127.0.0.1:{http_backend}; keepalive 256; }}
  upstream be_h2c {{ server 127.0.0.1:{h2c_backend}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{h1_port} ssl backlog=4096;
{tls}    location / {{
      proxy_pass http://be_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
    }}
  }}
  server {{
    listen 127.0.0.1:{h2_port} ssl http2 backlog=4096;
{tls}    location / {{
      grpc_pass grpc://be_h2c;
    }}
  }}
"""
    return _nginx_main(prefix, workers, body)


def nginx_forward(prefix: Path, workers: int, port: int, tls_port: int, ca: Path, server_name: str) -> str:
    """nginx as the client-side half of a chain: absolute-form HTTP in, verified TLS 1.3 to the terminator.

    The equivalent of the ratls proxy without attestation: pooled upstream TLS connections, the peer
    certificate verified against a pinned CA, request bodies streamed.
    """
    body = f"""  upstream tls_up {{ server 127.0.0.1:{tls_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass https://tls_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_request_buffering off;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_name {server_name};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }}
  }}
"""
    return _nginx_main(prefix, workers, body)


def nginx_grpc_tls(prefix: Path, workers: int, cert: Path, key: Path, port: int, h2c_backend: int) -> str:
    """nginx `grpc_pass` with TLS: the baseline for gRPC through the pair."""
    body = f"""  upstream grpc_be {{ server 127.0.0.1:{h2c_backend}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    location / {{ grpc_pass grpc://grpc_be; }}
  }}
"""
    return _nginx_main(prefix, workers, body)


def haproxy_tls_terminator(workers: int, pem: Path, h1_port: int, h2_port: int, http_backend: int, h2c_backend: int) -> str:
    """HAProxy doing the sidecar's job (same ports/roles as `nginx_tls_terminator`)."""
    return f"""global
  nbthread {workers}
  maxconn 4000
  tune.bufsize 65536
  ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always

frontend fe_h1
  bind 127.0.0.1:{h1_port} ssl crt {pem} alpn http/1.1
  default_backend be_http

frontend fe_h2
  bind 127.0.0.1:{h2_port} ssl crt {pem} alpn h2
  default_backend be_h2c

backend be_http
  server s1 127.0.0.1:{http_backend}

backend be_h2c
  server s1 127.0.0.1:{h2c_backend} proto h2
"""


def tinyproxy_conf(port: int, pid_file: Path) -> str:
    """tinyproxy as a plain forward proxy (no TLS at all), the lower bar for the pair."""
    user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    return f"""{user}Port {port}
Listen 127.0.0.1
Timeout 600
MaxClients 4096
LogLevel Critical
PidFile "{pid_file}"
Allow 127.0.0.1
DisableViaHeader Yes
"""


def wrk_script(path: str, host: str | None = None, method: str = "GET", body_file: Path | None = None,
               headers: dict[str, str] | None = None) -> str:
    """A wrk Lua script: the request (absolute-form path for proxies, optional body file) and a JSON summary.

    The `done` hook prints one `BENCH_JSON {...}` line so the harness never scrapes wrk's prose.
    """
    lines = [f'wrk.method = "{method}"', f'wrk.path = "{path}"']
    if host:
        lines.append(f'wrk.headers["Host"] = "{host}"')
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    if body_file is not None:
        lines += [
            f'local f = assert(io.open("{body_file}", "rb"))',
            "wrk.body = f:read(\"*a\")",
            "f:close()",
        ]
    lines.append(
        """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end"""
    )
    return "\n".join(lines) + "\n"
