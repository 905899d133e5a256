"""A PCCS on loopback for tests: Intel's PCS v4 paths served by a ThreadingHTTPServer on port 0."""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakePccs:
    """``routes``: request path (with query) -> (body, name of the issuer-chain header or None).
    Unknown paths get 404; ``hits`` lists every path asked for; ``url`` is the base URL."""

    def __init__(self, routes: dict[str, tuple[bytes, str | None]], issuer_chain_pem: bytes) -> None:
        self.hits: list[str] = []
        chain = urllib.parse.quote(issuer_chain_pem.decode())
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                if self.path not in routes:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, header = routes[self.path]
                self.send_response(200)
                if header:
                    self.send_header(header, chain)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
