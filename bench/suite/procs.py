"""Processes under test: start, wait for the port, account CPU and RSS from /proc, stop.

CPU per request comes from utime+stime deltas of a server's whole process tree (nginx workers,
`--workers` children), read from /proc/PID/stat, so the load generator's own CPU never counts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def parse_stat(text: str) -> tuple[int, int, int]:
    """(ppid, utime+stime ticks, rss pages) from one /proc/PID/stat line (the comm may hold spaces)."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15, rss 24.
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21])


def _all_stats() -> dict[int, tuple[int, int, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = parse_stat(Path(f"/proc/{d}/stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
    return out


def tree(root: int, stats: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    stats = stats if stats is not None else _all_stats()
    pids, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, s in stats.items() if s[0] == parent]
        pids += kids
        frontier += kids
    return [p for p in pids if p in stats]


@dataclass
class Server:
    """A named server process (its whole tree counts)."""

    name: str
    proc: subprocess.Popen
    ports: dict[str, int] = field(default_factory=dict)
    log: Path | None = None
    #: RSS once it listened, before any load: the idle size it should come back to
    rss_at_start: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_ticks(self) -> int:
        stats = _all_stats()
        return sum(stats[p][1] for p in tree(self.pid, stats))

    def rss_bytes(self) -> int:
        stats = _all_stats()
        return sum(stats[p][2] for p in tree(self.pid, stats)) * PAGE

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start(name: str, argv: list[str], log: Path, wait_ports: list[int], env: dict[str, str] | None = None,
          cwd: Path | None = None, timeout: float = 30.0) -> Server:
    """Start `argv` in its own process group (so stop() takes its children too) and wait for its ports."""
    fh = open(log, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    fh.close()
    srv = Server(name, proc, log=log)
    try:
        for p in wait_ports:
            wait_port(p, timeout, proc)
    except RuntimeError as e:
        srv.stop()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{name}: {e}\n{tail}") from e
    srv.rss_at_start = srv.rss_bytes()
    return srv


class RssSampler:
    """Samples the RSS of some servers every `interval` seconds in a thread; keeps the peak of each."""

    def __init__(self, servers: list[Server], interval: float = 0.2):
        self.servers = servers
        self.interval = interval
        self.peak = {s.name: 0 for s in servers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in self.servers:
                with contextlib.suppress(Exception):
                    self.peak[s.name] = max(self.peak[s.name], s.rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
