"""Running a backend as a child process: start, wait until ready, stop (the whole process group).

Backends run as children, not threads of the caller, because they are separate servers in the
picture (inside the TEE, behind the sidecar) and because tritonserver, its stubs and pytriton's
workers must all go away when the test or the demo ends, even if the caller crashes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class BackendError(RuntimeError):
    """A backend did not come up (the message carries the tail of its log)."""


class ChildServer:
    """A ``python -m MODULE ARGS`` child in its own session, ready when every URL answers 200.

    ``start()`` returns at once; ``wait_ready()`` blocks until ready or raises ``BackendError`` with
    the log tail; ``stop()`` sends SIGTERM, then SIGKILLs the process group. Context manager:
    start + wait_ready / stop.
    """

    module: str = ""

    def __init__(self, args: list[str], ready_urls: Iterable[str], log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.ready_urls = list(ready_urls)
        self._own_log = log_path is None
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{self.module.rsplit('.', 1)[-1]}-", suffix=".log")[1])
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]

    def start(self) -> ChildServer:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except OSError:
            return ""

    def ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the backend
        try:
            for url in self.ready_urls:
                with opener.open(url, timeout=2) as r:
                    if r.status != 200:
                        return False
        except (urllib.error.URLError, OSError):
            return False
        return True

    def wait_ready(self, timeout: float = 120.0) -> ChildServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BackendError(f"{self.module} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        raise BackendError(f"{self.module} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
        finally:  # even when interrupted while waiting
            # grandchildren (tritonserver, its stubs) share the child's session: none may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> ChildServer:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RatlsProcess(ChildServer):
    """``python -m ratls.cli SUBCOMMAND ...`` (sidecar, proxy), ready when its admin ``/readyz`` answers 200."""

    module = "ratls.cli"

    def __init__(self, name: str, args: list[str], admin_port: int, log_path: Path | None = None) -> None:
        self.name = name
        super().__init__(args, [f"http://127.0.0.1:{admin_port}/readyz"], log_path=log_path)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
