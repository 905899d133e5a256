"""Model bundles: round trip, every tamper named (file, chunk), no partial plaintext, signatures."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybroker import bundle_files as bf
from ratls import bundle as B
from ratls.cli import main as ratls_main
from ratls.errors import RatlsError, Reason, UsageError

CS = 1024  # small chunks so a few KB make many chunks
KEY = bytes(range(32))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    src = tmp_path / "model"
    (src / "1").mkdir(parents=True)
    (src / "1" / "model.onnx").write_bytes(os.urandom(5 * CS + 17))
    (src / "1" / "twin.bin").write_bytes(os.urandom(5 * CS + 17))  # same size: for the swapped-file row
    (src / "config.pbtxt").write_text('name: "m"\nbackend: "onnxruntime"\n')
    (src / "empty").write_bytes(b"")
    return src


@pytest.fixture
def owner() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def bundle(tmp_path: Path, model: Path, owner) -> Path:
    out = tmp_path / "m.rmb"
    bf.encrypt_dir(model, out, KEY, signer=owner, chunk_size=CS)
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _entries(bundle: Path) -> dict[str, B.FileEntry]:
    with open(bundle, "rb") as f:
        r = B.BundleReader(f)
        return {e.path: e for e in r.open_manifest(KEY).files}


def _chunk_at(entry: B.FileEntry, i: int) -> tuple[int, int]:
    start = entry.offset + i * (CS + B.TAG_LEN)
    return start, min(CS, entry.size - i * CS) + B.TAG_LEN


def _assert_nothing_written(tmp_path: Path, out: Path) -> None:
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.rglob(f"{bf.STAGING_PREFIX}*")]


def test_round_trip_signed(tmp_path, model, bundle, owner):
    res = bf.decrypt_to_dir(bundle, KEY, tmp_path / "out", signer=owner.public_key())
    assert _tree(tmp_path / "out") == _tree(model)
    assert res.signer_key_id == B.key_id(owner.public_key())
    assert res.manifest.total_size == sum(len(v) for v in _tree(model).values())


def test_decrypt_into_existing_empty_dir_like_a_tmpfs_mount(tmp_path, model, bundle, owner):
    out = tmp_path / "mnt"
    out.mkdir()
    bf.decrypt_to_dir(bundle, KEY, out, signer=owner.public_key())
    assert _tree(out) == _tree(model)
    assert not [n for n in os.listdir(out) if n.startswith(bf.STAGING_PREFIX)]


def test_refuses_non_empty_output(tmp_path, bundle, owner):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "other-model").write_text("x")
    with pytest.raises(UsageError):
        bf.decrypt_to_dir(bundle, KEY, out, signer=owner.public_key())


def test_p384_signer(tmp_path, model):
    k = ec.generate_private_key(ec.SECP384R1())
    out = tmp_path / "p.rmb"
    bf.encrypt_dir(model, out, KEY, chunk_size=CS)
    bf.sign_file(out, k)
    kid, _ = bf.verify_file(out, k.public_key())
    assert kid == B.key_id(k.public_key())


def test_resign_replaces_signature(tmp_path, bundle, owner):
    other = ed25519.Ed25519PrivateKey.generate()
    bf.sign_file(bundle, other)
    bf.verify_file(bundle, other.public_key())
    with pytest.raises(B.BundleError) as e:
        bf.verify_file(bundle, owner.public_key())
    assert e.value.reason is Reason.BAD_SIGNATURE


def test_wrong_signer_nothing_written(tmp_path, bundle):
    other = ed25519.Ed25519PrivateKey.generate()
    out = tmp_path / "out"
    with pytest.raises(B.BundleError) as e:
        bf.decrypt_to_dir(bundle, KEY, out, signer=other.public_key())
    assert e.value.reason is Reason.BAD_SIGNATURE and e.value.step == "signature"
    _assert_nothing_written(tmp_path, out)


def test_unsigned_refused_when_signer_required(tmp_path, model):
    out = tmp_path / "u.rmb"
    bf.encrypt_dir(model, out, KEY, chunk_size=CS)
    with pytest.raises(B.BundleError) as e:
        bf.verify_file(out, ed25519.Ed25519PrivateKey.generate().public_key())
    assert e.value.reason is Reason.UNSIGNED


def test_other_key_types_refused():
    k = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UsageError):
        B.make_signature_block(k, b"x")


def test_wrong_key(tmp_path, bundle, owner):
    out = tmp_path / "out"
    with pytest.raises(B.BundleError) as e:
        bf.decrypt_to_dir(bundle, bytes(32), out, signer=owner.public_key())
    assert e.value.reason is Reason.WRONG_KEY
    _assert_nothing_written(tmp_path, out)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _swap(path: Path, a: tuple[int, int], b: tuple[int, int]) -> None:
    data = bytearray(path.read_bytes())
    (ao, al), (bo, bl) = a, b
    assert al == bl
    data[ao : ao + al], data[bo : bo + bl] = data[bo : bo + bl], data[ao : ao + al]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "path", "chunk"),
    [
        ("flip-chunk-0", "1/model.onnx", 0),
        ("flip-chunk-3", "1/model.onnx", 3),
        ("flip-last-chunk", "1/model.onnx", 5),
        ("flip-tag", "config.pbtxt", 0),
        ("reorder-chunks-1-2", "1/model.onnx", 1),
        ("swap-last-with-first", "1/twin.bin", 0),
        ("swap-files", "1/model.onnx", 0),
        ("swap-chunk-across-files", "1/model.onnx", 2),
    ],
)
def test_tamper_named_file_and_chunk(tmp_path, bundle, owner, case, path, chunk):
    ents = _entries(bundle)
    e = ents[path]
    if case.startswith("flip-chunk") or case == "flip-last-chunk":
        off, ln = _chunk_at(e, chunk)
        _flip(bundle, off + ln // 2)
    elif case == "flip-tag":
        off, ln = _chunk_at(e, chunk)
        _flip(bundle, off + ln - 1)
    elif case == "reorder-chunks-1-2":
        _swap(bundle, _chunk_at(e, 1), _chunk_at(e, 2))
    elif case == "swap-last-with-first":  # sizes differ, so swap full chunks 0 and 1 of twin, expect chunk 0
        _swap(bundle, _chunk_at(e, 0), _chunk_at(e, 1))
    elif case == "swap-files":
        t = ents["1/twin.bin"]
        n = B.sealed_size(e.size, CS)
        _swap(bundle, (e.offset, n), (t.offset, n))
    elif case == "swap-chunk-across-files":
        _swap(bundle, _chunk_at(e, 2), _chunk_at(ents["1/twin.bin"], 2))
    out = tmp_path / "out"
    with pytest.raises(B.BundleError) as exc:
        bf.decrypt_to_dir(bundle, KEY, out, signer=owner.public_key())
    err = exc.value
    assert err.reason is Reason.TAMPERED
    assert (err.path, err.chunk) == (path, chunk)
    assert err.step == "decrypt"
    _assert_nothing_written(tmp_path, out)


def test_truncated_file_data_named(tmp_path, bundle, owner):
    """Cut the bundle inside a file's data and re-append the tail: the footer no longer adds up."""
    data = bundle.read_bytes()
    e = _entries(bundle)["1/model.onnx"]
    off, _ = _chunk_at(e, 4)
    bundle.write_bytes(data[:off] + data[off + 10 :])
    with pytest.raises(B.BundleError) as exc:
        bf.decrypt_to_dir(bundle, KEY, tmp_path / "out", signer=owner.public_key())
    assert exc.value.reason is Reason.TRUNCATED
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_truncated_tail(tmp_path, bundle, owner):
    data = bundle.read_bytes()
    bundle.write_bytes(data[:-100])
    with pytest.raises(B.BundleError) as exc:
        bf.verify_file(bundle, owner.public_key())
    assert exc.value.reason is Reason.TRUNCATED


