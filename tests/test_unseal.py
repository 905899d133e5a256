"""`ratls sidecar unseal` end to end: simulated TEE -> keybroker -> unseal -> the model in memory.

The broker and the unseal step run as the real console script in separate processes, on real
sockets; the refusal tests assert that nothing was written (and, where it matters, released).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ed25519

from keybroker import bundle_files as bf
from ratls.errors import Reason
from ratls.sim import DEFAULT_MEASUREMENT
from sidecar.unseal import KeybrokerUnreachable, check_memory_backed, fetch_key, fs_type_of

RATLS = [sys.executable, "-m", "ratls.cli"]
REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


def _shm_ok() -> bool:
    try:
        return SHM.is_dir() and os.access(SHM, os.W_OK) and check_memory_backed(SHM) in ("tmpfs", "ramfs")
    except Exception:
        return False


def _cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*RATLS, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# -- memory-backed check -----------------------------------------------------------------------

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
40 27 0:50 / /models rw - ext4 /dev/vdb rw
41 40 0:51 / /models rw - tmpfs tmpfs rw,size=1g
42 27 0:52 / /with\\040space rw - ramfs ramfs rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ("/", "ext4")),
        ("/var/lib/x", ("/", "ext4")),
        ("/dev/shm/m", ("/dev/shm", "tmpfs")),
        ("/dev/shmx", ("/", "ext4")),
        ("/models", ("/models", "tmpfs")),  # the later mount covers the earlier one
        ("/models/1/model.onnx", ("/models", "tmpfs")),
        ("/with space/m", ("/with space", "ramfs")),
    ],
)
def test_fs_type_of(path, expected):
    assert fs_type_of(path, MOUNTINFO) == expected


def test_check_memory_backed_refuses_disk(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n99 27 0:9 / {tmp_path}/mem rw - tmpfs tmpfs rw\n")
    (tmp_path / "mem").mkdir()
    assert check_memory_backed(tmp_path / "mem" / "not-yet" / "model", mountinfo=mi) == "tmpfs"
    with pytest.raises(Exception) as e:
        check_memory_backed(tmp_path / "disk", mountinfo=mi)
    assert e.value.reason is Reason.CONFIG_INVALID


# -- the backoff schedule ----------------------------------------------------------------------


def test_broker_down_retries_with_exponential_backoff(free_port):
    sleeps: list[float] = []
    logs: list[str] = []
    with pytest.raises(KeybrokerUnreachable) as e:
        fetch_key(
            f"http://127.0.0.1:{free_port()}", "k", lambda rd: None, "sim", retries=6, backoff_s=0.5, sleep=sleeps.append, log=logs.append
        )
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert e.value.reason is Reason.UNREACHABLE and "after 7 attempts" in str(e.value)
    assert len(logs) == 6


# -- end to end through the console scripts ----------------------------------------------------


class BrokerProc:
    def __init__(self, work: Path, sim_dir: Path) -> None:
        self.work, self.sim_dir = work, sim_dir
        self.log = work / "audit.jsonl"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [*RATLS, "keybroker", "--listen", "127.0.0.1:0", "--store", str(self.work / "store"), "--master-key", str(self.work / "master.key"),
             "--sim-dir", str(self.sim_dir), "--log", str(self.log)],
            cwd=REPO, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stderr.readline()
        if not line:
            raise RuntimeError(f"keybroker did not start (rc {self.proc.wait()})")
        self.url = json.loads(line)["url"]
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc.stderr.close()
            self.proc = None

    def audit(self) -> list[dict]:
        return [json.loads(x) for x in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Owner side done once: model, key, signed bundle, broker store with the key and its policy."""
    w = tmp_path_factory.mktemp("unseal")
    model = w / "model"
    (model / "digits" / "1").mkdir(parents=True)
    (model / "digits" / "1" / "model.onnx").write_bytes(os.urandom(3 * (1 << 20) + 123))
    (model / "digits" / "config.pbtxt").write_text('name: "digits"\nbackend: "onnxruntime"\nmax_batch_size: 8\n')
    owner = ed25519.Ed25519PrivateKey.generate()
    (w / "owner.pem").write_bytes(owner.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    (w / "owner.pub").write_bytes(owner.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    assert _cmd("model", "encrypt", str(model), "-o", str(w / "model.rmb"), "--key-out", str(w / "content.key")).returncode == 0
    assert _cmd("model", "sign", str(w / "model.rmb"), "--key", str(w / "owner.pem")).returncode == 0
    assert _cmd("sim", "init", "--dir", str(w / "sim")).returncode == 0
    assert _cmd("keybroker", "new-master-key", str(w / "master.key")).returncode == 0
    policy = {
        "x-ms-attestation-type": "sim",
        "x-ms-sevsnpvm-launchmeasurement": DEFAULT_MEASUREMENT.hex(),
        "x-ms-sevsnpvm-is-debuggable": False,
    }
    (w / "policy.json").write_text(json.dumps(policy))
    r = _cmd("keybroker", "add-secret", "--store", str(w / "store"), "--master-key", str(w / "master.key"), "--id", "digits-key",
             "--secret-file", str(w / "content.key"), "--policy", str(w / "policy.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    os.unlink(w / "content.key")  # the owner keeps it elsewhere; the broker has it sealed
    broker = BrokerProc(w, w / "sim")
    broker.start()
    yield w, model, broker
    broker.stop()


@pytest.fixture
def out_dir(tmp_path):
    """A fresh --out: in /dev/shm (tmpfs) when this machine has it, else on disk with --allow-disk."""
    if _shm_ok():
        d = SHM / f"ratls-test-{uuid.uuid4().hex[:12]}"
        yield d, []
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path / "models", ["--allow-disk"]


def _unseal(w: Path, url: str, out: Path, *extra: str, signer: str = "owner.pub", bundle: str = "model.rmb") -> subprocess.CompletedProcess:
    return _cmd(
        "sidecar", "unseal", "--keybroker", url, "--bundle", str(w / bundle), "--key-id", "digits-key", "--out", str(out),
        "--signer", str(w / signer), "--tee", "sim", "--sim-dir", str(w / "sim"), "--retries", "1", "--backoff", "0.05", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_unseal_end_to_end_and_broker_restart(world, out_dir):
    w, model, broker = world
    out, extra = out_dir
    n0 = len(broker.audit())
    r = _unseal(w, broker.url, out, *extra)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["action"] == "unseal" and summary["files"] == 2 and summary["evidence_type"] == "sim"
    assert _tree(out) == _tree(model)
    if not extra:
        assert check_memory_backed(out) == "tmpfs"
    lines = broker.audit()[n0:]
    assert [x["decision"] for x in lines] == ["challenge", "attested", "release"]
    assert lines[-1]["secret"] == "digits-key" and all(r["ok"] for r in lines[-1]["rules"])

    # restart: a new broker process on the same store still holds and releases the secret
    broker.stop()
    url2 = broker.start()
    shutil.rmtree(out)
    r = _unseal(w, url2, out, *extra)
    assert r.returncode == 0, r.stderr
    assert _tree(out) == _tree(model)


@pytest.mark.slow
def test_measurement_not_allowed_nothing_written(world, out_dir):
    w, _model, broker = world
    out, extra = out_dir
    n0 = len(broker.audit())
    r = _unseal(w, broker.url, out, *extra, "--sim-measurement", "ab" * 48)
    assert r.returncode == 1
    assert "policy-failed" in r.stderr and "x-ms-sevsnpvm-launchmeasurement" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    last = broker.audit()[n0:][-1]
    assert last["decision"] == "deny" and last["status"] == 403 and last["failed_rules"][0]["actual"] == "ab" * 48


@pytest.mark.slow
def test_wrong_signer_nothing_written(world, out_dir, tmp_path):
    w, _model, broker = world
    out, extra = out_dir
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    (w / "other.pub").write_bytes(other.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    r = _unseal(w, broker.url, out, *extra, signer="other.pub")
    assert r.returncode == 1 and "bad-signature" in r.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_tampered_bundle_named_no_partial_plaintext(world, out_dir):
    w, _model, broker = world
    out, extra = out_dir
    from ratls.bundle import HEADER_LEN, TAG_LEN

    data = bytearray((w / "model.rmb").read_bytes())
    # digits/1/model.onnx sorts first, so its chunks start right after the header; flip chunk 2
    # (chunks 0 and 1 decrypt fine first, and must be wiped too)
    cs = 1 << 20
    data[HEADER_LEN + 2 * (cs + TAG_LEN) + 100] ^= 0x80
    (w / "tampered.rmb").write_bytes(bytes(data))
    r = _unseal(w, broker.url, out, *extra, bundle="tampered.rmb")
    assert r.returncode == 1
    assert "tampered" in r.stderr and "'digits/1/model.onnx' chunk 2" in r.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.glob(f"{bf.STAGING_PREFIX}*")]


@pytest.mark.slow
def test_disk_backed_out_refused_before_any_request(world, tmp_path):
    w, _model, broker = world
    if _fs(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("tmp_path is itself memory-backed here")
    n0 = len(broker.audit())
    r = _unseal(w, broker.url, tmp_path / "models")
    assert r.returncode == 2 and "--allow-disk" in r.stderr
    assert len(broker.audit()) == n0  # nothing asked, nothing released
    assert not (tmp_path / "models").exists()


def _fs(p: Path) -> str:
    try:
        return check_memory_backed(p)
    except Exception:
        return "disk"


@pytest.mark.slow
def test_broker_down_fails_clearly(world, out_dir, free_port):
    w, _model, _broker = world
    out, extra = out_dir
    r = _unseal(w, f"http://127.0.0.1:{free_port()}", out, *extra)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert "retry 1/1" in lines[0]
    assert "unreachable" in lines[-1] and "after 2 attempts" in lines[-1]
    assert not out.exists()
