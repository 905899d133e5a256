"""deploy/kubernetes: every manifest and rendered overlay is schema-valid, and the pod means what we say.

There is no cluster here, so "valid" means two things:
- each object validates against the Kubernetes OpenAPI schemas of 1.29 and 1.33 in strict mode
  (unknown fields are errors) with ``kubernetes-validate``, which ships those schemas offline;
- the confidential-pod invariants hold in every overlay: the init chain, models only in memory,
  Triton on loopback, one Service port (the sidecar's), passthrough ingress, non-root everywhere
  but the firewall init container, TEE devices only where evidence is made, and the options we
  pass parse with the real ``ratls`` argument parsers.

Overlays are rendered by :func:`render`, a small Kustomize subset (resources, strategic-merge
patches, images). Where ``kubectl`` is installed, a test checks that it renders exactly what
``kubectl kustomize`` renders, so the subset cannot drift from real Kustomize unnoticed.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("sim", "snp", "tdx", "sgx")
#: every kustomization we ship, by name -> directory
TARGETS = {
    "base": K8S / "base",
    **{o: K8S / "overlays" / o for o in OVERLAYS},
    "keybroker": K8S / "keybroker",
    "keybroker-sim": K8S / "keybroker-sim",
}
K8S_VERSIONS = ("1.29.0", "1.33.0")
CLUSTER_SCOPED = {"Namespace", "RuntimeClass"}
TEE_OF = {"base": "auto", "sim": "sim", "snp": "snp", "tdx": "tdx", "sgx": "sgx"}
ATTESTATION_TYPE_OF = {"sim": "sim", "snp": "sevsnpvm", "tdx": "tdxvm", "sgx": "sgx"}


# -- a Kustomize subset ----------------------------------------------------------------------------

#: list fields merged element-wise by a key (Kubernetes' patchMergeKey); every other list is replaced
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
}
SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic merge of ``patch`` into ``base`` (a copy): maps merge, null deletes, keyed lists merge."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        # Kustomize (kyaml) puts the patch's elements first, in the patch's order, then the base's
        # other elements in theirs. For initContainers order is semantics: an overlay that patches
        # one of them must list all of them (test_pod_holds_init_chain_backend_and_sidecar).
        mk = MERGE_KEYS[key]
        by_key = {x.get(mk): x for x in base}
        named = {item.get(mk) for item in patch}
        out = []
        for item in patch:
            if item.get("$patch") == "delete":
                continue
            k = item.get(mk)
            out.append(_merge(by_key[k], item, None) if k in by_key else copy.deepcopy(item))
        out.extend(copy.deepcopy(x) for x in base if x.get(mk) not in named)
        return out
    return copy.deepcopy(patch)


def _ident(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace", "")


def render(directory: Path) -> list[dict]:
    """Render a kustomization directory (the subset above; anything else is an error, not ignored)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED_KUSTOMIZE_KEYS
    assert not unknown, f"{directory}: kustomization keys outside the tested subset: {unknown}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs.extend(render(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for p in kust.get("patches", []):
        assert set(p) == {"path"}, f"{directory}: only file patches are in the subset: {p}"
        patch = yaml.safe_load((directory / p["path"]).read_text())
        matches = [i for i, d in enumerate(docs) if _ident(d) == _ident(patch)]
        assert len(matches) == 1, f"{directory}/{p['path']}: patch target {_ident(patch)} found {len(matches)} times"
        docs[matches[0]] = _merge(docs[matches[0]], patch)
    for img in kust.get("images", []):
        for d in docs:
            for c in _pod_containers(d):
                repo, _, _ = c["image"].rpartition(":")
                if repo == img["name"]:
                    c["image"] = f"{img.get('newName', repo)}:{img['newTag']}"
    return docs


def _pod_containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


# -- helpers -------------------------------------------------------------------------------------


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict], name: str = "ratls-inference") -> dict:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]


def container(spec: dict, name: str) -> dict:
    found = [c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name]
    assert len(found) == 1, f"container {name}: found {len(found)}"
    return found[0]


def mounts(c: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def under_mount(c: dict, path: str) -> dict:
    """The volume mount of ``c`` that holds ``path`` (the longest matching mount path)."""
    found = [m for p, m in mounts(c).items() if path == p or path.startswith(p.rstrip("/") + "/")]
    assert found, f"{path} is on no volume of container {c['name']}"
    return max(found, key=lambda m: len(m["mountPath"]))


def argv_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def sidecar_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "ratls-inference")["data"]["sidecar.yaml"])