def test_truncated_stream_names_chunk(tmp_path, bundle):
    """A stream that ends early inside the data (what a short read gives) names the chunk."""
    data = bundle.read_bytes()
    r = B.BundleReader(io.BytesIO(data))
    m = r.open_manifest(KEY)
    e = next(f for f in m.files if f.path == "1/model.onnx")
    off, _ = _chunk_at(e, 3)

    class Short(io.BytesIO):
        def readinto(self, b):  # type: ignore[override]
            if self.tell() >= off:
                return 0
            return super().readinto(memoryview(b)[: max(0, min(len(b), off - self.tell()))])

    r._s = Short(data)
    with pytest.raises(B.BundleError) as exc:
        r.decrypt_file(e, io.BytesIO())
    assert (exc.value.reason, exc.value.path, exc.value.chunk) == (Reason.TRUNCATED, "1/model.onnx", 3)


def _craft(files: list[dict], key: bytes = KEY) -> bytes:
    """A bundle whose manifest says whatever the test wants (authentic under ``key``)."""
    bid = b"\x07" * 16
    h = B.Header(CS, bid, B.key_commitment(key, bid)).pack()
    doc = {"format": B.FORMAT_NAME, "version": 1, "bundle_id": bid.hex(), "chunk_size": CS, "files": files}
    sealed = AESGCM(B.manifest_key(key, bid)).encrypt(B.MANIFEST_NONCE, json.dumps(doc).encode(), h)
    return h + sealed + B.Footer(len(h), len(sealed), 0).pack()


