"""Encrypted, authenticated, signed model bundles (format: ``docs/bundle-format.md``).

A bundle is one file: a fixed header, every model file as a run of AES-256-GCM chunks, the
manifest (itself AES-GCM sealed), an optional owner signature, and a fixed footer. The core here
works on binary streams handed in by the caller (``readinto``/``write``/``seek``): it never opens
a path, reads a clock or walks a directory; ``keybroker.bundle_files`` is that edge.

Why each piece is there:

* one content key per bundle, one HKDF-derived key per file (random 32-byte salt + bundle id +
  path), and the chunk index as the GCM nonce: a (key, nonce) pair is never reused, without a
  nonce counter that must survive across processes;
* each chunk's associated data binds the bundle id, the file's path, the chunk index and a
  last-chunk flag, so a swapped, reordered, dropped or truncated chunk fails to open and the error
  names the file and the chunk;
* the manifest lists every file's path, size and SHA-256 of its plaintext; the owner signs the
  header (which carries a key commitment) and the sealed manifest, so ``verify`` needs no key and
  a decrypt under any other key, or of any other content, is refused.

Memory stays flat: every file is processed one chunk at a time into a few reused buffers.
SHA-256 is slower than AES-GCM with AES-NI, so the hashes run on a worker thread (hashlib drops
the GIL) while the caller seals and writes: up to ``PIPELINE_DEPTH`` chunks ahead, so that a
worker descheduled for a moment (a shared machine) does not stall the caller at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import EvidenceError, Reason, UsageError

# -- format constants (named as docs/bundle-format.md names them) ------------------------------
MAGIC = b"RATLSBDL"
FOOTER_MAGIC = b"RATLSEND"
VERSION = 1
HEADER_LEN = 64
HEADER_FMT = ">8sHHI16s32s"  # magic, version, header_len, chunk_size, bundle_id, key_commitment
FOOTER_LEN = 32
FOOTER_FMT = ">QQII8s"  # manifest_offset, manifest_len, signature_len, reserved(0), magic
KEY_LEN = 32
BUNDLE_ID_LEN = 16
SALT_LEN = 32
TAG_LEN = 16
NONCE_LEN = 12
DEFAULT_CHUNK_SIZE = 1 << 20
#: plaintext chunk buffers per file being sealed or opened: how far the caller may run ahead of the hash
PIPELINE_DEPTH = 4
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 64 << 20
MAX_MANIFEST_LEN = 64 << 20
MAX_SIGNATURE_LEN = 4096
MAX_PATH_LEN = 4096
FORMAT_NAME = "ratls-model-bundle"

LABEL = b"ratls-bundle-v1"
INFO_FILE_KEY = LABEL + b" file-key"
INFO_MANIFEST_KEY = LABEL + b" manifest-key"
INFO_COMMITMENT = LABEL + b" key-commitment"
SIGNATURE_CONTEXT = LABEL + b" signature\x00"
MANIFEST_NONCE = bytes(NONCE_LEN)

ALG_ED25519 = "ed25519"
ALG_P384 = "ecdsa-p384-sha384"

assert struct.calcsize(HEADER_FMT) == HEADER_LEN
assert struct.calcsize(FOOTER_FMT) == FOOTER_LEN


class BundleError(EvidenceError):
    """The bundle is malformed, tampered, truncated, unsigned or signed by someone else.

    The bundle comes from untrusted storage, so this is the "peer's bad input" family.
    ``path`` and ``chunk`` name where it went wrong when that is known.
    """

    def __init__(self, reason: Reason, detail: str, *, step: str | None = None, path: str | None = None, chunk: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"file {path!r}" + (f" chunk {chunk}" if chunk is not None else "") + ": "
        super().__init__(reason, where + detail, step=step)
        self.path = path
        self.chunk = chunk

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(super().to_dict())
        d["path"] = self.path
        d["chunk"] = self.chunk
        return d


# -- small pure pieces -------------------------------------------------------------------------


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(key)


def key_commitment(key: bytes, bundle_id: bytes) -> bytes:
    """32 bytes that only ``key`` produces for this bundle: GCM is not key-committing, this is."""
    return _hkdf(key, bundle_id, INFO_COMMITMENT)


def file_key(key: bytes, bundle_id: bytes, salt: bytes, path: str) -> bytes:
    return _hkdf(key, salt, INFO_FILE_KEY + b"\x00" + bundle_id + path.encode())


def manifest_key(key: bytes, bundle_id: bytes) -> bytes:
    return _hkdf(key, bundle_id, INFO_MANIFEST_KEY)


def chunk_nonce(index: int) -> bytes:
    """Chunk index as the 96-bit nonce: unique because every file has its own derived key."""
    return struct.pack(">IQ", 0, index)


def chunk_aad(bundle_id: bytes, path: str, index: int, last: bool) -> bytes:
    p = path.encode()
    return LABEL + bundle_id + struct.pack(">H", len(p)) + p + struct.pack(">QB", index, 1 if last else 0)


def chunk_count(size: int, chunk_size: int) -> int:
    """An empty file still has one (empty, last) chunk, so truncating it away is detected."""
    return max(1, -(-size // chunk_size))


def sealed_size(size: int, chunk_size: int) -> int:
    return size + TAG_LEN * chunk_count(size, chunk_size)


_BAD_COMPONENT = re.compile(r"[\x00-\x1f\\]")


def check_path(path: Any) -> str:
    """A manifest path must stay inside the output directory: relative, '/'-separated, no '..'."""
    if not isinstance(path, str) or not path:
        raise BundleError(Reason.UNSAFE_PATH, f"manifest path must be a non-empty string, got {path!r}", step="manifest")
    if len(path.encode()) > MAX_PATH_LEN or path.startswith("/") or _BAD_COMPONENT.search(path):
        raise BundleError(Reason.UNSAFE_PATH, f"unsafe manifest path {path!r}", step="manifest")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BundleError(Reason.UNSAFE_PATH, f"unsafe manifest path {path!r} (component {part!r})", step="manifest")
    return path


# -- header, footer, manifest ------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    chunk_size: int
    bundle_id: bytes
    key_commitment: bytes

    def pack(self) -> bytes:
        return struct.pack(HEADER_FMT, MAGIC, VERSION, HEADER_LEN, self.chunk_size, self.bundle_id, self.key_commitment)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        if len(raw) < HEADER_LEN:
            raise BundleError(Reason.TRUNCATED, f"header is {len(raw)} bytes, need {HEADER_LEN}", step="header")
        magic, version, hlen, chunk_size, bid, commit = struct.unpack(HEADER_FMT, raw[:HEADER_LEN])
        if magic != MAGIC:
            raise BundleError(Reason.BAD_FORMAT, f"not a ratls model bundle (magic {magic!r})", step="header")
        if version != VERSION or hlen != HEADER_LEN:
            raise BundleError(
                Reason.UNSUPPORTED_VERSION, f"bundle version {version} header {hlen}, expected {VERSION}/{HEADER_LEN}", step="header"
            )
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise BundleError(Reason.BAD_FORMAT, f"chunk size {chunk_size} outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]", step="header")
        return cls(chunk_size, bid, commit)


@dataclass(frozen=True)
class Footer:
    manifest_offset: int
    manifest_len: int
    signature_len: int

    def pack(self) -> bytes:
        return struct.pack(FOOTER_FMT, self.manifest_offset, self.manifest_len, self.signature_len, 0, FOOTER_MAGIC)

    @classmethod
    def unpack(cls, raw: bytes, total: int) -> Footer:
        if len(raw) != FOOTER_LEN:
            raise BundleError(Reason.TRUNCATED, "footer missing", step="footer")
        off, mlen, slen, reserved, magic = struct.unpack(FOOTER_FMT, raw)
        if magic != FOOTER_MAGIC:
            raise BundleError(Reason.TRUNCATED, f"footer magic {magic!r}: bundle truncated or not finished", step="footer")
        if reserved:
            raise BundleError(Reason.MUST_BE_ZERO, "footer reserved field is not zero", step="footer")
        if mlen > MAX_MANIFEST_LEN or slen > MAX_SIGNATURE_LEN or mlen < TAG_LEN:
            raise BundleError(Reason.BAD_FORMAT, f"manifest length {mlen} / signature length {slen} out of range", step="footer")
        if off < HEADER_LEN or off + mlen + slen + FOOTER_LEN != total:
            raise BundleError(
                Reason.TRUNCATED,
                f"footer offsets ({off}+{mlen}+{slen}+{FOOTER_LEN}) do not add up to the bundle size {total}",
                step="footer",
            )
        return cls(off, mlen, slen)


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    salt: bytes
    mode: int
    #: where its first sealed chunk starts in the bundle (derived, not stored)
    offset: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "salt": self.salt.hex(), "mode": self.mode}


@dataclass(frozen=True)
class Manifest:
    bundle_id: bytes
    chunk_size: int
    files: tuple[FileEntry, ...]

    def encode(self) -> bytes:
        doc = {
            "format": FORMAT_NAME,
            "version": VERSION,
            "bundle_id": self.bundle_id.hex(),
            "chunk_size": self.chunk_size,
            "files": [f.to_dict() for f in self.files],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def data_end(self) -> int:
        return HEADER_LEN + sum(sealed_size(f.size, self.chunk_size) for f in self.files)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id.hex(), "chunk_size": self.chunk_size, "files": len(self.files), "bytes": self.total_size}


def parse_manifest(raw: bytes, header: Header) -> Manifest:
    """Decode and validate the (already authenticated) manifest against its header."""

    def bad(detail: str, reason: Reason = Reason.BAD_FORMAT) -> BundleError:
        return BundleError(reason, detail, step="manifest")

    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise bad(f"manifest is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME or doc.get("version") != VERSION:
        raise bad("manifest format/version is not ratls-model-bundle v1")
    if doc.get("bundle_id") != header.bundle_id.hex() or doc.get("chunk_size") != header.chunk_size:
        raise bad("manifest bundle id / chunk size differ from the header", Reason.TAMPERED)
    files = doc.get("files")
    if not isinstance(files, list):
        raise bad("manifest has no file list")
    entries: list[FileEntry] = []
    seen: set[str] = set()
    offset = HEADER_LEN
    for item in files:
        if not isinstance(item, dict):
            raise bad("manifest file entry is not an object")
        path = check_path(item.get("path"))
        size, digest, salt, mode = item.get("size"), item.get("sha256"), item.get("salt"), item.get("mode")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"file {path!r}: bad size {size!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise bad(f"file {path!r}: bad sha256 {digest!r}")
        if not isinstance(salt, str) or not re.fullmatch(r"[0-9a-f]{64}", salt):
            raise bad(f"file {path!r}: bad salt")
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            raise bad(f"file {path!r}: bad mode {mode!r}")
        if path in seen:
            raise bad(f"file {path!r} listed twice", Reason.UNSAFE_PATH)
        seen.add(path)
        entries.append(FileEntry(path, size, digest, bytes.fromhex(salt), mode, offset))
        offset += sealed_size(size, header.chunk_size)
    for p in seen:  # a file may not also be a directory ("a" and "a/b")
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise bad(f"file {'/'.join(parts[:i])!r} is also a directory of {p!r}", Reason.UNSAFE_PATH)
    return Manifest(header.bundle_id, header.chunk_size, tuple(entries))


def signed_message(header_raw: bytes, sealed_manifest: bytes) -> bytes:
    return SIGNATURE_CONTEXT + header_raw + sealed_manifest


# -- signatures --------------------------------------------------------------------------------

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def load_private_key(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(Reason.CONFIG_INVALID, f"signing key is not an unencrypted PEM private key: {e}") from e
    _alg_of(key)
    return key  # type: ignore[return-value]


def load_public_key(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        try:  # a certificate is accepted too: owners often ship one
            from cryptography import x509

            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as e:
            raise UsageError(Reason.CONFIG_INVALID, f"signer is not a PEM public key or certificate: {e}") from e
    _alg_of(key)
    return key  # type: ignore[return-value]


def _alg_of(key: Any) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ALG_ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP384R1):
        return ALG_P384
    raise UsageError(Reason.CONFIG_INVALID, f"owner keys are Ed25519 or EC P-384, got {type(key).__name__}")


def key_id(public_key: PublicKey) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def make_signature_block(private_key: PrivateKey, message: bytes) -> bytes:
    alg = _alg_of(private_key)
    sig = private_key.sign(message) if alg == ALG_ED25519 else private_key.sign(message, ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg]
    block = {"alg": alg, "key_id": key_id(private_key.public_key()), "sig": base64.b64encode(sig).decode()}
    return json.dumps(block, sort_keys=True, separators=(",", ":")).encode()


def parse_signature_block(raw: bytes) -> dict[str, Any]:
    try:
        block = json.loads(raw)
        if not isinstance(block, dict) or block.get("alg") not in (ALG_ED25519, ALG_P384):
            raise ValueError("unknown alg")
        block["sig"] = base64.b64decode(block["sig"], validate=True)
        if not isinstance(block.get("key_id"), str):
            raise ValueError("key_id")
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(Reason.BAD_FORMAT, f"signature block does not parse: {e}", step="signature") from e
    return block


def check_signature(block_raw: bytes, message: bytes, public_key: PublicKey) -> str:
    """Verify the owner's signature; returns the signer's key id. Raises BundleError."""
    if not block_raw:
        raise BundleError(Reason.UNSIGNED, "bundle is not signed", step="signature")
    block = parse_signature_block(block_raw)
    alg = _alg_of(public_key)
    kid = key_id(public_key)
    if block["alg"] != alg or block["key_id"] != kid:
        raise BundleError(
            Reason.BAD_SIGNATURE,
            f"signed by key {block['key_id'][:16]}… ({block['alg']}), expected signer {kid[:16]}… ({alg})",
            step="signature",
        )
    try:
        if alg == ALG_ED25519:
            public_key.verify(block["sig"], message)  # type: ignore[call-arg]
        else:
            public_key.verify(block["sig"], message, ec.ECDSA(hashes.SHA384()))  # type: ignore[call-arg]
    except InvalidSignature as e:
        raise BundleError(Reason.BAD_SIGNATURE, "owner signature does not verify over header and manifest", step="signature") from e
    return kid


# -- AEAD into reused buffers ------------------------------------------------------------------


def _seal_into(aead: AESGCM, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
    """``encrypt_into`` (cryptography >= 45) avoids a 1 MiB allocation per chunk; older: copy."""
    if hasattr(aead, "encrypt_into"):
        aead.encrypt_into(nonce, data, aad, out)
    else:  # pragma: no cover - older cryptography
        out[:] = aead.encrypt(nonce, bytes(data), aad)


def _open_into(aead: AESGCM, nonce: bytes, data: memoryview, aad: bytes, out: memoryview) -> None:
    if hasattr(aead, "decrypt_into"):
        aead.decrypt_into(nonce, data, aad, out)
    else:  # pragma: no cover - older cryptography
        out[:] = aead.decrypt(nonce, bytes(data), aad)


# -- hashing pipeline --------------------------------------------------------------------------


class _Hasher:
    """SHA-256 of one file fed chunk by chunk, in order.

    Threaded, a worker thread hashes while the caller goes on. The caller fills its buffers in
    rotation and calls :meth:`reserve` before filling the next one: it returns once the chunk that
    buffer held last has been hashed, so at most ``depth`` chunks are in flight. Unthreaded,
    :meth:`update` hashes at once and :meth:`reserve` never waits.
    """

    def __init__(self, threaded: bool, depth: int = PIPELINE_DEPTH) -> None:
        self._h = hashlib.sha256()
        self._thread: threading.Thread | None = None
        if threaded:
            self._free = threading.Semaphore(depth)
            self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="bundle-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._h.update(data)
            self._free.release()

    def reserve(self) -> None:
        if self._thread is not None:
            self._free.acquire()

    def update(self, data: memoryview) -> None:
        if self._thread is None:
            self._h.update(data)
        else:
            self._queue.put(data)

    def close(self) -> None:
        """Wait for every queued chunk (also on an error path: the buffers must outlive the hashing)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        return self._h.hexdigest()

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_full(stream: BinaryIO, view: memoryview) -> int:
    n = 0
    while n < len(view):
        got = stream.readinto(view[n:])  # type: ignore[attr-defined]
        if not got:
            break
        n += got
    return n


