"""``--collateral-dir`` / ``--pccs-url`` in ``ratls proxy``, ``ratls sidecar`` and ``ratls inspect``.

The certificates are TDX RA-TLS certificates over the test DCAP PKI (:mod:`tests.dcap_pki`): the
quote's report data binds the certificate key, and the certificate carries no collateral, so a
verdict that passes the default policy (``crl-checked`` and ``qe-identity-checked`` true) shows the
collateral came from the configured directory or PCCS. The PCCS is a ThreadingHTTPServer on a free
loopback port serving Intel's PCS v4 paths.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest

from proxy import cli as pcli
from ratls.certificate import issue_certificate, new_key
from ratls.errors import UsageError
from ratls.evidence import EvidenceType
from ratls.intel import verify as intel_verify
from ratls.io.collateral import CacheDir, MemoryCache, PccsGetter, service_getter
from ratls.policy import Policy
from sidecar import cli as scli
from sidecar import providers
from tests.dcap_pki import NOW, DcapTestPki
from tests.fake_pccs import FakePccs

TDX_POLICY = Policy.from_mapping({"x-ms-attestation-type": "tdxvm"})


@pytest.fixture(scope="module")
def pki():
    return DcapTestPki()


@pytest.fixture
def trust_test_root(pki, monkeypatch):
    """Services pin the real Intel root; here the test PKI's root stands in for it."""
    monkeypatch.setattr(intel_verify, "intel_root_spki", lambda: pki.root_spki)
    monkeypatch.setattr(intel_verify, "intel_root", lambda: pki.root)


def bare_certificate(pki) -> bytes:
    """An RA-TLS certificate whose TDX quote binds its key and which carries no collateral."""
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = issue_certificate(new_key(), lambda rd: pki.attest(rd, with_collateral=False), now=NOW)
    return cert.public_bytes(Encoding.DER)


def fill(cache_dir, pki) -> None:
    c = CacheDir(cache_dir)
    for key, blob in pki.collateral_items().items():
        c.put(key, blob)


def pki_pccs(pki: DcapTestPki) -> FakePccs:
    """Intel PCS v4 paths on loopback, serving the test PKI's collateral (root CRL as hex, as PCCS does)."""
    return FakePccs({
        f"/tdx/certification/v4/tcb?fmspc={pki.fmspc.upper()}": (pki.tcb_info, "TCB-Info-Issuer-Chain"),
        "/tdx/certification/v4/qe/identity": (pki.qe_identity, "SGX-Enclave-Identity-Issuer-Chain"),
        f"/sgx/certification/v4/pckcrl?ca={pki.ca_kind}&encoding=der": (pki.pck_crl, None),
        "/sgx/certification/v4/rootcacrl": (pki.root_crl.hex().encode(), None),
    }, pki.tcb_chain_pem)


@pytest.fixture
def pccs(pki):
    p = pki_pccs(pki)
    yield p
    p.close()


def proxy_config(argv):
    parser = argparse.ArgumentParser()
    pcli.configure(parser)
    return pcli.build_config(parser.parse_args(["--route", "svc.test:8000=127.0.0.1:1", *argv]))


@dataclass
class Clock:
    def __call__(self):
        return NOW


def proxy_verdict(cfg, der):
    """The proxy's own verifier (its verdict cache) as ``ratls proxy`` builds it."""
    from proxy.server import Proxy

    proxy = Proxy(cfg)
    assert proxy.cache.collateral is cfg.collateral
    proxy.cache.clock = Clock()
    return proxy.cache.verify(der, TDX_POLICY)


def assert_fully_checked(v):
    assert v.verified, v.error
    assert v.ok, [r.to_dict() for r in v.policy.failed]
    assert v.claims["crl-checked"] is True and v.claims["qe-identity-checked"] is True
    assert v.claims["tcb-status"] == "UpToDate"
    assert any(s.name == "dcap-qvl" and s.ok for s in v.steps), "complete collateral: the dcap-qvl engine gave the verdict"


# --------------------------------------------------------------------------- configuration


def test_proxy_options_from_command_line_and_yaml(tmp_path, pccs):
    assert proxy_config([]).collateral is None
    cfg = proxy_config(["--collateral-dir", str(tmp_path)])
    assert isinstance(cfg.collateral, CacheDir) and cfg.collateral.root == tmp_path
    cfg = proxy_config(["--pccs-url", pccs.url])
    assert isinstance(cfg.collateral, PccsGetter) and isinstance(cfg.collateral.cache, MemoryCache)
    (tmp_path / "cache").mkdir()
    conf = tmp_path / "proxy.yaml"
    conf.write_text(f"collateral-dir: cache\npccs-url: {pccs.url}/\n")
    cfg = proxy_config(["--config", str(conf)])
    assert isinstance(cfg.collateral, PccsGetter) and cfg.collateral.url == pccs.url
    assert cfg.collateral.cache.root == tmp_path / "cache", "a directory in the config file is relative to the file"
    other = tmp_path / "other"
    other.mkdir()
    assert proxy_config(["--config", str(conf), "--collateral-dir", str(other)]).collateral.cache.root == other, "command line wins"


@pytest.mark.parametrize("argv", [["--pccs-url", "ftp://pccs.example"], ["--collateral-dir", "/nonexistent/ratls-collateral"]])
def test_proxy_bad_collateral_options_are_usage_errors(argv):
    with pytest.raises(UsageError):
        proxy_config(argv)