def parse_with(module: str, argv: list[str]) -> argparse.Namespace:
    """Parse ``ratls <argv>`` with the real subcommand parser (as ratls.cli builds it)."""
    import importlib

    parser = argparse.ArgumentParser(prog="ratls")
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module).configure(sub.add_parser(argv[0]))
    return parser.parse_args(argv)


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    out = []
    for a in args:
        for k, v in env.items():
            a = a.replace(f"$({k})", v)
        out.append(a)
    return out


def _env_from_configmap(c: dict, cm: dict) -> dict[str, str]:
    env = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        env[e["name"]] = cm["data"][ref["key"]] if ref else e["value"]
    return env


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(path) for name, path in TARGETS.items()}


# -- schema validation ---------------------------------------------------------------------------


def _all_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_rendered_objects_validate_strictly(rendered, target, version):
    docs = rendered[target]
    assert docs, f"{target} renders nothing"
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{target}: {d['kind']}/{d['metadata']['name']} invalid for {version}: {e.message} at {list(e.path)}")


def test_every_file_is_complete_and_valid_or_a_patch():
    """Plain manifests (base, keybroker, examples) validate on their own; overlay patches are partial by design."""
    checked = 0
    for path in _all_manifest_files():
        for d in yaml.safe_load_all(path.read_text()):
            if not d:
                continue
            if "overlays" in path.parts or path.parent.name == "keybroker-sim":
                patched_targets = {_ident(x) for t in TARGETS.values() for x in render(t)}
                assert _ident(d) in patched_targets or d["kind"] == "RuntimeClass", f"{path}: {_ident(d)} patches nothing"
                if d["kind"] != "RuntimeClass":
                    continue
            kubernetes_validate.validate(d, K8S_VERSIONS[-1], strict=True)
            if d["kind"] not in CLUSTER_SCOPED:
                assert d["metadata"].get("namespace"), f"{path}: {d['kind']} has no namespace"
            checked += 1
    assert checked >= 15


def test_strict_validation_rejects_unknown_fields(rendered):
    """The validator is really strict: a misspelt field (runAsNonroot) is an error, not ignored."""
    dep = copy.deepcopy(one(rendered["base"], "Deployment"))
    dep["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: cannot cross-check the Kustomize subset")
@pytest.mark.parametrize("target", list(TARGETS))
def test_render_matches_kubectl_kustomize(rendered, target):
    proc = subprocess.run(["kubectl", "kustomize", str(TARGETS[target])], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 and "unknown command" in proc.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert proc.returncode == 0, proc.stderr
    theirs = {_ident(d): d for d in yaml.safe_load_all(proc.stdout) if d}
    ours = {_ident(d): d for d in rendered[target]}
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k] == theirs[k], f"{target}: {k} differs from kubectl kustomize"


# -- the confidential pod ------------------------------------------------------------------------

POD_TARGETS = ("base", *OVERLAYS)


@pytest.mark.parametrize("target", POD_TARGETS)
def test_pod_holds_init_chain_backend_and_sidecar(rendered, target):
    spec = pod_spec(rendered[target])
    expected = ["firewall", "bundle", "sim-dir", "unseal"] if target == "sim" else ["firewall", "bundle", "unseal"]
    assert [c["name"] for c in spec["initContainers"]] == expected
    assert sorted(c["name"] for c in spec["containers"]) == ["sidecar", "triton"]
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", POD_TARGETS)
def test_models_live_in_memory_and_unseal_writes_there(rendered, target):
    docs = rendered[target]
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["emptyDir"]["medium"] == "Memory"
    unseal, triton, sidecar = (container(spec, n) for n in ("unseal", "triton", "sidecar"))
    out = argv_value(unseal["args"], "--out")
    assert mounts(unseal)[out]["name"] == "models" and not mounts(unseal)[out].get("readOnly")
    model_dir = argv_value(triton["args"], "--model-dir")
    assert mounts(triton)[model_dir] == {"name": "models", "mountPath": model_dir, "readOnly": True}
    assert "models" not in {m["name"] for m in sidecar.get("volumeMounts", [])}, "the sidecar has no business with the plaintext model"
    # every volume a container writes to that may hold secrets is memory-backed; only ciphertext is on disk
    for v in spec["volumes"]:
        if "emptyDir" in v and v["name"] != "bundles":
            assert v["emptyDir"].get("medium") == "Memory", f"{target}: emptyDir {v['name']} is disk-backed"


