"""The simulated TEE: same SNP code path, its own root, never mistaken for real hardware."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ratls import sim
from ratls.cli import main as cli_main
from ratls.errors import Reason, UsageError
from ratls.evidence import Evidence, EvidenceType, VerifyOptions, verify_evidence
from ratls.io import simdir
from ratls.policy import Policy
from ratls.snp import abi
from ratls.snp import claims as C
from ratls.snp.verify import STEPS, VerdictCache
from tests.vectors import read, ref_time

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def auth() -> sim.SimAuthority:
    return sim.SimAuthority.generate(now=NOW)


@pytest.fixture(scope="module")
def other() -> sim.SimAuthority:
    return sim.SimAuthority.generate(now=NOW)


def opts(root: bytes | None, at: datetime = NOW + timedelta(days=1), **kw) -> VerifyOptions:
    return VerifyOptions(now=at, sim_root=root, **kw)


def resign(a: sim.SimAuthority, report: bytes) -> bytes:
    """Re-sign an edited report with the sim VCEK key (to reach the checks after the signature)."""
    b = bytearray(report)
    r, s = decode_dss_signature(a.vcek_key.sign(bytes(b[: abi.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
    abi.put(b, abi.SIG_R, r)
    abi.put(b, abi.SIG_S, s)
    return bytes(b)


def test_round_trip_verifies_through_snp_steps(auth):
    ev = auth.report(b"\x01" * 32)
    assert ev.type is EvidenceType.SIM and len(ev.data) == abi.REPORT_SIZE
    v = verify_evidence(ev, opts(auth.root_der))
    assert v.verified, v.error
    assert v.evidence_type == "sim"
    assert [s.name for s in v.steps] == list(STEPS)
    assert v.claims[C.ATTESTATION_TYPE] == "sim"
    assert v.claims[C.PRODUCT_NAME] == "Sim"
    assert v.claims[C.REPORT_DATA] == "01" * 32 + "00" * 32
    assert v.report_data == b"\x01" * 32 + bytes(32)
    assert v.claims[C.LAUNCH_MEASUREMENT] == sim.DEFAULT_MEASUREMENT.hex()
    assert v.claims[C.IS_DEBUGGABLE] is False
    assert v.claims[C.TCB_STATUS] == "UpToDate"
    assert abi.parse_report(ev.data).version == 3


def test_no_sim_root_is_untrusted(auth):
    v = verify_evidence(auth.report(b"x"), opts(None))
    assert not v.verified
    assert (v.error.step, v.error.reason) == ("chain-to-root", Reason.UNTRUSTED_ROOT)
    assert v.error.detail == sim.NO_SIM_ROOT


def test_other_authoritys_root_is_untrusted(auth, other):
    v = verify_evidence(auth.report(b"x"), opts(other.root_der))
    assert (v.error.step, v.error.reason) == ("chain-to-root", Reason.UNTRUSTED_ROOT)


def test_sim_evidence_never_verifies_as_real_snp(auth):
    ev = auth.report(b"x")
    v = verify_evidence(Evidence(EvidenceType.SNP, ev.data, ev.endorsements), opts(auth.root_der))
    assert (v.error.step, v.error.reason) == ("chain-to-root", Reason.UNTRUSTED_ROOT)


def test_real_snp_evidence_is_not_sim(auth):
    name = "snp/virtee-milan-v2"
    ev = Evidence(EvidenceType.SIM, read(name, "report_milan.bin"), (read(name, "vcek_milan.der"),))
    v = verify_evidence(ev, opts(auth.root_der, ref_time(name)))
    assert (v.error.step, v.error.reason) == ("chain-to-root", Reason.UNTRUSTED_ROOT)


def test_measurement_host_data_debug_reflected(auth):
    m = hashlib.sha384(b"my model server image").digest()
    h = hashlib.sha256(b"policy").digest()
    ev = auth.report(b"nonce", measurement=m, host_data=h, debug=True, vmpl=2, guest_svn=7)
    c = verify_evidence(ev, opts(auth.root_der)).claims
    assert c[C.LAUNCH_MEASUREMENT] == m.hex()
    assert c[C.HOST_DATA] == h.hex()
    assert c[C.IS_DEBUGGABLE] is True
    assert (c[C.VMPL], c[C.GUEST_SVN]) == (2, 7)


def test_report_argument_limits(auth):
    with pytest.raises(UsageError):
        auth.report(b"x" * 65)
    with pytest.raises(UsageError):
        auth.report(b"", measurement=b"m" * 49)
    with pytest.raises(UsageError):
        auth.report(b"", vmpl=4)


def test_tampered_sim_report_rejected(auth):
    ev = auth.report(b"x")
    b = bytearray(ev.data)
    b[abi.MEASUREMENT[0]] ^= 1
    v = verify_evidence(Evidence(EvidenceType.SIM, bytes(b), ev.endorsements), opts(auth.root_der))
    assert (v.error.step, v.error.reason) == ("report-signature", Reason.BAD_SIGNATURE)


def test_tcb_and_chip_binding_checked_after_signature(auth):
    ev = auth.report(b"x")
    b = bytearray(ev.data)
    abi.put(b, abi.REPORTED_TCB, abi.encode_tcb(None, bootloader=9, tee=0, snp=8, microcode=115))
    v = verify_evidence(Evidence(EvidenceType.SIM, resign(auth, bytes(b)), ev.endorsements), opts(auth.root_der))
    assert (v.error.step, v.error.reason) == ("tcb-binding", Reason.TCB_MISMATCH)
    b = bytearray(ev.data)
    b[abi.CHIP_ID[0]] ^= 0xFF
    v = verify_evidence(Evidence(EvidenceType.SIM, resign(auth, bytes(b)), ev.endorsements), opts(auth.root_der))
    assert (v.error.step, v.error.reason) == ("tcb-binding", Reason.CHIP_ID_MISMATCH)


def test_validity_window(auth):
    ev = auth.report(b"x")
    assert verify_evidence(ev, opts(auth.root_der, NOW - timedelta(days=2))).error.reason is Reason.CERT_NOT_YET_VALID
    assert verify_evidence(ev, opts(auth.root_der, NOW + timedelta(days=365 * 8))).error.reason is Reason.CERT_EXPIRED


def test_serialisation_round_trip(auth):
    data = auth.to_bytes()
    again = sim.SimAuthority.from_bytes(data)
    assert again.root_der == auth.root_der and again.chip_id == auth.chip_id
    assert verify_evidence(again.report(b"y"), opts(auth.root_der)).verified
    with pytest.raises(UsageError):
        sim.SimAuthority.from_bytes(b"garbage")
    other_keys = sim.SimAuthority.generate(now=NOW).to_bytes()
    mixed = other_keys[: other_keys.index(b"-----BEGIN CERTIFICATE")] + data[data.index(b"-----BEGIN CERTIFICATE") :]
    with pytest.raises(UsageError) as ei:
        sim.SimAuthority.from_bytes(mixed)
    assert ei.value.reason is Reason.CONFIG_INVALID


# -- policy interplay ------------------------------------------------------------------------


def test_policy_admits_sim_only_by_name(auth):
    c = verify_evidence(auth.report(b"x"), opts(auth.root_der)).claims
    assert not Policy.from_mapping({"x-ms-attestation-type": "sevsnpvm"}).evaluate(c).ok
    assert not Policy.from_mapping({"x-ms-sevsnpvm-vmpl": 0}).evaluate(c).ok  # implicit sim rule
    assert Policy.from_mapping({"x-ms-attestation-type": "sim"}).evaluate(c).ok
    assert Policy.from_mapping({"x-ms-attestation-type": ["sevsnpvm", "sim"], "x-ms-sevsnpvm-bootloader-svn": {"min": 3}}).evaluate(c).ok


def test_policy_refuses_debug_sim_unless_named(auth):
    c = verify_evidence(auth.report(b"x", debug=True), opts(auth.root_der)).claims
    res = Policy.from_mapping({"x-ms-attestation-type": "sim"}).evaluate(c)
    assert [r.claim for r in res.failed] == [C.IS_DEBUGGABLE]
    assert Policy.from_mapping({"x-ms-attestation-type": "sim", C.IS_DEBUGGABLE: True}).evaluate(c).ok


def test_measurement_pinned_by_policy(auth):
    m = hashlib.sha384(b"image A").digest()
    c = verify_evidence(auth.report(b"x", measurement=m), opts(auth.root_der)).claims
    assert Policy.from_mapping({"x-ms-attestation-type": "sim", C.LAUNCH_MEASUREMENT: m.hex().upper()}).evaluate(c).ok
    assert not Policy.from_mapping({"x-ms-attestation-type": "sim", C.LAUNCH_MEASUREMENT: hashlib.sha384(b"B").hexdigest()}).evaluate(c).ok


# -- product look-alikes exercise the real SNP verifier's product paths --------------------------


def test_turin_lookalike_end_to_end_with_8_byte_chip_id():
    t = sim.SimAuthority.generate(now=NOW, product="Turin", tcb={"fmc": 2, "bootloader": 3, "tee": 4, "snp": 5, "microcode": 6})
    assert len(t.chip_id) == 8
    ev = t.report(b"turin")
    r = abi.parse_report(ev.data)
    assert (r.cpuid_family, r.cpuid_product) == (0x1A, "Turin")
    assert r.reported_tcb_raw.to_bytes(8, "little") == bytes([2, 3, 4, 5, 0, 0, 0, 6])
    snp_ev = Evidence(EvidenceType.SNP, ev.data, ev.endorsements)
    v = verify_evidence(snp_ev, VerifyOptions(now=NOW + timedelta(days=1), amd_roots={"Turin": t.root_der}))
    assert v.verified, v.error
    c = v.claims
    assert c[C.ATTESTATION_TYPE] == "sevsnpvm" and c[C.PRODUCT_NAME] == "Turin"
    assert (c[C.FMC_SVN], c[C.BOOTLOADER_SVN], c[C.TEE_SVN], c[C.SNPFW_SVN], c[C.MICROCODE_SVN]) == (2, 3, 4, 5, 6)
    assert c[C.CHIP_ID] == t.chip_id.hex()
    # bytes after the 8-byte Turin chip id must be zero
    b = bytearray(ev.data)
    b[abi.CHIP_ID[0] + 8] = 1
    v = verify_evidence(Evidence(EvidenceType.SNP, resign(t, bytes(b)), ev.endorsements), VerifyOptions(now=NOW + timedelta(days=1), amd_roots={"Turin": t.root_der}))
    assert (v.error.step, v.error.reason) == ("tcb-binding", Reason.CHIP_ID_MISMATCH)
    # the real Turin root does not vouch for it
    v = verify_evidence(snp_ev, VerifyOptions(now=NOW + timedelta(days=1)))
    assert (v.error.step, v.error.reason) == ("chain-to-root", Reason.UNTRUSTED_ROOT)


def test_genoa_lookalike_against_milan_product_is_wrong_product():
    g = sim.SimAuthority.generate(now=NOW, product="Genoa")
    ev = g.report(b"g")
    b = bytearray(ev.data)
    b[abi.CPUID_MOD_ID[0]] = 0x01  # CPUID now says Milan, the VCEK says Genoa
    v = verify_evidence(Evidence(EvidenceType.SNP, resign(g, bytes(b)), ev.endorsements), VerifyOptions(now=NOW + timedelta(days=1), amd_roots={"Genoa": g.root_der}))
    assert (v.error.step, v.error.reason) == ("find-endorsement", Reason.WRONG_PRODUCT)


# -- verdict cache ---------------------------------------------------------------------------


def test_verdict_cache_hits_inside_window_only(auth):
    cache = VerdictCache()
    ev = auth.report(b"c")
    first = cache.verify(ev, opts(auth.root_der))
    assert first.verified and cache.misses == 1
    assert cache.verify(ev, opts(auth.root_der, NOW + timedelta(days=30))) is first
    assert cache.hits == 1
    late = cache.verify(ev, opts(auth.root_der, NOW + timedelta(days=365 * 8)))
    assert late.error.reason is Reason.CERT_EXPIRED and cache.misses == 2
    assert not cache.verify(ev, opts(None)).verified  # another root config is another key


def test_verdict_cache_real_vector():
    name = "snp/virtee-milan-v2"
    cache = VerdictCache()
    ev = Evidence(EvidenceType.SNP, read(name, "report_milan.bin"), (read(name, "vcek_milan.der"),))
    o = VerifyOptions(now=ref_time(name))
    assert cache.verify(ev, o).verified and cache.verify(ev, o).verified
    assert (cache.hits, cache.misses) == (1, 1)
    b = bytearray(ev.data)
    b[0x90] ^= 1
    assert not cache.verify(Evidence(EvidenceType.SNP, bytes(b), ev.endorsements), o).verified


# -- the sim directory edge ------------------------------------------------------------------


def test_load_or_create_files_and_modes(tmp_path):
    d = tmp_path / "sim"
    a = simdir.load_or_create(d)
    assert (d / simdir.AUTHORITY_FILE).stat().st_mode & 0o777 == 0o600
    assert simdir.load_root(d) == a.root_der
    assert simdir.load_or_create(d).root_der == a.root_der  # idempotent
    (d / simdir.ROOT_FILE).unlink()
    assert simdir.load_root(d) == a.root_der  # falls back to authority.pem's certificates
    assert verify_evidence(a.report(b"z"), opts(simdir.load_root(d), datetime.now(UTC))).verified


def test_load_root_missing_dir(tmp_path):
    with pytest.raises(UsageError) as ei:
        simdir.load_root(tmp_path / "none")
    assert ei.value.reason is Reason.CONFIG_INVALID


def test_group_readable_key_file_refused(tmp_path):
    simdir.load_or_create(tmp_path)
    os.chmod(tmp_path / simdir.AUTHORITY_FILE, 0o644)
    with pytest.raises(UsageError):
        simdir.load_or_create(tmp_path)


def test_default_sim_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(simdir.ENV_DIR, str(tmp_path / "x"))
    assert simdir.default_sim_dir() == tmp_path / "x"
    monkeypatch.delenv(simdir.ENV_DIR)
    assert simdir.default_sim_dir().parts[-2:] == ("ratls", "sim")


def test_two_processes_racing_agree(tmp_path):
    d = tmp_path / "race"
    code = "import sys; from ratls.io.simdir import load_or_create; print(load_or_create(sys.argv[1]).root_fingerprint)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE, env=env) for _ in range(4)]
    fps = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(fps) == 1
    assert simdir.load_or_create(d).root_fingerprint == fps.pop().decode()
    assert not [f for f in os.listdir(d) if f.startswith(".")]  # no temporary files left


def test_cli_init_show_report(tmp_path, capsys):
    d = tmp_path / "cli"
    assert cli_main(["sim", "init", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    fp = simdir.load_or_create(d).root_fingerprint
    assert fp in out
    assert cli_main(["sim", "show", "--dir", str(d), "--json"]) == 0
    assert fp in capsys.readouterr().out
    rep, certs = tmp_path / "r.bin", tmp_path / "c.pem"
    m = "ab" * 48
    argv = ["sim", "report", "--dir", str(d), "--report-data", "00ff", "--measurement", m, "--debug", "-o", str(rep), "--certs", str(certs)]
    assert cli_main(argv) == 0
    ev = Evidence(EvidenceType.SIM, rep.read_bytes(), (certs.read_bytes(),))
    v = verify_evidence(ev, opts(simdir.load_root(d), datetime.now(UTC)))
    assert v.verified, v.error
    assert v.claims[C.LAUNCH_MEASUREMENT] == m and v.claims[C.IS_DEBUGGABLE] is True
    assert v.claims[C.REPORT_DATA].startswith("00ff00")
    assert cli_main(["sim", "show", "--dir", str(tmp_path / "nothing")]) == 2
    assert cli_main(["sim", "report", "--dir", str(d), "--report-data", "zz", "-o", str(rep)]) == 2


def test_looks_simulated(auth):
    ev = auth.report(b"x")
    assert sim.looks_simulated(ev.endorsements)
    assert not sim.looks_simulated((read("snp/virtee-milan-v2", "vcek_milan.der"), b"junk", b"\x30\x03\x02\x01"))
    assert sim.is_sim_endorsement(ev.endorsements[0]) and not sim.is_sim_endorsement(ev.endorsements[1])