def test_sidecar_options_from_command_line_and_yaml(tmp_path, monkeypatch):
    seen = {}

    def fake(kind, **options):
        seen.update(options)
        return providers.SimProvider.__new__(providers.SimProvider)

    monkeypatch.setattr(providers, "_make_provider", fake)
    conf = tmp_path / "sidecar.yaml"
    conf.write_text(f"tee: tdx\ncollateral-dir: {tmp_path}\npccs-url: http://127.0.0.1:9/\n")
    parser = argparse.ArgumentParser()
    scli.configure(parser)
    opts = scli.merged(parser.parse_args(["--config", str(conf)]), scli._KNOWN)
    assert opts["collateral_dir"] == str(tmp_path) and opts["pccs_url"] == "http://127.0.0.1:9/"
    scli.make_attest(opts)
    getter = seen["collateral"]
    assert isinstance(getter, PccsGetter) and getter.cache.root == tmp_path
    opts = scli.merged(parser.parse_args(["--tee", "tdx", "--collateral-dir", str(tmp_path)]), scli._KNOWN)
    scli.make_attest(opts)
    assert isinstance(seen["collateral"], CacheDir)
    with pytest.raises(UsageError):
        scli.make_attest(scli.merged(parser.parse_args(["--tee", "sim", "--collateral-dir", str(tmp_path)]), scli._KNOWN))


def test_service_getter_without_options_is_none():
    assert service_getter(None, None) is None


# --------------------------------------------------------------------------- proxy: verification


def test_bare_certificate_refused_without_collateral(pki, trust_test_root):
    v = proxy_verdict(proxy_config([]), bare_certificate(pki))
    assert v.verified and not v.ok
    assert {r.claim for r in v.policy.failed} == {"crl-checked", "qe-identity-checked", "tcb-status", "attester_tcb_status"}


def test_proxy_collateral_from_cache_dir_only(pki, trust_test_root, tmp_path):
    fill(tmp_path, pki)
    assert_fully_checked(proxy_verdict(proxy_config(["--collateral-dir", str(tmp_path)]), bare_certificate(pki)))


def test_proxy_collateral_from_pccs_only(pki, trust_test_root, pccs):
    cfg = proxy_config(["--pccs-url", pccs.url])
    assert_fully_checked(proxy_verdict(cfg, bare_certificate(pki)))
    fetched = len(pccs.hits)
    assert fetched == 4
    # kept in memory: the next certificate (a rotation) costs no round trip
    assert_fully_checked(proxy_verdict(cfg, bare_certificate(pki)))
    assert len(pccs.hits) == fetched


def test_proxy_pccs_fills_the_cache_dir(pki, trust_test_root, pccs, tmp_path):
    assert_fully_checked(proxy_verdict(proxy_config(["--pccs-url", pccs.url, "--collateral-dir", str(tmp_path)]), bare_certificate(pki)))
    assert CacheDir(tmp_path).get(f"tcbinfo/tdx/{pki.fmspc}") == pki.tcb_info
    pccs.close()  # offline now: a new proxy on the same directory still verifies
    assert_fully_checked(proxy_verdict(proxy_config(["--collateral-dir", str(tmp_path)]), bare_certificate(pki)))


def test_endorsements_come_first(pki, trust_test_root, tmp_path):
    """Collateral in the certificate wins over the cache: a garbled cache entry is never read."""
    from cryptography.hazmat.primitives.serialization import Encoding

    for key in pki.collateral_items():
        CacheDir(tmp_path).put(key, b"{garbage")
    cert = issue_certificate(new_key(), pki.attest, now=NOW).public_bytes(Encoding.DER)
    assert_fully_checked(proxy_verdict(proxy_config(["--collateral-dir", str(tmp_path)]), cert))


def test_pccs_down_refused_not_crashed(pki, trust_test_root, pccs):
    cfg = proxy_config(["--pccs-url", pccs.url])
    pccs.close()
    v = proxy_verdict(cfg, bare_certificate(pki))
    assert v.verified and not v.ok and cfg.collateral.errors


# --------------------------------------------------------------------------- sidecar: certificates carry it


@pytest.mark.parametrize("source", ["dir", "pccs"])
def test_sidecar_certificate_carries_collateral(pki, trust_test_root, tmp_path, pccs, monkeypatch, source):
    class TestPkiTdx:
        name = "test-pki-tdx"
        evidence_type = EvidenceType.TDX

        def get_evidence(self, report_data):
            return pki.attest(report_data, with_collateral=False)

    monkeypatch.setattr(providers, "_make_provider", lambda kind, **options: TestPkiTdx())
    if source == "dir":
        fill(tmp_path, pki)
        argv = ["--tee", "tdx", "--collateral-dir", str(tmp_path)]
    else:
        argv = ["--tee", "tdx", "--pccs-url", pccs.url]
    parser = argparse.ArgumentParser()
    scli.configure(parser)
    attest, etype = scli.make_attest(scli.merged(parser.parse_args(argv), scli._KNOWN))
    assert etype == "tdx"
    from cryptography.hazmat.primitives.serialization import Encoding

    der = issue_certificate(new_key(), attest, now=NOW).public_bytes(Encoding.DER)
    # a proxy with no collateral source of its own: everything rides in the certificate
    assert_fully_checked(proxy_verdict(proxy_config([]), der))


# --------------------------------------------------------------------------- inspect


def test_inspect_collateral_dir(pki, trust_test_root, tmp_path, capsys):
    from ratls.cli import main

    fill(tmp_path / "cache", pki)
    cert = tmp_path / "cert.der"
    cert.write_bytes(bare_certificate(pki))
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(TDX_POLICY.rules))
    rc = main(["inspect", str(cert), "--collateral-dir", str(tmp_path / "cache"), "--at", NOW.isoformat(), "--policy", str(policy), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["claims"]["crl-checked"] is True and doc["policy_ok"] is True
