"""scripts/lib/sysdeps.sh (how scripts/test and bench/run.sh install the system packages they use).

Run against stand-ins for ``apt-get``, ``apt-cache`` and ``id`` placed first on PATH, so nothing is
installed and root is not needed: what matters is what it asks apt for, what it says, that it
stays within its time bound and that it never fails the script that sources it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "scripts" / "lib" / "sysdeps.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")

#: apt-cache knows the packages in $KNOWN; apt-get logs its calls, fails for those in $BROKEN,
#: sleeps $SLOW seconds on install, and records whether the policy-rc.d guard is in place
APT_GET = """#!/bin/bash
echo "apt-get $*" >>"$CALLS"
[ -e "$RATLS_POLICY_RC" ] && echo "policy-rc.d present" >>"$CALLS"
case " $* " in *" update "*) exit "${UPDATE_RC:-0}" ;; esac
sleep "${SLOW:-0}"
for b in $BROKEN; do case " $* " in *" $b "*) echo "E: Unable to install $b: broken"; exit 100 ;; esac; done
exit 0
"""
APT_CACHE = """#!/bin/bash
for k in $KNOWN; do [ "$2" = "$k" ] && { echo "  Candidate: 1.0-1"; break; }; done
echo "  Candidate: (none)"
# a version table long enough that a reader which stops at the first match makes this one get SIGPIPE
for i in $(seq 2000); do echo "     1.0-$i 500 http://deb.debian.org/debian bookworm/main amd64 Packages"; done
"""


def _run(
    tmp_path: Path, specs: list[str], *, root: bool = True, apt: bool = True, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tools = {"id": f"#!/bin/sh\necho {0 if root else 1000}\n"}
    if apt:
        tools |= {"apt-get": APT_GET, "apt-cache": APT_CACHE}
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"
    if not apt:  # a PATH without any apt-get: only the stand-in id and the basics
        for tool in ("bash", "timeout", "mktemp", "grep", "tail", "rm", "chmod", "sleep", "cat", "printf", "seq"):
            if (found := shutil.which(tool)) and not (bin_dir / tool).exists():
                (bin_dir / tool).symlink_to(found)
        path = str(bin_dir)
    script = f'set -euo pipefail\n. "{LIB}"\nsysdeps_ensure test {" ".join(shlex.quote(x) for x in specs)}\necho "caller goes on"\n'
    full_env = {
        "PATH": path,
        "CALLS": str(tmp_path / "calls"),
        "RATLS_POLICY_RC": str(tmp_path / "policy-rc.d"),
        "TMPDIR": str(tmp_path),
        **env,
    }
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=full_env, timeout=60, check=False)
    return proc, time.monotonic() - t0


def _calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls"
    return f.read_text().splitlines() if f.exists() else []


def test_nothing_missing_is_silent(tmp_path):
    proc, _ = _run(tmp_path, ["bash=bash", f"{LIB}=whatever"])
    assert proc.returncode == 0 and proc.stdout == "caller goes on\n" and proc.stderr == ""
    assert _calls(tmp_path) == []


def test_installs_what_is_missing_with_the_first_known_alternative(tmp_path):
    proc, _ = _run(tmp_path, ["no-such-tool=pkg-a", "/no/such/file=pkg-light|pkg-b", "-=pkg-a", "bash=bash"], KNOWN="pkg-a pkg-b")
    assert proc.returncode == 0 and proc.stdout == "caller goes on\n", proc.stderr
    calls = _calls(tmp_path)
    assert calls[0].endswith(" update") and any(c.endswith("install --no-install-recommends pkg-a pkg-b") for c in calls), calls
    assert "policy-rc.d present" in calls, "services were not kept from starting during the install"
    assert not (tmp_path / "policy-rc.d").exists(), "the policy-rc.d guard was left behind"
    assert "test: installed pkg-a pkg-b" in proc.stderr
    assert list(tmp_path.glob("ratls-apt.*")) == []


def test_an_existing_policy_rc_is_left_alone(tmp_path):
    guard = tmp_path / "policy-rc.d"
    guard.write_text("#!/bin/sh\nexit 0\n")
    proc, _ = _run(tmp_path, ["-=pkg-a"], KNOWN="pkg-a")
    assert proc.returncode == 0 and guard.read_text() == "#!/bin/sh\nexit 0\n"


def test_unknown_and_broken_packages_are_reported_and_the_rest_installed(tmp_path):
    proc, _ = _run(tmp_path, ["-=pkg-a", "-=pkg-broken", "-=pkg-unknown"], KNOWN="pkg-a pkg-broken", BROKEN="pkg-broken", UPDATE_RC="1")
    assert proc.returncode == 0 and proc.stdout == "caller goes on\n", proc.stderr
    err = proc.stderr
    assert "apt-get update failed" in err
    assert "test: installed pkg-a" in err
    assert "could not install pkg-broken (E: Unable to install pkg-broken: broken)" in err
    assert "apt has no package pkg-unknown" in err


def test_bounded_in_time(tmp_path):
    proc, took = _run(tmp_path, ["-=pkg-a"], KNOWN="pkg-a", SLOW="30", RATLS_SYSDEPS_TIMEOUT="2")
    assert proc.returncode == 0 and proc.stdout == "caller goes on\n"
    assert "could not install pkg-a (timed out)" in proc.stderr
    assert took < 15, f"took {took:.1f}s with a 2 s bound"


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"root": False}, "run as root with apt-get"),
        ({"apt": False}, "run as root with apt-get"),
        ({"RATLS_SYSDEPS": "skip"}, "RATLS_SYSDEPS=skip"),
    ],
)
def test_without_root_or_apt_it_says_so_and_goes_on(tmp_path, kw, says):
    proc, _ = _run(tmp_path, ["-=pkg-a"], KNOWN="pkg-a", **kw)
    assert proc.returncode == 0 and proc.stdout == "caller goes on\n"
    assert says in proc.stderr and "missing pkg-a" in proc.stderr
    assert _calls(tmp_path) == []
