"""Load generators and the parsers of their output (the parsers are pure, tested on canned output).

- wrk (HTTP/1.1, keep-alive or `Connection: close`), driven by a Lua script that prints one JSON line;
- h2load (HTTP/2, also gRPC-framed POSTs), whose per-request log gives the percentiles;
- `python -m bench.suite.clients` for what neither can do: gRPC through a CONNECT proxy, and TLS
  handshakes with RA-TLS verification on the client side.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import configs


@dataclass
class LoadResult:
    """What every load generator reports, in the same units."""

    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "rps": round(self.rps, 1)}


class LoadError(RuntimeError):
    pass


def parse_wrk(output: str) -> LoadResult:
    """The `BENCH_JSON` line of our wrk script, plus wrk's own 'Non-2xx' line as a cross-check."""
    m = re.search(r"^BENCH_JSON (\{.*\})$", output, re.M)
    if not m:
        raise LoadError(f"wrk printed no BENCH_JSON line:\n{output[-1500:]}")
    d = json.loads(m.group(1))
    errors = sum(d["errors"].values())
    lat = d["latency_us"]
    # wrk counts non-2xx/3xx answers as requests too (and as status errors): only good answers are throughput.
    return LoadResult("wrk", d["requests"] - d["errors"]["status"], d["duration_us"] / 1e6, errors, lat["p50"] / 1000, lat["p99"] / 1000,
                      d["bytes"], {"errors": d["errors"], "p90_ms": lat["p90"] / 1000, "max_ms": lat["max"] / 1000})


_H2_REQS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_H2_FIN = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2_TRAFFIC = re.compile(r"traffic: [\d.]+\w* \((\d+)\) total")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def parse_h2load(output: str, log_text: str = "") -> LoadResult:
    """h2load's summary, with p50/p99 from its `--log-file` (start µs, status, duration µs per request).

    Requests that were not 2xx count as errors: an HTTP error answered fast is not throughput.
    """
    r = _H2_REQS.search(output)
    f = _H2_FIN.search(output)
    if not r or not f:
        raise LoadError(f"h2load output not understood:\n{output[-1500:]}")
    total, _started, done, ok, failed, errored, timeout = map(int, r.groups())
    st = _H2_STATUS.search(output)
    non2xx = sum(map(int, st.groups()[1:])) if st else 0
    durations = []
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].strip().startswith("2"):
            durations.append(int(parts[2]) / 1000)
    durations.sort()
    t = _H2_TRAFFIC.search(output)
    good = int(st.group(1)) if st else ok
    # "finished in" includes the warm-up; the req/s beside it is over the measured part only.
    rate = float(f.group(3))
    secs = good / rate if rate else float(f.group(1)) / (1000 if f.group(2) == "ms" else 1)
    return LoadResult("h2load", good, secs, failed + errored + timeout, percentile(durations, 50),
                      percentile(durations, 99), int(t.group(1)) if t else 0,
                      {"total": total, "done": done, "non2xx": non2xx})


def run_wrk(url: str, script: str, workdir: Path, name: str, connections: int, duration: float,
            threads: int = 2, timeout_s: float = 10) -> LoadResult:
    lua = workdir / f"{name}.lua"
    lua.write_text(script)
    argv = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration:g}s", f"--timeout={timeout_s:g}s",
            "-s", str(lua), url]
    out = _run(argv, duration + timeout_s + 15)
    (workdir / f"{name}.wrk.txt").write_text(out)
    return parse_wrk(out)


def run_h2load(url: str, workdir: Path, name: str, connections: int, streams: int, duration: float,
               body_file: Path | None = None, headers: dict[str, str] | None = None, threads: int = 2) -> LoadResult:
    log = workdir / f"{name}.h2load.log"
    log.unlink(missing_ok=True)
    argv = ["h2load", f"-c{connections}", f"-m{streams}", f"-t{min(threads, connections)}", f"-D{duration:g}",
            "--warm-up-time=1", f"--log-file={log}"]
    if body_file is not None:
        argv += ["-d", str(body_file)]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    out = _run(argv, duration + 30)
    (workdir / f"{name}.h2load.txt").write_text(out)
    return parse_h2load(out, log.read_text() if log.exists() else "")


def run_client(args: list[str], timeout: float) -> LoadResult:
    """`python -m bench.suite.clients ...` in its own process; it prints one JSON LoadResult."""
    root = Path(__file__).resolve().parents[2]
    out = _run([sys.executable, "-m", "bench.suite.clients", *args], timeout, cwd=root)
    m = re.search(r"^BENCH_JSON (\{.*\})$", out, re.M)
    if not m:
        raise LoadError(f"client printed no result:\n{out[-2000:]}")
    d = json.loads(m.group(1))
    d.pop("rps", None)
    return LoadResult(**d)


def _run(argv: list[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise LoadError(f"{argv[0]} ran past {timeout:.0f}s") from e
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise LoadError(f"{' '.join(argv[:3])}... exited {p.returncode}:\n{out[-2000:]}")
    return out


def grpc_frame(payload: bytes) -> bytes:
    """One gRPC length-prefixed message (uncompressed), as h2load must send it."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
GRPC_PATH = configs.GRPC_METHOD