@pytest.mark.parametrize("target", POD_TARGETS)
def test_unseal_args_parse_with_the_real_cli(rendered, target):
    docs = rendered[target]
    spec = pod_spec(docs)
    unseal = container(spec, "unseal")
    cm = one(docs, "ConfigMap", "ratls-inference")
    argv = _expand(unseal["args"], _env_from_configmap(unseal, cm))
    assert "$(" not in " ".join(argv)
    args = parse_with("sidecar.cli", argv)
    assert args.sidecar_command == "unseal"
    assert args.tee == TEE_OF[target]
    assert args.keybroker.startswith("https://"), "the model key travels to the TEE over HTTPS"
    assert not args.dangerous_allow_unsigned and args.signer
    assert args.bundle.startswith(mounts(unseal)["/bundles"]["mountPath"])
    key = Path(args.signer).name
    assert mounts(unseal)[args.signer]["subPath"] == key and key in cm["data"]
    if args.keybroker_ca:
        assert Path(args.keybroker_ca).name in cm["data"]
    if target == "sim":
        assert under_mount(unseal, args.sim_dir)["name"] == "run"


@pytest.mark.parametrize("target", POD_TARGETS)
def test_triton_is_loopback_only_and_sidecar_relays_to_it(rendered, target):
    docs = rendered[target]
    spec = pod_spec(docs)
    triton, sidecar = container(spec, "triton"), container(spec, "sidecar")
    assert argv_value(triton["args"], "--host") == "127.0.0.1"
    assert "ports" not in triton, "Triton declares no ports: nothing outside the pod may reach it"
    conf = sidecar_config(docs)
    args = parse_with("sidecar.cli", shlex.split(" ".join(sidecar["args"])))
    assert args.sidecar_command is None and args.config == mounts(sidecar)[args.config]["mountPath"]
    # every key of sidecar.yaml is a real `ratls sidecar` option (the sidecar rejects unknown keys)
    probe = argparse.ArgumentParser()
    import sidecar.cli as scli

    scli.configure(probe)
    known = {a.dest for a in probe._actions}
    assert {k.replace("-", "_") for k in conf} <= known, set(conf) - known
    assert conf["tee"] == TEE_OF[target]
    assert conf["http-backend"] == f"127.0.0.1:{argv_value(triton['args'], '--http-port')}"
    assert conf["grpc-backend"] == f"127.0.0.1:{argv_value(triton['args'], '--grpc-port')}"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert set(ports) == {"ratls", "admin"}
    assert int(conf["listen"].rpartition(":")[2]) == ports["ratls"]
    assert int(conf["admin"].rpartition(":")[2]) == ports["admin"]
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe_name]["httpGet"]["port"] == "admin", f"{probe_name} must use the admin port"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    if target == "sim":
        assert under_mount(sidecar, conf["sim-dir"])["name"] == "run"


@pytest.mark.parametrize("target", POD_TARGETS)
def test_only_the_firewall_is_root_and_holds_a_capability(rendered, target):
    spec = pod_spec(rendered[target])
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in [*spec["initContainers"], *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc.get("privileged"), c["name"]
        if c["name"] == "firewall":
            assert sc["capabilities"]["add"] == ["NET_ADMIN"]
            assert sc["runAsUser"] == 0
        else:
            assert "add" not in sc["capabilities"], f"{c['name']} must add no capability"
            assert sc.get("runAsNonRoot", True) is True and sc.get("runAsUser", pod_sc["runAsUser"]) != 0, c["name"]
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]


@pytest.mark.parametrize("target", POD_TARGETS)
def test_firewall_admits_exactly_the_sidecar_ports(rendered, target):
    docs = rendered[target]
    spec = pod_spec(docs)
    script = one(docs, "ConfigMap", "ratls-inference")["data"]["firewall.sh"]
    fw = container(spec, "firewall")
    path = fw["command"][-1]
    assert mounts(fw)[path]["subPath"] == "firewall.sh"
    sh = shutil.which("sh")
    if sh:
        subprocess.run([sh, "-n", "-c", script], check=True)
    values = dict(line.split("=", 1) for line in script.splitlines() if line.strip() and "=" in line and line.split("=")[0].isupper())
    accepted = {
        int(values[v.strip('"$')])
        for line in script.splitlines()
        if "-j ACCEPT" in line and "--dport" in line
        for v in [argv_value(line.split(), "--dport")]
    }
    sidecar_ports = {p["containerPort"] for p in container(spec, "sidecar")["ports"]}
    assert accepted == sidecar_ports
    assert "-P INPUT DROP" in script