@pytest.mark.parametrize("bad", ["../evil", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\..\\b", "a/\x00b", ""])
def test_path_traversal_in_manifest_refused(tmp_path, bad):
    raw = _craft([{"path": bad, "size": 0, "sha256": "0" * 64, "salt": "0" * 64, "mode": 0o644}])
    (tmp_path / "evil.rmb").write_bytes(raw)
    with pytest.raises(B.BundleError) as exc:
        bf.decrypt_to_dir(tmp_path / "evil.rmb", KEY, tmp_path / "out", require_signature=False)
    assert exc.value.reason is Reason.UNSAFE_PATH
    assert not (tmp_path.parent / "evil").exists()
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_file_and_directory_with_same_name_refused(tmp_path):
    ent = {"size": 0, "sha256": "0" * 64, "salt": "0" * 64, "mode": 0o644}
    raw = _craft([{"path": "a", **ent}, {"path": "a/b", **ent}])
    with pytest.raises(B.BundleError) as exc:
        B.BundleReader(io.BytesIO(raw)).open_manifest(KEY)
    assert exc.value.reason is Reason.UNSAFE_PATH


def test_digest_mismatch_named(tmp_path):
    """A manifest whose SHA-256 differs from the content (e.g. a key holder re-sealed a file)."""
    bid = b"\x07" * 16
    buf = io.BytesIO()
    w = B.BundleWriter(buf, KEY, chunk_size=CS, random=lambda n: bid if n == 16 else b"\x01" * n)
    w.add_file("w.bin", io.BytesIO(b"abc"), 3)
    m = w.finish()
    raw = buf.getvalue()
    e = m.files[0]
    forged = _craft([{**e.to_dict(), "sha256": "1" * 64}])
    ct = raw[B.HEADER_LEN : B.HEADER_LEN + B.sealed_size(3, CS)]
    forged = forged[: B.HEADER_LEN] + ct + forged[B.HEADER_LEN :]
    off = B.HEADER_LEN + len(ct)
    forged = forged[: -B.FOOTER_LEN] + B.Footer(off, len(forged) - off - B.FOOTER_LEN, 0).pack()
    (tmp_path / "f.rmb").write_bytes(forged)
    with pytest.raises(B.BundleError) as exc:
        bf.decrypt_to_dir(tmp_path / "f.rmb", KEY, tmp_path / "out", require_signature=False)
    assert (exc.value.reason, exc.value.path, exc.value.step) == (Reason.TAMPERED, "w.bin", "digest")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_nonces_and_keys_never_repeat(model, tmp_path):
    """Two bundles of the same model under the same key share no file key (random salts, ids)."""
    a, b = tmp_path / "a.rmb", tmp_path / "b.rmb"
    bf.encrypt_dir(model, a, KEY, chunk_size=CS)
    bf.encrypt_dir(model, b, KEY, chunk_size=CS)
    ea, eb = _entries(a), _entries(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        ida, idb = B.BundleReader(fa).header.bundle_id, B.BundleReader(fb).header.bundle_id
    keys = {B.file_key(KEY, ida, e.salt, p) for p, e in ea.items()} | {B.file_key(KEY, idb, e.salt, p) for p, e in eb.items()}
    assert len(keys) == len(ea) + len(eb)


def test_symlink_in_source_refused(tmp_path, model):
    (model / "link").symlink_to("/etc/passwd")
    with pytest.raises(UsageError) as exc:
        bf.encrypt_dir(model, tmp_path / "x.rmb", KEY)
    assert exc.value.reason is Reason.UNSAFE_PATH
    assert not (tmp_path / "x.rmb").exists()


def test_unthreaded_matches_threaded(tmp_path, model, owner):
    a = tmp_path / "a.rmb"
    bf.encrypt_dir(model, a, KEY, signer=owner, chunk_size=CS, threaded=False)
    bf.decrypt_to_dir(a, KEY, tmp_path / "o", signer=owner.public_key(), threaded=True)
    assert _tree(tmp_path / "o") == _tree(model)


def test_hash_pipeline_never_hashes_a_reused_buffer(monkeypatch):
    """The caller refills its buffers in rotation while the worker hashes: with a worker slower than
    the caller, ``reserve`` must hold the caller back, so the digest is that of the data fed."""
    import hashlib
    import time

    real = hashlib.sha256

    class SlowSha256:
        def __init__(self):
            self._h = real()

        def update(self, data):
            time.sleep(0.002)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr(B.hashlib, "sha256", SlowSha256)
    depth, chunks = 3, [os.urandom(4096) for _ in range(40)]
    bufs = [bytearray(4096) for _ in range(depth)]
    with B._Hasher(True, depth) as h:
        for i, c in enumerate(chunks):
            h.reserve()
            bufs[i % depth][:] = c
            h.update(memoryview(bufs[i % depth]))
        got = h.hexdigest()
    assert got == real(b"".join(chunks)).hexdigest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_flip_is_refused(tmp_path_factory, data):
    """Header, chunks, tags, manifest, signature, footer: flipping any one byte of a signed bundle
    must make decrypt-with-signer fail with a typed error, and leave nothing behind."""
    d = tmp_path_factory.mktemp("flip")
    src = d / "m"
    src.mkdir()
    (src / "a").write_bytes(b"A" * (2 * CS + 5))
    (src / "b").write_bytes(b"")
    owner = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x05" * 32)
    bf.encrypt_dir(src, d / "x.rmb", KEY, signer=owner, chunk_size=CS)
    size = (d / "x.rmb").stat().st_size
    pos = data.draw(st.integers(0, size - 1))
    _flip(d / "x.rmb", pos)
    with pytest.raises(RatlsError):
        bf.decrypt_to_dir(d / "x.rmb", KEY, d / "out", signer=owner.public_key())
    assert not (d / "out").exists()


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=400))
def test_reader_on_garbage_raises_only_bundle_error(raw):
    try:
        r = B.BundleReader(io.BytesIO(raw))
        r.open_manifest(KEY)
    except B.BundleError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
)
def test_manifest_parser_on_any_json(doc):
    h = B.Header(CS, b"\x07" * 16, b"\x00" * 32)
    try:
        B.parse_manifest(json.dumps(doc).encode(), h)
    except B.BundleError:
        pass


