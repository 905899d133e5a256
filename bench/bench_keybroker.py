#!/usr/bin/env python3
"""Keybroker releases per second.

Two numbers, measured in the same run:

* **core**: the broker's own work per release (auth + attest with full sim-SNP verification of a
  fresh report + binding check + resource with policy evaluation and JWE wrap), the sans-IO
  core driven directly. The TEE-side work (ephemeral key, signing the report, unwrapping) is done
  outside the timed section.
* **http**: whole releases over HTTP on loopback (aiohttp broker, ``--concurrency`` aiohttp
  clients doing the TEE side too), i.e. what one broker process sustains when its clients share
  the machine with it.

    .venv/bin/python bench/bench_keybroker.py [--n 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jwcrypto import jwk

from keybroker.server import Broker, make_verifier
from keybroker.store import SecretStore
from ratls import kbs
from ratls.io.simdir import load_or_create, load_root
from ratls.policy import Policy
from ratls.sim import DEFAULT_MEASUREMENT

RESULTS = Path(__file__).resolve().parent / "results"
SECRET = os.urandom(32)
POLICY = {
    "x-ms-attestation-type": "sim",
    "x-ms-sevsnpvm-launchmeasurement": DEFAULT_MEASUREMENT.hex(),
    "x-ms-sevsnpvm-is-debuggable": False,
}


def bench_core(authority, sim_root: bytes, store: SecretStore, n: int) -> dict:
    core = kbs.KbsCore(store, make_verifier(sim_root))
    per: list[float] = []
    parts = {"auth": 0.0, "attest": 0.0, "resource": 0.0}
    for _ in range(n):
        key = jwk.JWK.generate(kty="EC", crv="P-384")
        pub = json.loads(key.export_public())
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        nonce = kbs.unb64url(core.auth({"tee": "sim"}, now).body["nonce"], "n")
        t1 = time.perf_counter()
        ev = authority.report(kbs.expected_report_data(nonce, kbs.public_key_bytes(pub)))  # TEE side: not timed
        body = {"nonce": kbs.b64url(nonce), "tee-pubkey": pub, "tee-evidence": kbs.encode_evidence(ev)}
        t2 = time.perf_counter()
        att = core.attest(body, now)
        t3 = time.perf_counter()
        res = core.resource(att.body["session"], "model-key", now)
        t4 = time.perf_counter()
        assert res.status == 200 and kbs.unwrap_secret(res.body["jwe"], key) == SECRET
        parts["auth"] += t1 - t0
        parts["attest"] += t3 - t2
        parts["resource"] += t4 - t3
        per.append((t1 - t0) + (t4 - t2))
    total = sum(per)
    return {
        "releases": n,
        "releases_per_s": round(n / total, 1),
        "median_ms": round(statistics.median(per) * 1e3, 3),
        "p95_ms": round(sorted(per)[int(0.95 * (n - 1))] * 1e3, 3),
        "ms_per_step": {k: round(v / n * 1e3, 3) for k, v in parts.items()},
    }


async def bench_http(authority, sim_root: bytes, store: SecretStore, n: int, concurrency: int) -> dict:
    import aiohttp

    broker = Broker(store, sim_root=sim_root, audit_stream=io.StringIO())
    port = await broker.start()
    base = f"http://127.0.0.1:{port}/kbs/v0"
    done = 0
    lat: list[float] = []

    async def one(sess: aiohttp.ClientSession) -> None:
        t0 = time.perf_counter()
        key = jwk.JWK.generate(kty="EC", crv="P-384")
        pub = json.loads(key.export_public())
        async with sess.post(f"{base}/auth", json={"tee": "sim"}) as r:
            nonce = kbs.unb64url((await r.json())["nonce"], "n")
        ev = authority.report(kbs.expected_report_data(nonce, kbs.public_key_bytes(pub)))
        async with sess.post(
            f"{base}/attest", json={"nonce": kbs.b64url(nonce), "tee-pubkey": pub, "tee-evidence": kbs.encode_evidence(ev)}
        ) as r:
            sid = (await r.json())["session"]
        async with sess.get(f"{base}/resource/model-key", headers={"Authorization": f"Bearer {sid}"}) as r:
            token = (await r.json())["jwe"]
        assert kbs.unwrap_secret(token, key) == SECRET
        lat.append(time.perf_counter() - t0)

    async def worker(sess: aiohttp.ClientSession) -> None:
        nonlocal done
        while done < n:
            done += 1
            await one(sess)

    try:
        async with aiohttp.ClientSession() as sess:
            await one(sess)  # warm up
            lat.clear()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(sess) for _ in range(concurrency)))
            wall = time.perf_counter() - t0
    finally:
        await broker.stop()
    return {
        "releases": len(lat),
        "concurrency": concurrency,
        "releases_per_s": round(len(lat) / wall, 1),
        "median_ms": round(statistics.median(lat) * 1e3, 3),
        "p95_ms": round(sorted(lat)[int(0.95 * (len(lat) - 1))] * 1e3, 3),
        "audit_lines": broker.audit.lines,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        authority = load_or_create(Path(d) / "sim")
        sim_root = load_root(Path(d) / "sim")
        store = SecretStore(Path(d) / "store", os.urandom(32))
        store.put("model-key", SECRET, Policy.from_mapping(POLICY))
        core = bench_core(authority, sim_root, store, args.n)
        http = asyncio.run(bench_http(authority, sim_root, store, args.n, args.concurrency))
    doc = {
        "bench": "keybroker",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
        "evidence": "sim (SNP v3 report, ECDSA P-384 VCEK-Sim, RSA-PSS ASK/ARK chain)",
        "wrap": "JWE ECDH-ES + A256GCM to an EC P-384 ephemeral key",
        "store": "sealed JSON file read and opened per release",
        "core": core,
        "http": http,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "keybroker.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [
        "# Keybroker releases per second",
        "",
        f"{doc['when']}, {os.cpu_count()} CPUs (load average {doc['host']['loadavg_1m']}: other jobs share them), produced by `bench/bench_keybroker.py`. Evidence: {doc['evidence']}; {doc['wrap']}.",
        "",
        "| path | releases | releases/s | median ms | p95 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| core (broker work only: auth + attest/verify/bind + policy/wrap) | {core['releases']} | {core['releases_per_s']} | {core['median_ms']} | {core['p95_ms']} |",
        f"| HTTP loopback, {http['concurrency']} concurrent TEE clients on the same machine | {http['releases']} | {http['releases_per_s']} | {http['median_ms']} | {http['p95_ms']} |",
        "",
        "Core time per step (ms): " + ", ".join(f"{k} {v}" for k, v in core["ms_per_step"].items()) + ".",
        "The HTTP figure includes the clients' own work (key generation, signing the simulated report, unwrapping),",
        "which competes with the broker for the same CPUs; one broker process is single-threaded (asyncio).",
        "",
    ]
    (RESULTS / "keybroker.md").write_text("\n".join(md))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