@pytest.mark.parametrize("target", POD_TARGETS)
def test_service_exposes_only_the_attested_port(rendered, target):
    docs = rendered[target]
    svc = one(docs, "Service", "ratls-inference")
    spec = pod_spec(docs)
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert len(svc["spec"]["ports"]) == 1
    port = svc["spec"]["ports"][0]
    sidecar_ratls = next(p for p in container(spec, "sidecar")["ports"] if p["name"] == "ratls")
    assert port["targetPort"] in ("ratls", sidecar_ratls["containerPort"])
    assert svc["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("target", POD_TARGETS)
def test_ingress_passes_tls_through_by_sni(rendered, target):
    docs = rendered[target]
    ing = one(docs, "Ingress", "ratls-inference")
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert ing["spec"]["ingressClassName"] == "nginx"
    svc = one(docs, "Service", "ratls-inference")
    dns = sidecar_config(docs)["dns-name"]
    for rule in ing["spec"]["rules"]:
        assert rule["host"] in dns, "the SNI the ingress routes on is a name in the sidecar's certificate"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == svc["metadata"]["name"]
            assert backend["port"]["name"] == svc["spec"]["ports"][0]["name"]
    assert "tls" not in ing["spec"], "a tls section would make the ingress terminate TLS"


@pytest.mark.parametrize("target", POD_TARGETS)
def test_hpa_and_pdb_target_the_deployment(rendered, target):
    docs = rendered[target]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ratls-inference"}
    assert hpa["spec"]["minReplicas"] >= 2, "one replica down must not take the service down"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


RUNTIME = {"base": "kata", "sim": None, "snp": "kata-qemu-snp", "tdx": "kata-qemu-tdx", "sgx": None}


@pytest.mark.parametrize("target", POD_TARGETS)
def test_runtime_class_and_untrusted_workload_annotation(rendered, target):
    docs = rendered[target]
    tmpl = one(docs, "Deployment")["spec"]["template"]
    rc = tmpl["spec"].get("runtimeClassName")
    assert rc == RUNTIME[target]
    annotations = tmpl["metadata"].get("annotations", {})
    if rc:
        assert one(docs, "RuntimeClass", rc)["handler"] == rc
        assert annotations["io.kubernetes.cri.untrusted-workload"] == "true"
    else:
        assert "io.kubernetes.cri.untrusted-workload" not in annotations


#: paths each overlay must give the evidence makers (unseal and sidecar), and no one else
TEE_PATHS = {
    "snp": {"/dev/sev-guest", "/sys/kernel/config"},
    "tdx": {"/sys/kernel/config"},
    "sgx": set(),
    "sim": set(),
    "base": set(),
}


@pytest.mark.parametrize("target", POD_TARGETS)
def test_tee_interfaces_only_where_evidence_is_made(rendered, target):
    spec = pod_spec(rendered[target])
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name in ("unseal", "sidecar"):
        assert TEE_PATHS[target] <= set(mounts(container(spec, name))), name
    for c in [*spec["initContainers"], *spec["containers"]]:
        if c["name"] in ("unseal", "sidecar"):
            continue
        assert not TEE_PATHS[target] & set(mounts(c)), f"{c['name']} must not see the TEE interface"
        assert "sgx.intel.com/provision" not in c["resources"]["limits"], c["name"]
    for path in TEE_PATHS[target]:
        vol = volumes[mounts(container(spec, "sidecar"))[path]["name"]]
        assert vol["hostPath"]["path"] == path
        assert vol["hostPath"]["type"] == ("CharDevice" if path.startswith("/dev/") else "Directory")
    if target == "sgx":
        for name in ("unseal", "sidecar"):
            limits = container(spec, name)["resources"]["limits"]
            assert {"sgx.intel.com/enclave", "sgx.intel.com/provision", "sgx.intel.com/epc"} <= set(limits), name
        assert "sgx.intel.com/enclave" in container(spec, "triton")["resources"]["limits"], "Triton runs in an enclave too"


@pytest.mark.parametrize("target", OVERLAYS)
def test_client_policy_is_a_valid_policy_for_this_tee(rendered, target):
    from ratls.policy import parse_policy

    text = one(rendered[target], "ConfigMap", "ratls-inference")["data"]["client-policy.yaml"]
    policy = parse_policy(text)
    doc = yaml.safe_load(text)
    assert doc["x-ms-attestation-type"] == ATTESTATION_TYPE_OF[target]
    assert any(k.endswith("-is-debuggable") and v is False for k, v in doc.items())
    assert policy is not None


# -- the key broker ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["keybroker", "keybroker-sim"])
def test_keybroker_secrets_args_and_affinity(rendered, target):
    docs = rendered[target]
    dep = one(docs, "Deployment", "ratls-keybroker")
    spec = dep["spec"]["template"]["spec"]
    (kb,) = spec["containers"]
    args = parse_with("keybroker.cli", kb["args"])
    example = {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "keybroker" / "secrets.example.yaml").read_text())}
    volumes = {v["name"]: v for v in spec["volumes"]}
    by_path = mounts(kb)

    def secret_of(file: str) -> str:
        mount = next(m for p, m in by_path.items() if file.startswith(p + "/") or file == p)
        return volumes[mount["name"]]["secret"]["secretName"]

    assert secret_of(args.master_key) == "ratls-keybroker-master-key"
    assert secret_of(args.store) == "ratls-keybroker-store"
    assert secret_of(args.tls_cert) == secret_of(args.tls_key) == "ratls-keybroker-tls"
    for name in ("ratls-keybroker-master-key", "ratls-keybroker-store", "ratls-keybroker-tls"):
        kubernetes_validate.validate(example[name], K8S_VERSIONS[-1], strict=True)
    assert Path(args.master_key).name in example["ratls-keybroker-master-key"]["stringData"]
    assert not any(d["kind"] == "Secret" for d in docs), "real key material is never applied from the repo"
    assert all(by_path[p].get("readOnly") for p in by_path if volumes[by_path[p]["name"]].get("secret"))
    assert (args.sim_dir is not None) == (target == "keybroker-sim")
    sc = kb["securityContext"]
    assert (
        spec["securityContext"]["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    )
    svc = one(docs, "Service", "ratls-keybroker")
    assert svc["spec"]["sessionAffinity"] == "ClientIP", "a release's challenge lives in one replica"
    port = int(args.listen.rpartition(":")[2])
    assert [p["containerPort"] for p in kb["ports"]] == [port]
    assert kb["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_sim_chain_reaches_only_the_sim_dir_init_and_its_copy_loads(rendered, tmp_path):
    """The sim overlay's private chain: one init container sees the Secret; its copy passes the sim dir's mode check."""
    import subprocess
    import sys

    from ratls.errors import Reason, UsageError
    from ratls.io import simdir

    spec = pod_spec(rendered["sim"])
    holders = [c["name"] for c in [*spec["initContainers"], *spec["containers"]] if "sim" in {m["name"] for m in c.get("volumeMounts", [])}]
    assert holders == ["sim-dir"]
    init = container(spec, "sim-dir")
    secret_path = next(p for p, m in mounts(init).items() if m["name"] == "sim")
    run_path = next(p for p, m in mounts(init).items() if m["name"] == "run")
    # a Secret volume as the kubelet writes it: root-owned files, group-readable (defaultMode 0440)
    made = tmp_path / "made"
    subprocess.run([sys.executable, "-m", "ratls.cli", "sim", "init", "--dir", str(made)], check=True, capture_output=True, cwd=ROOT)
    secret = tmp_path / "secret"
    secret.mkdir()
    for f in ("authority.pem", "root.der"):
        (secret / f).write_bytes((made / f).read_bytes())
        (secret / f).chmod(0o440)
    with pytest.raises(UsageError) as e:
        simdir.load_or_create(secret)  # the Secret as mounted is refused (private key readable by the group): hence the copy
    assert e.value.reason is Reason.CONFIG_INVALID
    run = tmp_path / "run"
    run.mkdir()
    command = init["command"]
    assert command[:2] == ["python", "-c"]
    code = command[2].replace(secret_path, str(secret)).replace(run_path, str(run))
    subprocess.run([sys.executable, "-c", code], check=True)
    conf = sidecar_config(rendered["sim"])
    copied = run / Path(conf["sim-dir"]).relative_to(run_path)
    assert simdir.load_or_create(copied).root_der == simdir.load_root(made)
    unseal = parse_with("sidecar.cli", container(spec, "unseal")["args"])
    assert unseal.sim_dir == conf["sim-dir"]