def test_footer_reserved_must_be_zero(bundle, owner):
    data = bytearray(bundle.read_bytes())
    struct.pack_into(">I", data, len(data) - 12, 1)
    bundle.write_bytes(bytes(data))
    with pytest.raises(B.BundleError) as exc:
        bf.verify_file(bundle, owner.public_key())
    assert exc.value.reason is Reason.MUST_BE_ZERO


# -- the CLI -----------------------------------------------------------------------------------


def _pem(tmp_path: Path, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization as s

    priv, pub = tmp_path / "owner.pem", tmp_path / "owner.pub"
    priv.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_cli_encrypt_sign_verify_decrypt(tmp_path, model, capsys):
    priv, pub = _pem(tmp_path, ec.generate_private_key(ec.SECP384R1()))
    kf, b, out = tmp_path / "k.key", tmp_path / "m.rmb", tmp_path / "dec"
    assert ratls_main(["model", "encrypt", str(model), "-o", str(b), "--key-out", str(kf)]) == 0
    assert kf.stat().st_mode & 0o777 == 0o600 and len(kf.read_bytes()) == 32
    assert ratls_main(["model", "verify", str(b), "--signer", str(pub)]) == 1  # not signed yet
    assert ratls_main(["model", "sign", str(b), "--key", str(priv)]) == 0
    assert ratls_main(["model", "verify", str(b), "--signer", str(pub)]) == 0
    assert ratls_main(["model", "decrypt", str(b), "--key", str(kf), "-o", str(out), "--signer", str(pub)]) == 0
    assert _tree(out) == _tree(model)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["action"] for x in lines] == ["encrypt", "sign", "verify", "decrypt"]
    assert lines[3]["signer_key_id"] == lines[1]["signer_key_id"]


