"""The filesystem edge of the bundle format: walk a model directory, stage a decrypt, rename or wipe.

``ratls.bundle`` seals and opens streams; this module decides which files go in (regular files
only: a symlink could point out of the model, so it is refused) and makes a failed decrypt leave
nothing behind: plaintext is written into a staging directory on the same filesystem as the
target, moved into place only once every file authenticated and matched its SHA-256, and wiped
(overwritten, then unlinked) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ratls.bundle import DEFAULT_CHUNK_SIZE, KEY_LEN, BundleReader, BundleWriter, Manifest, PrivateKey, PublicKey, check_path
from ratls.errors import Reason, UsageError

STAGING_PREFIX = ".ratls-unseal-"


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """A content key file holds the 32 raw bytes (or 64 hex characters and optional newline)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read key file {path}: {e.strerror}") from e
    if len(raw) == KEY_LEN:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(text.decode())
        except (ValueError, UnicodeDecodeError):
            pass
    raise UsageError(Reason.CONFIG_INVALID, f"key file {path} must hold {KEY_LEN} raw bytes or {2 * KEY_LEN} hex characters")


def write_new_key_file(path: str | os.PathLike[str]) -> bytes:
    """Create a fresh random key file, mode 0600, refusing to overwrite an existing one."""
    key = secrets.token_bytes(KEY_LEN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"key file {path} exists; refusing to overwrite a key") from e
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def model_files(src: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``src`` as (posix relative path, absolute path), sorted."""
    if not src.is_dir():
        raise UsageError(Reason.CONFIG_INVALID, f"{src} is not a directory")
    out: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        for name in [*dirs, *files]:
            p = Path(root, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise UsageError(Reason.UNSAFE_PATH, f"{p} is a symlink; bundles hold regular files only")
            if name in files and not stat.S_ISREG(st.st_mode):
                raise UsageError(Reason.UNSAFE_PATH, f"{p} is not a regular file")
        for name in files:
            p = Path(root, name)
            rel = p.relative_to(src).as_posix()
            check_path(rel)
            out.append((rel, p))
    out.sort()
    return out


def encrypt_dir(
    src: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    key: bytes,
    *,
    signer: PrivateKey | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threaded: bool = True,
) -> Manifest:
    """Seal every regular file of ``src`` into ``bundle`` (written beside, then renamed)."""
    src_p, out_p = Path(src), Path(bundle)
    files = model_files(src_p)
    try:
        fd, tmp = tempfile.mkstemp(dir=out_p.parent or ".", prefix=f".{out_p.name}.", suffix=".tmp")
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot write the bundle beside {out_p}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as out:
            w = BundleWriter(out, key, chunk_size=chunk_size, threaded=threaded)
            for rel, p in files:
                with open(p, "rb", buffering=0) as f:
                    st = os.fstat(f.fileno())
                    w.add_file(rel, f, st.st_size, st.st_mode)
            manifest = w.finish(signer)
        os.replace(tmp, out_p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # an unreadable model file, a full disk: unusable input, not a crash
            raise UsageError(Reason.CONFIG_INVALID, f"cannot encrypt {src_p} into {out_p}: {e.strerror or e} ({e.filename})") from e
        raise
    return manifest


def sign_file(bundle: str | os.PathLike[str], private_key: PrivateKey) -> str:
    from ratls.bundle import sign_bundle

    with open(bundle, "r+b") as f:
        return sign_bundle(f, private_key)


def verify_file(bundle: str | os.PathLike[str], public_key: PublicKey) -> tuple[str, BundleReader]:
    with open(bundle, "rb") as f:
        r = BundleReader(f)
        return r.verify_signature(public_key), r


def wipe_file(p: str) -> None:
    """Overwrite then unlink: on tmpfs the freed pages would otherwise keep model plaintext."""
    try:
        size = os.path.getsize(p)
        with open(p, "r+b", buffering=0) as f:
            zero = bytes(1 << 20)
            left = size
            while left > 0:
                left -= f.write(zero[: min(left, len(zero))])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.unlink(p)


def wipe_tree(path: str | os.PathLike[str]) -> None:
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            wipe_file(os.path.join(root, name))
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class DecryptResult:
    manifest: Manifest
    signer_key_id: str | None
    out_dir: Path


def decrypt_to_dir(
    bundle: str | os.PathLike[str],
    key: bytes,
    out_dir: str | os.PathLike[str],
    *,
    signer: PublicKey | None = None,
    require_signature: bool = True,
    threaded: bool = True,
) -> DecryptResult:
    """Verify (when ``signer`` is given), decrypt and place the model in ``out_dir``.

    ``out_dir`` must be missing or empty. If it exists (e.g. a tmpfs mount point), staging happens
    inside it as a hidden directory and the entries are moved up on success; otherwise staging is
    a sibling directory renamed to ``out_dir``. On failure the staging directory is wiped, so no
    partial plaintext stays behind. ``require_signature=False`` without a signer is the
    owner's own ``ratls model decrypt`` without ``--signer``.
    """
    out_p = Path(out_dir)
    if out_p.exists():
        if not out_p.is_dir():
            raise UsageError(Reason.CONFIG_INVALID, f"{out_p} exists and is not a directory")
        leftovers = [n for n in os.listdir(out_p) if not n.startswith(STAGING_PREFIX)]
        if leftovers:
            raise UsageError(Reason.CONFIG_INVALID, f"{out_p} is not empty ({leftovers[0]!r}, ...); refusing to mix models")
        for n in os.listdir(out_p):  # an earlier run killed mid-way
            wipe_tree(out_p / n)
        stage = Path(tempfile.mkdtemp(dir=out_p, prefix=STAGING_PREFIX))
        inside = True
    else:
        out_p.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out_p.parent, prefix=STAGING_PREFIX + out_p.name + "-"))
        inside = False
    try:
        with open(bundle, "rb") as f:
            reader = BundleReader(f)
            kid = None
            if signer is not None:
                kid = reader.verify_signature(signer)
            elif require_signature:
                raise UsageError(Reason.CONFIG_INVALID, "no signer given: pass the owner's public key (--signer)")
            manifest = reader.open_manifest(key)
            for entry in manifest.files:
                dest = stage / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    reader.decrypt_file(entry, out, threaded=threaded)
                os.chmod(dest, entry.mode & 0o755 or 0o600)
        os.chmod(stage, 0o755)
        if inside:
            for name in os.listdir(stage):
                os.rename(stage / name, out_p / name)
            stage.rmdir()
        else:
            os.rename(stage, out_p)
    except BaseException:
        wipe_tree(stage)
        raise
    return DecryptResult(manifest, kid, out_p)
