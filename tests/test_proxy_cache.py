"""The proxy's verdict cache: by certificate hash and policy digest, until the verdict expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization

from proxy.server import VerdictCache
from ratls.certificate import issue_certificate, new_key
from ratls.io import simdir
from ratls.policy import Policy
from sidecar.providers import make_provider
from tests.pair import default_measurement, sim_policy

#: the sim authority made here is valid from the real present, so the test clock starts there
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _cert(tmp_path, now):
    prov = make_provider("sim", sim_dir=tmp_path)
    cert = issue_certificate(new_key(), prov.get_evidence, now=now, lifetime=timedelta(hours=1))
    return cert.public_bytes(serialization.Encoding.DER)


def test_hit_until_expiry_then_reverified(tmp_path):
    simdir.load_or_create(tmp_path)
    der = _cert(tmp_path, T0)
    clock = Clock(T0 + timedelta(minutes=1))
    cache = VerdictCache(simdir.load_root(tmp_path), clock)
    policy = Policy.from_mapping(sim_policy(default_measurement()))
    import hashlib

    sha = hashlib.sha256(der).hexdigest()
    assert cache.lookup(sha, policy) is None
    v = cache.verify(der, policy)
    assert v.ok and v.expires_at == T0 + timedelta(hours=1)  # the certificate's not-after bounds it here
    assert cache.lookup(sha, policy) is v
    # a different policy has a different digest: never answered from the old entry
    other = Policy.from_mapping({**sim_policy(default_measurement()), "x-ms-sevsnpvm-is-debuggable": False})
    assert cache.lookup(sha, other) is None
    # evidence ages out / certificate expires: the entry is gone and verification runs again
    clock.now = T0 + timedelta(hours=1, seconds=1)
    assert cache.lookup(sha, policy) is None
    assert not cache.verify(der, policy).ok  # expired certificate now


def test_policy_evidence_age_bound_shortens_the_cache_life(tmp_path):
    simdir.load_or_create(tmp_path)
    der = _cert(tmp_path, T0)
    cache = VerdictCache(simdir.load_root(tmp_path), Clock(T0 + timedelta(seconds=5)))
    policy = Policy.from_mapping({**sim_policy(default_measurement()), "evidence-age-seconds": {"max": 300}})
    v = cache.verify(der, policy)
    assert v.ok
    assert v.expires_at == T0 - timedelta(minutes=1) + timedelta(seconds=300)  # not-before (1 min slack) + max age


def test_refusals_are_cached_briefly_and_pruned(tmp_path):
    simdir.load_or_create(tmp_path)
    der = _cert(tmp_path, T0)
    clock = Clock(T0 + timedelta(minutes=1))
    cache = VerdictCache(simdir.load_root(tmp_path), clock)
    refusing = Policy.from_mapping(sim_policy(b"\x01" * 48))
    v = cache.verify(der, refusing)
    assert not v.ok and v.failed_step == "policy"
    assert len(cache) == 1
    clock.now = T0 + timedelta(hours=2)
    cache.prune()
    assert len(cache) == 0