def test_cli_key_out_refuses_to_overwrite(tmp_path, model):
    kf = tmp_path / "k.key"
    kf.write_bytes(b"x")
    assert ratls_main(["model", "encrypt", str(model), "-o", str(tmp_path / "b"), "--key-out", str(kf)]) == 2
    assert kf.read_bytes() == b"x"


@pytest.mark.parametrize("failure", ["missing-source", "symlink-in-model", "output-dir-missing"])
def test_cli_key_out_removed_when_encryption_fails(tmp_path, model, failure, capsys):
    """A key that sealed nothing must not be left behind (it would be mistaken for the bundle's key)."""
    src, out = model, tmp_path / "b.rmb"
    if failure == "missing-source":
        src = tmp_path / "no-such-model"
    elif failure == "symlink-in-model":
        (model / "link").symlink_to(model / "config.pbtxt")
    else:
        out = tmp_path / "no-such-dir" / "b.rmb"
    kf = tmp_path / "k.key"
    assert ratls_main(["model", "encrypt", str(src), "-o", str(out), "--key-out", str(kf)]) == 2
    assert not kf.exists(), "the new key file was left behind"
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert capsys.readouterr().out == ""


def test_cli_hex_key_and_tampered_exit_1(tmp_path, model, capsys):
    kf = tmp_path / "k.hex"
    kf.write_text(KEY.hex() + "\n")
    b = tmp_path / "m.rmb"
    assert ratls_main(["model", "encrypt", str(model), "-o", str(b), "--key", str(kf), "--chunk-size", str(CS)]) == 0
    e = _entries(b)["config.pbtxt"]
    _flip(b, e.offset + 3)
    assert ratls_main(["model", "decrypt", str(b), "--key", str(kf), "-o", str(tmp_path / "o")]) == 1
    assert "config.pbtxt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
