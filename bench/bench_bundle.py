#!/usr/bin/env python3
"""Bundle encrypt/decrypt throughput against raw AES-256-GCM on the same data, in the same run.

The baseline does the least a chunked AES-256-GCM file encryptor can do with the same I/O: read
each file in 1 MiB chunks into a reused buffer, ``AESGCM.encrypt_into`` a reused buffer with a
counter nonce, write the ciphertext (and the reverse for decrypt), as the bundle code does. The bundle adds per-file key derivation, the
associated data, the SHA-256 of every plaintext, the manifest, the signature and (for decrypt)
the staging directory and rename. Goal: bundle >= 70% of raw.

Also reported: pure in-memory AES-GCM (no I/O) as the ceiling, the bundle without the hashing
thread, and the peak Python heap while sealing a large file (flat memory).

    .venv/bin/python bench/bench_bundle.py [--mb 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="model size in MiB (default 1024)")
    ap.add_argument("--repeat", type=int, default=3)
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
        runs: dict[str, list[float]] = {
            k: [] for k in ("raw_encrypt", "bundle_encrypt", "bundle_encrypt_unthreaded", "raw_decrypt", "bundle_decrypt")
        }
        for r in range(args.repeat):
            # interleave raw and bundle so background load hits both alike
            runs["raw_encrypt"].append(timed(lambda: raw_encrypt(files, work / "raw.bin")))
            runs["bundle_encrypt"].append(timed(lambda: bf.encrypt_dir(work / "src", work / "b.rmb", KEY, signer=owner)))
            runs["bundle_encrypt_unthreaded"].append(
                timed(lambda: bf.encrypt_dir(work / "src", work / "b2.rmb", KEY, signer=owner, threaded=False))
            )
            shutil.rmtree(work / "rawdec", ignore_errors=True)
            runs["raw_decrypt"].append(timed(lambda: raw_decrypt(work / "raw.bin", sizes, work / "rawdec")))
            shutil.rmtree(work / f"dec{r}", ignore_errors=True)
            runs["bundle_decrypt"].append(
                timed(lambda r=r: bf.decrypt_to_dir(work / "b.rmb", KEY, work / f"dec{r}", signer=owner.public_key()))
            )
            shutil.rmtree(work / f"dec{r}", ignore_errors=True)
            os.unlink(work / "b2.rmb")
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

    def mbps(k: str) -> dict:
        best = min(runs[k])
        return {"best_s": round(best, 4), "median_s": round(statistics.median(runs[k]), 4), "mb_per_s": round(total / best / 1e6, 1)}

    res = {k: mbps(k) for k in runs}
    enc_ratio = res["bundle_encrypt"]["mb_per_s"] / res["raw_encrypt"]["mb_per_s"]
    dec_ratio = res["bundle_decrypt"]["mb_per_s"] / res["raw_decrypt"]["mb_per_s"]
    doc = {
        "bench": "bundle",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
        "model_bytes": total,
        "files": len(files),
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "output_fs": args.out_dir or tempfile.gettempdir(),
        "repeat": args.repeat,
        "results": res,
        "in_memory_aes_gcm_mb_per_s": round(mem_mbps, 1),
        "ratio_encrypt_vs_raw": round(enc_ratio, 3),
        "ratio_decrypt_vs_raw": round(dec_ratio, 3),
        "goal_ratio": 0.7,
        "goal_met": enc_ratio >= 0.7 and dec_ratio >= 0.7,
        "peak_python_heap_bytes": {"encrypt": enc_peak, "decrypt": dec_peak},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bundle.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [
        "# Bundle throughput vs raw AES-256-GCM",
        "",
        f"{total / 1e6:.0f} MB model ({len(files)} files), 1 MiB chunks, outputs on `{doc['output_fs']}`, best of {args.repeat}, "
        f"{os.cpu_count()} CPUs (load average {doc['host']['loadavg_1m']} at the end: other jobs share them), {doc['when']}. Produced by `bench/bench_bundle.py`.",
        "",
        "| operation | best s | MB/s | vs raw |",
        "| --- | ---: | ---: | ---: |",
        f"| raw AES-256-GCM encrypt (same I/O) | {res['raw_encrypt']['best_s']} | {res['raw_encrypt']['mb_per_s']} | 1.00 |",
        f"| bundle encrypt (+ sign) | {res['bundle_encrypt']['best_s']} | {res['bundle_encrypt']['mb_per_s']} | {enc_ratio:.2f} |",
        f"| bundle encrypt, hashing not pipelined | {res['bundle_encrypt_unthreaded']['best_s']} | {res['bundle_encrypt_unthreaded']['mb_per_s']} | "
        f"{res['bundle_encrypt_unthreaded']['mb_per_s'] / res['raw_encrypt']['mb_per_s']:.2f} |",
        f"| raw AES-256-GCM decrypt (same I/O) | {res['raw_decrypt']['best_s']} | {res['raw_decrypt']['mb_per_s']} | 1.00 |",
        f"| bundle decrypt (verify + stage + rename) | {res['bundle_decrypt']['best_s']} | {res['bundle_decrypt']['mb_per_s']} | {dec_ratio:.2f} |",
        "",
        f"In-memory AES-256-GCM without any I/O: {mem_mbps:.0f} MB/s (ceiling). Goal >= 0.70 of raw: "
        f"**{'met' if doc['goal_met'] else 'NOT met'}** (encrypt {enc_ratio:.2f}, decrypt {dec_ratio:.2f}).",
        "",
        f"Peak Python heap while sealing / opening the whole model: {enc_peak / 2**20:.1f} MiB / {dec_peak / 2**20:.1f} MiB "
        "(flat: two chunk buffers and one chunk in flight, independent of model size).",
        "",
        "The extra cost over raw is SHA-256 of every plaintext (the manifest's digests, which the owner signs); it runs on a",
        "worker thread in parallel with sealing and I/O. On this 2-CPU machine other processes compete for the second core.",
        "",
    ]
    (RESULTS / "bundle.md").write_text("\n".join(md))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
