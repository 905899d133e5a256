"""Can the relay hand work to the kernel here? kTLS and os.splice, probed and measured.

`python -m bench.suite.kernel_probe` prints JSON: whether the kernel has the `tls` ULP (kTLS), whether
this Python/OpenSSL can ask for it, and the throughput of a plain TCP → TCP relay of N MB on loopback
done three ways: `recv_into`/`send` with a 256 KB buffer (what a userspace relay does), `os.splice`
through a pipe (zero-copy, kernel only), and no relay at all (the sender straight to the receiver).
Only the plain legs of a relay can splice: a TLS leg must be decrypted by someone, which without
kTLS is userspace.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import time

TCP_ULP = 31
MB = 1 << 20


def ktls_status() -> dict:
    out = {"kernel": os.uname().release, "openssl": ssl.OPENSSL_VERSION,
           "python_has_OP_ENABLE_KTLS": hasattr(ssl, "OP_ENABLE_KTLS"), "proc_net_tls_stat": os.path.exists("/proc/net/tls_stat")}
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as c:
            try:
                c.setsockopt(socket.SOL_TCP, TCP_ULP, b"tls")
                out["tcp_ulp_tls"] = "available"
            except OSError as e:
                out["tcp_ulp_tls"] = f"unavailable: {e.strerror}"
    return out


def _pair() -> tuple[socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    return a, b


def _sender(sock: socket.socket, total: int) -> None:
    chunk = b"\x5a" * (256 * 1024)
    sent = 0
    while sent < total:
        sent += sock.send(chunk[: min(len(chunk), total - sent)])
    sock.shutdown(socket.SHUT_WR)


def _sink(sock: socket.socket, total: int, done: threading.Event) -> None:
    buf = bytearray(256 * 1024)
    got = 0
    while got < total:
        n = sock.recv_into(buf)
        if not n:
            break
        got += n
    done.set()


def relay_throughput(mode: str, total: int) -> float:
    """MB/s moving `total` bytes sender → [relay] → sink, relay in this thread."""
    src_w, src_r = _pair()
    dst_w, dst_r = _pair()
    done = threading.Event()
    threads = [threading.Thread(target=_sender, args=(src_w, total)), threading.Thread(target=_sink, args=(dst_r, total, done))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    moved = 0
    if mode == "userspace":
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        while moved < total:
            n = src_r.recv_into(buf)
            if not n:
                break
            dst_w.sendall(view[:n])
            moved += n
    else:
        pr, pw = os.pipe()
        try:
            while moved < total:
                n = os.splice(src_r.fileno(), pw, 1 << 20)
                if not n:
                    break
                left = n
                while left:
                    left -= os.splice(pr, dst_w.fileno(), left)
                moved += n
        finally:
            os.close(pr)
            os.close(pw)
    done.wait(30)
    secs = time.perf_counter() - t0
    for t in threads:
        t.join()
    for s in (src_w, src_r, dst_w, dst_r):
        s.close()
    return round(total / MB / secs, 1)


def direct_throughput(total: int) -> float:
    a, b = _pair()
    done = threading.Event()
    t = threading.Thread(target=_sink, args=(b, total, done))
    t0 = time.perf_counter()
    t.start()
    _sender(a, total)
    done.wait(30)
    secs = time.perf_counter() - t0
    t.join()
    a.close()
    b.close()
    return round(total / MB / secs, 1)


def main() -> None:
    total = int(os.environ.get("PROBE_MB", "1024")) * MB
    res = {"ktls": ktls_status(), "mb": total // MB}
    if hasattr(os, "splice"):
        best = {m: max(relay_throughput(m, total) for _ in range(3)) for m in ("userspace", "splice")}
        res["relay_mb_per_s"] = {**best, "no-relay": max(direct_throughput(total) for _ in range(3))}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
