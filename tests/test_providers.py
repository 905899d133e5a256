"""Evidence providers against fake configfs-tsm trees and fake devices in a temporary directory."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from ratls.errors import Reason, UsageError
from ratls.evidence import EvidenceType
from sidecar import providers as P


class FakeTsmKernel(P.TsmFs):
    """Acts as the kernel's configfs-tsm on real files: mkdir populates an entry, inblob makes outblob.

    ``race`` extra writes by "another process" land between our inblob write and our outblob read.
    """

    def __init__(self, provider: str = "tdx_guest", auxblob: bytes = b"", race: int = 0) -> None:
        self.provider = provider
        self.auxblob = auxblob
        self.race = race
        self.entries: list[Path] = []

    def _bump(self, entry: Path) -> None:
        g = entry / "generation"
        g.write_text(str(int(g.read_text()) + 1))

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        self.entries.append(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")

    def rmdir(self, path: Path) -> None:
        for f in path.iterdir():
            f.unlink()
        path.rmdir()

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        self._bump(path.parent)
        if path.name == "inblob":
            (path.parent / "outblob").write_bytes(b"REPORT:" + data)
            if self.auxblob:
                (path.parent / "auxblob").write_bytes(self.auxblob)

    def read(self, path: Path) -> bytes:
        if path.name == "outblob" and self.race:
            self.race -= 1
            self._bump(path.parent)  # another writer's inblob
        return super().read(path)


def cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    header = len(certs) + 1
    off = header * P.CERT_ENTRY.size
    entries, blobs = b"", b""
    for g, der in certs.items():
        entries += P.CERT_ENTRY.pack(g.bytes_le, off + len(blobs), len(der))
        blobs += der
    return entries + bytes(P.CERT_ENTRY.size) + blobs


def test_configfs_tsm_tdx(tmp_path):
    fake = FakeTsmKernel("tdx_guest")
    prov = P.ConfigfsTsmProvider(tmp_path, expect="tdx_guest", fs=fake)
    ev = prov.get_evidence(b"\x01" * 32)
    assert ev.type is EvidenceType.TDX
    assert ev.data == b"REPORT:" + b"\x01" * 32 + bytes(32)
    assert ev.endorsements == ()
    assert list(tmp_path.iterdir()) == [], "the report entry is removed afterwards"


def test_configfs_tsm_snp_auxblob_cert_table(tmp_path):
    table = cert_table({P.GUID_VCEK: b"vcek-der", P.GUID_ASK: b"ask-der", P.GUID_ARK: b"ark-der"})
    prov = P.ConfigfsTsmProvider(tmp_path, fs=FakeTsmKernel("sev_guest", auxblob=table))
    ev = prov.get_evidence(b"x")
    assert ev.type is EvidenceType.SNP
    assert ev.endorsements == (b"vcek-der", b"ask-der", b"ark-der")


def test_configfs_tsm_generation_race_retries_then_succeeds(tmp_path):
    fake = FakeTsmKernel("tdx_guest", race=1)
    ev = P.ConfigfsTsmProvider(tmp_path, fs=fake).get_evidence(b"n")
    assert ev.data.startswith(b"REPORT:n")
    assert fake.race == 0


def test_configfs_tsm_generation_race_persistent_is_refused(tmp_path):
    fake = FakeTsmKernel("tdx_guest", race=99)
    with pytest.raises(UsageError) as e:
        P.ConfigfsTsmProvider(tmp_path, fs=fake).get_evidence(b"n")
    assert e.value.reason is Reason.NO_PROVIDER
    assert fake.race == 99 - P.TSM_RETRIES
    assert list(tmp_path.iterdir()) == []


def test_configfs_tsm_wrong_provider(tmp_path):
    with pytest.raises(UsageError) as e:
        P.ConfigfsTsmProvider(tmp_path, expect="tdx_guest", fs=FakeTsmKernel("sev_guest")).get_evidence(b"")
    assert e.value.reason is Reason.NO_PROVIDER


def test_report_data_too_long(tmp_path):
    with pytest.raises(UsageError) as e:
        P.ConfigfsTsmProvider(tmp_path, fs=FakeTsmKernel()).get_evidence(bytes(65))
    assert e.value.reason is Reason.CONFIG_INVALID


def _snp_response(report: bytes, status: int = 0) -> bytes:
    return P.SNP_RESP_HEADER.pack(status, len(report)) + report + bytes(P.SNP_RESP_SIZE - P.SNP_RESP_HEADER.size - len(report))


def test_sev_guest_ext_report_with_length_retry(tmp_path):
    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    table = cert_table({P.GUID_VLEK: b"vlek", P.GUID_ARK: b"ark"})
    calls = []

    def fake_ioctl(fd, request, req, certs_len):
        calls.append((request, certs_len))
        user_data, vmpl = P.SNP_REPORT_REQ.unpack(req)
        assert vmpl == 1
        if certs_len < 5 * P.PAGE:
            return P.SnpIoctlResult(b"", None, P.SNP_VMM_ERR_INVALID_LEN << 32, 5 * P.PAGE)
        return P.SnpIoctlResult(_snp_response(b"R" * 1184 + user_data[:4]), table.ljust(certs_len, b"\0"))

    ev = P.SevGuestProvider(dev, vmpl=1, ioctl=fake_ioctl).get_evidence(b"abcd")
    assert ev.type is EvidenceType.SNP
    assert ev.data == b"R" * 1184 + b"abcd"
    assert ev.endorsements == (b"vlek", b"ark")
    assert calls == [(P.SNP_GET_EXT_REPORT, 4 * P.PAGE), (P.SNP_GET_EXT_REPORT, 5 * P.PAGE)]
    assert P.SNP_GET_REPORT == 0xC0205300 and P.SNP_GET_EXT_REPORT == 0xC0205302


def test_sev_guest_firmware_error(tmp_path):
    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    prov = P.SevGuestProvider(dev, extended=False, ioctl=lambda fd, r, q, n: P.SnpIoctlResult(_snp_response(b"", status=0x16), None))
    with pytest.raises(UsageError) as e:
        prov.get_evidence(b"")
    assert e.value.reason is Reason.NO_PROVIDER


def test_sev_guest_missing_device(tmp_path):
    with pytest.raises(UsageError) as e:
        P.SevGuestProvider(tmp_path / "nope").get_evidence(b"")
    assert e.value.reason is Reason.NO_PROVIDER


def test_real_ioctl_on_regular_file_is_a_typed_error(tmp_path):
    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    with pytest.raises(UsageError) as e:
        P.SevGuestProvider(dev, extended=False).get_evidence(b"")
    assert e.value.reason is Reason.NO_PROVIDER


def test_gramine(tmp_path):
    (tmp_path / "attestation_type").write_text("dcap")
    (tmp_path / "quote").write_bytes(b"QUOTE")
    ev = P.GramineProvider(tmp_path).get_evidence(b"\x07" * 64)
    assert ev.type is EvidenceType.SGX and ev.data == b"QUOTE"
    assert (tmp_path / "user_report_data").read_bytes() == b"\x07" * 64


def test_gramine_epid_refused(tmp_path):
    (tmp_path / "attestation_type").write_text("epid")
    (tmp_path / "quote").write_bytes(b"Q")
    with pytest.raises(UsageError) as e:
        P.GramineProvider(tmp_path).get_evidence(b"")
    assert e.value.reason is Reason.NO_PROVIDER


def test_auto_detects_in_order(tmp_path):
    tsm, dev, gr = tmp_path / "tsm", tmp_path / "sev-guest", tmp_path / "attestation"
    opts = {"tsm_root": tsm, "sev_device": dev, "gramine_root": gr}
    with pytest.raises(UsageError) as e:
        P.make_provider("auto", **opts)
    assert e.value.reason is Reason.NO_PROVIDER
    assert str(tsm) in e.value.detail and str(dev) in e.value.detail and str(gr / "quote") in e.value.detail
    gr.mkdir()
    (gr / "quote").write_bytes(b"q")
    assert P.make_provider("auto", **opts).name == "gramine"
    dev.write_bytes(b"")
    assert P.make_provider("auto", **opts).name == "sev-guest"
    tsm.mkdir()
    assert P.make_provider("auto", **opts).name == "configfs-tsm"


def test_factory_kinds(tmp_path):
    assert P.make_provider("tdx", tsm_root=tmp_path).name == "configfs-tsm"
    assert P.make_provider("sgx", gramine_root=tmp_path).name == "gramine"
    dev = tmp_path / "sev"
    dev.write_bytes(b"")
    assert P.make_provider("snp", tsm_root=tmp_path / "none", sev_device=dev).name == "sev-guest"
    with pytest.raises(UsageError) as e:
        P.make_provider("snp", tsm_root=tmp_path / "none", sev_device=tmp_path / "none2")
    assert e.value.reason is Reason.NO_PROVIDER
    with pytest.raises(UsageError) as e:
        P.make_provider("tpm")
    assert e.value.reason is Reason.CONFIG_INVALID
    with pytest.raises(UsageError):
        P.make_provider("sim")


def test_cert_table_entry_out_of_range():
    bad = P.CERT_ENTRY.pack(P.GUID_VCEK.bytes_le, 1000, 10) + bytes(P.CERT_ENTRY.size)
    with pytest.raises(UsageError):
        P.parse_cert_table(bad)
    assert struct.calcsize("<16sII") == P.CERT_ENTRY.size


def test_sim_provider(tmp_path):
    pytest.importorskip("ratls.sim")
    pytest.importorskip("ratls.io.simdir")
    prov = P.make_provider("sim", sim_dir=tmp_path / "sim")
    ev = prov.get_evidence(b"\x05" * 64)
    assert ev.type is EvidenceType.SIM


def test_configfs_tsm_evidence_type_probed_before_first_report(tmp_path):
    """The sidecar reads ``evidence_type`` before asking for evidence: auto-detected TSM probes it."""
    prov = P.make_provider("auto", tsm_root=tmp_path, sev_device=tmp_path / "none", gramine_root=tmp_path / "none", tsm_fs=FakeTsmKernel("sev_guest"))
    assert prov.evidence_type is EvidenceType.SNP
    assert list(tmp_path.iterdir()) == [], "the probe entry is removed"
    assert P.ConfigfsTsmProvider(tmp_path, expect="tdx_guest").evidence_type is EvidenceType.TDX


def test_snp_via_configfs_tsm_end_to_end(tmp_path):
    table = cert_table({P.GUID_VCEK: b"vcek"})
    prov = P.make_provider("snp", tsm_root=tmp_path, vmpl=2, tsm_fs=FakeTsmKernel("sev_guest", auxblob=table))
    ev = prov.get_evidence(b"\x09" * 64)
    assert ev.type is EvidenceType.SNP and ev.endorsements == (b"vcek",)


def test_tdx_quote_from_configfs_with_collateral_verifies_offline(tmp_path):
    """A real TDX quote out of the (fake) kernel, collateral from a cache dir: verifiable from endorsements alone."""
    from ratls.evidence import VerifyOptions, verify_evidence
    from ratls.io.collateral import CacheDir
    from tests.vectors import read, ref_time

    name = "tdx/trustee-gnr-v4-tcbinfo"
    quote = read(name, "tdx_quote_6.dat")

    class QuoteKernel(FakeTsmKernel):
        def write(self, path, data):
            super().write(path, data)
            if path.name == "inblob":
                (path.parent / "outblob").write_bytes(quote)

    cache = CacheDir(tmp_path / "cache")
    cache.put("tcbinfo/tdx/00a06d080000", read(name, "tcbInfo.json"))
    cache.put("qeidentity/tdx", read(name, "enclaveIdentity.json"))
    (tmp_path / "tsm").mkdir()
    prov = P.make_provider("tdx", tsm_root=tmp_path / "tsm", tsm_fs=QuoteKernel("tdx_guest"), collateral=cache)
    assert isinstance(prov, P.WithIntelCollateral)
    ev = prov.get_evidence(b"r")
    assert len(ev.endorsements) == 2 and prov.evidence_type is EvidenceType.TDX
    v = verify_evidence(ev, VerifyOptions(now=ref_time(name)))
    assert v.verified, v.error
    assert v.claims["tcb-status"] == "OutOfDate"
