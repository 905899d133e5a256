#!/usr/bin/env python3
"""Bundle encrypt/decrypt throughput against raw AES-256-GCM on the same data, in the same run.

The baseline does the least a chunked AES-256-GCM file encryptor can do with the same I/O: read
each file in 1 MiB chunks into a reused buffer, ``AESGCM.encrypt_into`` a reused buffer with a
counter nonce, write the ciphertext (and the reverse for decrypt), as the bundle code does. The bundle adds per-file key derivation, the
associated data, the SHA-256 of every plaintext, the manifest, the signature and (for decrypt)
the staging directory and rename. Goal: bundle >= 70% of raw, judged on the medians of the
interleaved rounds (ratio of median throughputs, encrypt and decrypt); the best-of-rounds ratio
and the median of per-round paired ratios are reported beside them. Each run's CPU time (this
process, all threads) is reported too: the bundle hashes on a second thread, so its wall time
depends on a free second core, which other jobs on a shared machine take away.

Also reported: pure in-memory AES-GCM (no I/O) as the ceiling, the bundle without the hashing
thread, and the peak Python heap while sealing a large file (flat memory).

    .venv/bin/python bench/bench_bundle.py [--mb 1024] [--repeat 7]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker import bundle_files as bf
from ratls.bundle import DEFAULT_CHUNK_SIZE, TAG_LEN, chunk_nonce

RESULTS = Path(__file__).resolve().parent / "results"
KEY = os.urandom(32)


def make_model(d: Path, total_mb: int) -> list[Path]:
    """A Triton-like repository: one big weight file, a few medium ones, small configs."""
    d.mkdir(parents=True)
    sizes = [int(total_mb * 0.7), int(total_mb * 0.1), int(total_mb * 0.1), int(total_mb * 0.1)]
    files = []
    block = os.urandom(1 << 20)
    for i, mb in enumerate(sizes):
        p = d / "m" / "1" / f"weights-{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            for j in range(mb):
                f.write(block[j % 7 :] + block[: j % 7])
        files.append(p)
    (d / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "onnxruntime"\n')
    files.append(d / "m" / "config.pbtxt")
    return files


def raw_encrypt(files: list[Path], out: Path, cs: int = DEFAULT_CHUNK_SIZE) -> None:
    aead = AESGCM(KEY)
    buf = bytearray(cs)
    sealed = bytearray(cs + TAG_LEN)
    with open(out, "wb") as o:
        for k, p in enumerate(files):
            with open(p, "rb", buffering=0) as f:
                i = 0
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    v = memoryview(sealed)[: n + TAG_LEN]
                    aead.encrypt_into(k.to_bytes(4, "big") + i.to_bytes(8, "big"), memoryview(buf)[:n], None, v)
                    o.write(v)
                    i += 1


def raw_decrypt(src: Path, sizes: list[int], out_dir: Path, cs: int = DEFAULT_CHUNK_SIZE) -> None:
    aead = AESGCM(KEY)
    buf = bytearray(cs + TAG_LEN)
    plain = bytearray(cs)
    out_dir.mkdir()
    with open(src, "rb", buffering=0) as f:
        for k, size in enumerate(sizes):
            with open(out_dir / f"f{k}", "wb") as o:
                left, i = size, 0
                while left > 0:
                    want = min(cs, left) + TAG_LEN
                    v = memoryview(buf)[:want]
                    f.readinto(v)
                    p = memoryview(plain)[: want - TAG_LEN]
                    aead.decrypt_into(k.to_bytes(4, "big") + i.to_bytes(8, "big"), v, None, p)
                    o.write(p)
                    left -= want - TAG_LEN
                    i += 1


def in_memory_gcm(total: int, cs: int = DEFAULT_CHUNK_SIZE) -> float:
    aead = AESGCM(KEY)
    data = os.urandom(cs)
    n = total // cs
    t0 = time.perf_counter()
    for i in range(n):
        aead.encrypt(chunk_nonce(i), data, None)
    return time.perf_counter() - t0


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_cpu(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn``: CPU time of this process, every thread included."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="model size in MiB (default 1024)")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--out-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None, help="where outputs go (default /dev/shm)")
    args = ap.parse_args(argv)

    owner = ed25519.Ed25519PrivateKey.generate()
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.out_dir))
    try:
        files = make_model(work / "src", args.mb)
        sizes = [p.stat().st_size for p in files]
        total = sum(sizes)
        for p in files:  # warm the page cache so both sides read from memory
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        names = ("raw_encrypt", "bundle_encrypt", "bundle_encrypt_unthreaded", "raw_decrypt", "bundle_decrypt")
        runs: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}

        def run(name: str, fn) -> None:
            wall, used = timed_cpu(fn)
            runs[name].append(wall)
            cpu[name].append(used)

        def gone(*names: str) -> None:
            for n in names:
                shutil.rmtree(work / n, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(work / n)

        def one_round(keep: bool) -> None:
            # Interleaved so background load hits raw and bundle alike. Each pair runs with the same
            # files resident and writes fresh tmpfs pages the same way: where the VM backs memory
            # lazily, a write into pages it has not handed out yet costs several times more CPU.
            step = run if keep else (lambda _name, fn: fn())
            gone("raw.bin")
            step("raw_encrypt", lambda: raw_encrypt(files, work / "raw.bin"))  # resident: src, b.rmb
            gone("b.rmb")
            step("bundle_encrypt", lambda: bf.encrypt_dir(work / "src", work / "b.rmb", KEY, signer=owner))  # src, raw.bin
            step("bundle_encrypt_unthreaded", lambda: bf.encrypt_dir(work / "src", work / "b2.rmb", KEY, signer=owner, threaded=False))
            gone("b2.rmb")
            step("raw_decrypt", lambda: raw_decrypt(work / "raw.bin", sizes, work / "rawdec"))  # src, raw.bin, b.rmb
            gone("rawdec")
            step("bundle_decrypt", lambda: bf.decrypt_to_dir(work / "b.rmb", KEY, work / "dec", signer=owner.public_key()))  # same
            gone("dec")

        one_round(keep=False)  # warm-up: the first touch of tmpfs pages and of the code paths
        load_before = os.getloadavg()[0]
        for _ in range(args.repeat):
            one_round(keep=True)
        load_after = os.getloadavg()[0]
        mem_s = min(in_memory_gcm(min(total, 512 << 20)) for _ in range(args.repeat))
        mem_mbps = min(total, 512 << 20) / mem_s / 1e6

        # flat memory: Python heap peak while sealing and opening the whole model
        tracemalloc.start()
        bf.encrypt_dir(work / "src", work / "t.rmb", KEY, signer=owner)
        enc_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        bf.decrypt_to_dir(work / "t.rmb", KEY, work / "tdec", signer=owner.public_key())
        dec_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stats(k: str) -> dict:
        best, med = min(runs[k]), statistics.median(runs[k])
        return {
            "best_s": round(best, 4),
            "median_s": round(med, 4),
            "mb_per_s_best": round(total / best / 1e6, 1),
            "mb_per_s_median": round(total / med / 1e6, 1),
            "cpu_s_median": round(statistics.median(cpu[k]), 4),
            "runs_s": [round(x, 4) for x in runs[k]],
        }

    res = {k: stats(k) for k in runs}

    def ratios(bundle: str, raw: str) -> dict:
        return {
            "median": round(res[raw]["median_s"] / res[bundle]["median_s"], 3),
            "best": round(res[raw]["best_s"] / res[bundle]["best_s"], 3),
            "paired_median": round(statistics.median(a / b for a, b in zip(runs[raw], runs[bundle], strict=True)), 3),
            "cpu_median": round(res[raw]["cpu_s_median"] / res[bundle]["cpu_s_median"], 3),
        }

    ratio = {
        "encrypt": ratios("bundle_encrypt", "raw_encrypt"),
        "encrypt_unthreaded": ratios("bundle_encrypt_unthreaded", "raw_encrypt"),
        "decrypt": ratios("bundle_decrypt", "raw_decrypt"),
    }
    goal_met = ratio["encrypt"]["median"] >= 0.7 and ratio["decrypt"]["median"] >= 0.7
    doc = {
        "bench": "bundle",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(load_after, 2),
        },
        "model_bytes": total,
        "files": len(files),
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "output_fs": args.out_dir or tempfile.gettempdir(),
        "repeat": args.repeat,
        "results": res,
        "in_memory_aes_gcm_mb_per_s": round(mem_mbps, 1),
        "ratio_vs_raw": ratio,
        "ratio_encrypt_vs_raw": ratio["encrypt"]["median"],
        "ratio_decrypt_vs_raw": ratio["decrypt"]["median"],
        "goal": "bundle >= 0.70 of raw AES-256-GCM throughput, on the median of the rounds, encrypt and decrypt",
        "goal_ratio": 0.7,
        "goal_met": goal_met,
        "peak_python_heap_bytes": {"encrypt": enc_peak, "decrypt": dec_peak},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bundle.json").write_text(json.dumps(doc, indent=2) + "\n")
    labels = {
        "raw_encrypt": ("raw AES-256-GCM encrypt (same I/O)", None),
        "bundle_encrypt": ("bundle encrypt (+ sign)", "encrypt"),
        "bundle_encrypt_unthreaded": ("bundle encrypt, hashing not pipelined", "encrypt_unthreaded"),
        "raw_decrypt": ("raw AES-256-GCM decrypt (same I/O)", None),
        "bundle_decrypt": ("bundle decrypt (verify + stage + rename)", "decrypt"),
    }
    md = [
        "# Bundle throughput vs raw AES-256-GCM",
        "",
        f"{total / 1e6:.0f} MB model ({len(files)} files), 1 MiB chunks, outputs on `{doc['output_fs']}`, {args.repeat} interleaved rounds, "
        f"{os.cpu_count()} CPUs (load average {doc['host']['loadavg_1m_before']} before, {doc['host']['loadavg_1m_after']} after: "
        f"other jobs share them), {doc['when']}. Produced by `bench/bench_bundle.py`.",
        "",
        "| operation | median s | median MB/s | vs raw (median) | best s | best MB/s | vs raw (best) | CPU s (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, (label, rk) in labels.items():
        r = res[k]
        vm, vb = (f"{ratio[rk]['median']:.2f}", f"{ratio[rk]['best']:.2f}") if rk else ("1.00", "1.00")
        md.append(
            f"| {label} | {r['median_s']} | {r['mb_per_s_median']} | {vm} | {r['best_s']} | {r['mb_per_s_best']} | {vb} | {r['cpu_s_median']} |"
        )
    enc, dec = ratio["encrypt"], ratio["decrypt"]
    md += [
        "",
        f"Goal >= 0.70 of raw on the median: **{'met' if goal_met else 'NOT met'}** (encrypt {enc['median']:.2f}, decrypt {dec['median']:.2f}; "
        f"median of per-round paired ratios {enc['paired_median']:.2f} / {dec['paired_median']:.2f}; best of rounds "
        f"{enc['best']:.2f} / {dec['best']:.2f}). In-memory AES-256-GCM without any I/O: {mem_mbps:.0f} MB/s (ceiling).",
        "",
        f"Peak Python heap while sealing / opening the whole model: {enc_peak / 2**20:.1f} MiB / {dec_peak / 2**20:.1f} MiB "
        "(flat: a few chunk buffers, independent of model size).",
        "",
        "The extra cost over raw is SHA-256 of every plaintext (the manifest's digests, which the owner signs); it runs on a",
        "worker thread in parallel with sealing and I/O, so the bundle needs a second core: its CPU time is about twice",
        "raw's. On this shared 2-CPU machine other jobs compete for that core, which is why the medians trail the best rounds.",
        "",
    ]
    (RESULTS / "bundle.md").write_text("\n".join(md))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