# -- writing -----------------------------------------------------------------------------------


class BundleWriter:
    """Seal files into ``out`` (a writable binary stream positioned at 0). Call :meth:`finish`.

    ``random`` is injectable so tests can build deterministic bundles; production uses
    ``os.urandom``.
    """

    def __init__(
        self,
        out: BinaryIO,
        key: bytes,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        random: Callable[[int], bytes] = os.urandom,
        threaded: bool = True,
    ) -> None:
        if len(key) != KEY_LEN:
            raise UsageError(Reason.CONFIG_INVALID, f"content key must be {KEY_LEN} bytes, got {len(key)}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise UsageError(Reason.CONFIG_INVALID, f"chunk size {chunk_size} outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
        self._out = out
        self._key = key
        self._random = random
        self.bundle_id = random(BUNDLE_ID_LEN)
        self.header = Header(chunk_size, self.bundle_id, key_commitment(key, self.bundle_id))
        self._header_raw = self.header.pack()
        self._files: list[FileEntry] = []
        self._paths: set[str] = set()
        self._offset = HEADER_LEN
        self._threaded = threaded
        # plaintext buffers in rotation (the worker hashes chunk i while later ones are read and
        # sealed) and one sealed buffer: encrypt_into avoids a fresh 1 MiB allocation per chunk
        self._bufs = tuple(bytearray(chunk_size) for _ in range(PIPELINE_DEPTH))
        self._sealed = bytearray(chunk_size + TAG_LEN)
        out.write(self._header_raw)

    def add_file(self, path: str, src: BinaryIO, size: int, mode: int = 0o644) -> FileEntry:
        """Seal ``size`` bytes of ``src``. A source that is shorter or longer is a UsageError
        (it changed while being read)."""
        check_path(path)
        if path in self._paths:
            raise UsageError(Reason.CONFIG_INVALID, f"file {path!r} added twice")
        cs = self.header.chunk_size
        salt = self._random(SALT_LEN)
        aead = AESGCM(file_key(self._key, self.bundle_id, salt, path))
        n = chunk_count(size, cs)
        with _Hasher(self._threaded and size > cs) as hasher:
            for i in range(n):
                want = min(cs, size - i * cs)
                hasher.reserve()
                buf = memoryview(self._bufs[i % PIPELINE_DEPTH])[:want]
                got = _read_full(src, buf)
                if got != want:
                    raise UsageError(Reason.CONFIG_INVALID, f"file {path!r} is shorter than {size} bytes (changed while reading?)")
                hasher.update(buf)
                sealed = memoryview(self._sealed)[: want + TAG_LEN]
                _seal_into(aead, chunk_nonce(i), buf, chunk_aad(self.bundle_id, path, i, i == n - 1), sealed)
                self._out.write(sealed)
            if src.read(1):
                raise UsageError(Reason.CONFIG_INVALID, f"file {path!r} is longer than {size} bytes (changed while reading?)")
            digest = hasher.hexdigest()
        entry = FileEntry(path, size, digest, salt, mode & 0o777, self._offset)
        self._offset += sealed_size(size, cs)
        self._paths.add(path)
        self._files.append(entry)
        return entry

    def finish(self, signer: PrivateKey | None = None) -> Manifest:
        manifest = Manifest(self.bundle_id, self.header.chunk_size, tuple(self._files))
        sealed = AESGCM(manifest_key(self._key, self.bundle_id)).encrypt(MANIFEST_NONCE, manifest.encode(), self._header_raw)
        sig = make_signature_block(signer, signed_message(self._header_raw, sealed)) if signer is not None else b""
        self._out.write(sealed)
        self._out.write(sig)
        self._out.write(Footer(self._offset, len(sealed), len(sig)).pack())
        return manifest


# -- reading -----------------------------------------------------------------------------------


class BundleReader:
    """Random access to a bundle in a seekable binary stream. Nothing is trusted until checked:
    :meth:`verify_signature` needs only the owner's public key, :meth:`open_manifest` the
    content key, :meth:`decrypt_file` both of those done first."""

    def __init__(self, stream: BinaryIO) -> None:
        self._s = stream
        total = stream.seek(0, os.SEEK_END)
        if total < HEADER_LEN + FOOTER_LEN:
            raise BundleError(Reason.TRUNCATED, f"bundle is {total} bytes: too short", step="header")
        stream.seek(0)
        self.header_raw = stream.read(HEADER_LEN)
        self.header = Header.unpack(self.header_raw)
        stream.seek(total - FOOTER_LEN)
        self.footer = Footer.unpack(stream.read(FOOTER_LEN), total)
        self.size = total
        stream.seek(self.footer.manifest_offset)
        self.sealed_manifest = stream.read(self.footer.manifest_len)
        self.signature_block = stream.read(self.footer.signature_len)
        self.manifest: Manifest | None = None
        self._key: bytes | None = None

    @property
    def signed(self) -> bool:
        return bool(self.signature_block)

    def signer_key_id(self) -> str | None:
        return parse_signature_block(self.signature_block)["key_id"] if self.signature_block else None

    def verify_signature(self, public_key: PublicKey) -> str:
        return check_signature(self.signature_block, signed_message(self.header_raw, self.sealed_manifest), public_key)

    def open_manifest(self, key: bytes) -> Manifest:
        if len(key) != KEY_LEN:
            raise UsageError(Reason.CONFIG_INVALID, f"content key must be {KEY_LEN} bytes, got {len(key)}")
        import hmac

        if not hmac.compare_digest(key_commitment(key, self.header.bundle_id), self.header.key_commitment):
            raise BundleError(Reason.WRONG_KEY, "the key does not match this bundle's key commitment", step="manifest")
        try:
            raw = AESGCM(manifest_key(key, self.header.bundle_id)).decrypt(MANIFEST_NONCE, self.sealed_manifest, self.header_raw)
        except InvalidTag as e:
            raise BundleError(Reason.TAMPERED, "manifest does not authenticate", step="manifest") from e
        manifest = parse_manifest(raw, self.header)
        if manifest.data_end != self.footer.manifest_offset:
            raise BundleError(
                Reason.TRUNCATED, f"file data ends at {self.footer.manifest_offset}, the manifest says {manifest.data_end}", step="manifest"
            )
        self.manifest = manifest
        self._key = key
        return manifest

    def decrypt_file(self, entry: FileEntry, out: BinaryIO, *, threaded: bool = True) -> None:
        """Stream one file's plaintext into ``out``. On any error, what was written is garbage
        the caller must discard (the edge writes into a staging directory it wipes)."""
        if self._key is None or self.manifest is None:
            raise UsageError(Reason.INTERNAL, "open_manifest() before decrypt_file()")
        cs = self.header.chunk_size
        bid = self.header.bundle_id
        aead = AESGCM(file_key(self._key, bid, entry.salt, entry.path))
        n = chunk_count(entry.size, cs)
        buf = bytearray(cs + TAG_LEN)
        depth = min(PIPELINE_DEPTH, n)
        plain_bufs = tuple(bytearray(cs) for _ in range(depth))  # in rotation: chunk i is hashed while later ones are opened
        self._s.seek(entry.offset)
        with _Hasher(threaded and entry.size > cs, depth) as hasher:
            for i in range(n):
                want = min(cs, entry.size - i * cs) + TAG_LEN
                view = memoryview(buf)[:want]
                got = _read_full(self._s, view)
                if got != want:
                    raise BundleError(
                        Reason.TRUNCATED, f"sealed chunk is {got} bytes, expected {want}", step="decrypt", path=entry.path, chunk=i
                    )
                hasher.reserve()
                plain = memoryview(plain_bufs[i % depth])[: want - TAG_LEN]
                try:
                    _open_into(aead, chunk_nonce(i), view, chunk_aad(bid, entry.path, i, i == n - 1), plain)
                except InvalidTag as e:
                    raise BundleError(
                        Reason.TAMPERED,
                        "chunk does not authenticate (modified, swapped, reordered or from another file)",
                        step="decrypt",
                        path=entry.path,
                        chunk=i,
                    ) from e
                hasher.update(plain)
                out.write(plain)
            digest = hasher.hexdigest()
        if digest != entry.sha256:
            raise BundleError(Reason.TAMPERED, f"plaintext SHA-256 {digest} != manifest {entry.sha256}", step="digest", path=entry.path)


def sign_bundle(stream: BinaryIO, private_key: PrivateKey) -> str:
    """(Re)sign a bundle in place (a read/write seekable stream); returns the signer's key id.

    The signature goes between the sealed manifest and the footer; an earlier one is replaced.
    """
    reader = BundleReader(stream)
    block = make_signature_block(private_key, signed_message(reader.header_raw, reader.sealed_manifest))
    end = reader.footer.manifest_offset + reader.footer.manifest_len
    stream.seek(end)
    stream.truncate(end)
    stream.write(block)
    stream.write(Footer(reader.footer.manifest_offset, reader.footer.manifest_len, len(block)).pack())
    stream.flush()
    return key_id(private_key.public_key())
