"""Where DCAP collateral comes from at the edge: a cache directory, and an optional PCCS URL.

Both are :class:`~ratls.evidence.CollateralGetter` s over the keys documented in
:mod:`ratls.intel.collateral` (``tcbinfo/tdx/<fmspc>``, ``qeidentity/tdx``, ``crl/root``,
``crl/pck-platform``, ...). The verifier stays pure: it receives whatever bytes these return and
judges them (signatures, freshness) itself, so a poisoned cache or PCCS can only make verification
fail or report stale collateral, never pass.

A cache entry is a file ``<dir>/<key>``. :class:`PccsGetter` serves a cache entry younger than
``max_age_s``, else fetches from the PCCS (Intel's PCS API v4 paths), stores it, and on a fetch
failure falls back to the older cached copy (the verifier reports it stale if it is).

Services build their getter with :func:`service_getter` from ``--collateral-dir`` and
``--pccs-url``; the evidence's own endorsements are still consulted first by the verifier.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import Reason, UsageError

_KEY = re.compile(r"^[a-z0-9][a-z0-9\-]*(/[a-z0-9][a-z0-9\-]*)*$")

#: collateral key -> (PCCS path, response header with the issuer chain or None)
_ROUTES: dict[str, tuple[str, str | None]] = {
    "tcbinfo/tdx": ("/tdx/certification/v4/tcb?fmspc={arg}", "TCB-Info-Issuer-Chain"),
    "tcbinfo/sgx": ("/sgx/certification/v4/tcb?fmspc={arg}", "TCB-Info-Issuer-Chain"),
    "qeidentity/tdx": ("/tdx/certification/v4/qe/identity", "SGX-Enclave-Identity-Issuer-Chain"),
    "qeidentity/sgx": ("/sgx/certification/v4/qe/identity", "SGX-Enclave-Identity-Issuer-Chain"),
    "crl/pck-platform": ("/sgx/certification/v4/pckcrl?ca=platform&encoding=der", None),
    "crl/pck-processor": ("/sgx/certification/v4/pckcrl?ca=processor&encoding=der", None),
    "crl/root": ("/sgx/certification/v4/rootcacrl", None),
}
CHAIN_KEY = "chain/tcb-signing"


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise UsageError(Reason.CONFIG_INVALID, f"collateral key {key!r} is not of the form word/word (lower-case, digits, '-')")
    return key


class CacheDir:
    """A directory of collateral files, one per key. ``get`` never raises for a missing entry."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def age_s(self, key: str) -> float | None:
        try:
            return time.time() - self.path(key).stat().st_mtime
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        """Atomic write (rename), so a concurrent reader sees the old or the new entry, whole."""
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class MemoryCache:
    """:class:`CacheDir`'s interface in process memory: a PCCS getter without a directory keeps
    what it fetched (and the TCB Signing chain header) instead of fetching on every verification."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, bytes]] = {}

    def get(self, key: str) -> bytes | None:
        hit = self._items.get(check_key(key))
        return None if hit is None else hit[1]

    def age_s(self, key: str) -> float | None:
        hit = self._items.get(key)
        return None if hit is None else time.monotonic() - hit[0]

    def put(self, key: str, data: bytes) -> None:
        self._items[check_key(key)] = (time.monotonic(), data)


Fetch = Callable[[str, float], tuple[int, dict[str, str], bytes]]


def urllib_fetch(url: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": "*/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()) if e.headers else {}, b""


class PccsGetter:
    """Fetch collateral from a PCCS/PCS base URL, with a cache directory in front.

    ``fetches`` counts network round trips (tests and metrics read it).
    """

    def __init__(self, url: str, cache: CacheDir | MemoryCache | None = None, *, max_age_s: float = 12 * 3600, timeout: float = 10.0, fetch: Fetch = urllib_fetch) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(Reason.CONFIG_INVALID, f"PCCS URL must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.cache = cache
        self.max_age_s = max_age_s
        self.timeout = timeout
        self._fetch = fetch
        self.fetches = 0
        self.errors: list[str] = []

    def route(self, key: str) -> tuple[str, str | None] | None:
        check_key(key)
        head, _, arg = key.rpartition("/")
        if key in _ROUTES:
            path, hdr = _ROUTES[key]
            return self.url + path, hdr
        if head in _ROUTES and re.fullmatch(r"[0-9a-f]{12}", arg):
            path, hdr = _ROUTES[head]
            return self.url + path.format(arg=arg.upper()), hdr
        return None

    def get(self, key: str) -> bytes | None:
        cached = self.cache.get(key) if self.cache else None
        if cached is not None and self.cache is not None:
            age = self.cache.age_s(key)
            if age is not None and age <= self.max_age_s:
                return cached
        route = self.route(key)
        if route is None:
            return cached
        url, chain_header = route
        self.fetches += 1
        try:
            status, headers, body = self._fetch(url, self.timeout)
        except (OSError, ValueError) as e:
            self.errors.append(f"{url}: {e}")
            return cached
        if status != 200 or not body:
            self.errors.append(f"{url}: HTTP {status}")
            return cached
        if self.cache is not None:
            chain = _header(headers, chain_header)
            try:
                self.cache.put(key, body)
                if chain:
                    self.cache.put(CHAIN_KEY, urllib.parse.unquote(chain).encode())
            except OSError as e:  # a read-only or full cache directory: serve what was fetched
                self.errors.append(f"cache {key}: {e}")
        return body


def _header(headers: dict[str, str], name: str | None) -> str | None:
    if name is None:
        return None
    for k, v in headers.items():
        if k.lower() in (name.lower(), "sgx-" + name.lower()):
            return v
    return None


class ChainGetter:
    """Consult getters in order (DESIGN.md: endorsements, then cache directory, then PCCS)."""

    def __init__(self, *getters: object) -> None:
        self.getters = [g for g in getters if g is not None]

    def get(self, key: str) -> bytes | None:
        for g in self.getters:
            v = g.get(key)  # type: ignore[attr-defined]
            if v is not None:
                return v
        return None


def service_getter(collateral_dir: str | os.PathLike[str] | None, pccs_url: str | None, *, max_age_s: float = 12 * 3600) -> CacheDir | PccsGetter | None:
    """The collateral getter of ``--collateral-dir`` / ``--pccs-url`` (None when neither is given).

    Directory only: :class:`CacheDir`, read as given (an operator or a cron job fills it; offline).
    PCCS URL: :class:`PccsGetter` with the directory, or else a :class:`MemoryCache`, as its cache.
    That getter is itself "cache directory, then PCCS" (DESIGN.md's order) but refreshes entries
    older than ``max_age_s``; a plain ``ChainGetter(CacheDir, PccsGetter)`` would serve a cached
    entry for ever once it existed, and a long-lived proxy would end up refusing stale collateral.
    """
    if collateral_dir is not None and pccs_url is None and not Path(collateral_dir).is_dir():
        raise UsageError(Reason.CONFIG_INVALID, f"--collateral-dir {collateral_dir}: not a directory (and no --pccs-url to fill it)")
    cache = CacheDir(collateral_dir) if collateral_dir is not None else None
    if pccs_url is None:
        return cache
    return PccsGetter(pccs_url, cache if cache is not None else MemoryCache(), max_age_s=max_age_s)
