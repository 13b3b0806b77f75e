"""The Kubernetes manifests of ``deploy/kubernetes``, checked offline.

Both kustomizations are built with ``kubectl kustomize``; every object is validated against the
Kubernetes schemas (``kubernetes-validate``) or, for the custom resources (ServiceMonitor,
PrometheusRule and the llm-d kinds the sidecar writes), against the JSON schemas of
``tests/k8s_schemas``, written from the projects' API references. The RBAC Roles must grant
exactly what the configured actuators and discovery use, and the sidecar must refuse at start a
config naming a Deployment the Roles do not cover.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from envs.twin import EngineTwin
from eval.cli import app
from policies.sidecar.actuators import FileActuator, build_actuators
from policies.sidecar.config import SidecarConfigError, load_config, twin_settings
from policies.sidecar.loop import Sidecar
from policies.sidecar.rbac import allows, granted_permissions, required_permissions
from slo.rules import render_rules
from slo.spec import default_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).with_name("k8s_schemas")
KUSTOMIZATIONS = ("base", "overlays/llm-d")
#: Kubernetes version whose schemas the built-in kinds are validated against.
KUBERNETES_VERSION = "1.30.0"
ZOO = REPO / "policies" / "zoo"
#: In-pod path prefixes, and where the tests put what the pod would find there.
POD_PATHS = {
    "/etc/budgetpilot/config/": "config/",
    "/etc/budgetpilot/token/": "token/",
    "/var/run/secrets/kubernetes.io/serviceaccount/": "serviceaccount/",
    "/var/lib/budgetpilot": "state",
    "/usr/local/lib/python3.11/site-packages/policies/zoo/": f"{ZOO}/",
}


def custom_schema(kind: str) -> dict:
    return json.loads((SCHEMAS / f"{kind.lower()}.json").read_text())


def validate(document: dict) -> None:
    """Validate one object: a custom resource by its schema, else by Kubernetes' own."""
    if (SCHEMAS / f"{document['kind'].lower()}.json").exists():
        jsonschema.validate(document, custom_schema(document["kind"]))
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@functools.cache
def build(kustomization: str) -> list[dict]:
    """The objects of one kustomization, built by ``kubectl kustomize``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (Debian package `kubernetes-client`) is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(params=KUSTOMIZATIONS)
def built(request) -> list[dict]:
    """The objects of each kustomization."""
    return build(request.param)


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def config_map(objects: list[dict]) -> dict[str, str]:
    (generated,) = of_kind(objects, "ConfigMap")
    return generated["data"]


def pod_config(objects: list[dict], tmp_path: Path):
    """The built config, loaded with the pod's files (ConfigMap, token, service account) laid
    out under ``tmp_path``."""
    files = config_map(objects)
    for relative, content in (
        *((f"config/{name}", text) for name, text in files.items()),
        ("token/token", "a-token"),
        ("serviceaccount/token", "sa-token"),
        ("serviceaccount/ca.crt", "ca"),
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    text = files["sidecar.yaml"]
    for prefix, local in POD_PATHS.items():
        local = local if local.startswith("/") else f"{tmp_path}/{local}"
        text = text.replace(prefix, local)
    (tmp_path / "sidecar.yaml").write_text(text)
    return load_config(tmp_path / "sidecar.yaml")


def test_every_object_is_valid(built):
    objects = built
    kinds = {o["kind"] for o in objects}
    expected = {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"}
    assert expected | {"ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim"} <= kinds
    for document in objects:
        validate(document)
    assert {o["metadata"]["namespace"] for o in objects} == {"llm"}


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval="30 seconds")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(alert="X")),
        ("Deployment", lambda o: o["spec"].update(replicas="one")),
    ],
)
def test_a_broken_object_is_refused(built, kind, change):
    """The validation can fail: one wrong field of each kind is caught."""
    document = of_kind(built, kind)[0]
    broken = json.loads(json.dumps(document))
    change(broken)
    errors = (jsonschema.ValidationError, kubernetes_validate.ValidationError)
    with pytest.raises(errors):
        validate(broken)


def test_the_prometheus_rule_is_what_slo_rules_generates():
    text, warnings = render_rules(default_spec(), prometheus_rule="budgetpilot-slos")
    assert warnings == []
    assert (DEPLOY / "base" / "prometheusrule.yaml").read_text() == text


def test_the_roles_grant_exactly_what_the_actuators_use(built, tmp_path):
    objects = built
    config = pod_config(objects, tmp_path)
    roles = of_kind(objects, "Role")
    assert granted_permissions(roles) == required_permissions(config)
    # The sidecar checks against the same Roles as the cluster is given.
    mounted = [d for path in config.rbac for d in yaml.safe_load_all(path.read_text())]
    assert [r["rules"] for r in of_kind(mounted, "Role")] == [r["rules"] for r in roles]
    (deployment,) = of_kind(objects, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "llm"}
    bindings = of_kind(objects, "RoleBinding")
    bound = {b["roleRef"]["name"] for b in bindings if subject in b["subjects"]}
    assert bound == {r["metadata"]["name"] for r in roles}


SCALE = {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]}
PODS = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}


@pytest.mark.parametrize(
    ("rules", "namespace", "covered"),
    [
        ([PODS, {**SCALE, "verbs": ["get", "patch", "update"]}], "llm", True),
        ([PODS, {**SCALE, "verbs": ["*"]}], "llm", True),
        ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "llm", True),
        ([PODS, {**SCALE, "verbs": ["get", "patch"]}], "other", False),
        ([PODS, {**SCALE, "verbs": ["patch"]}], "llm", False),
        (
            [PODS, {**SCALE, "verbs": ["get", "patch"], "resourceNames": ["vllm-strong"]}],
            "llm",
            False,
        ),
    ],
)
def test_any_role_granting_the_permissions_covers_them(tmp_path, rules, namespace, covered):
    config = pod_config(build("base"), tmp_path)
    role = {"kind": "Role", "metadata": {"name": "r", "namespace": namespace}, "rules": rules}
    granted = granted_permissions([role])
    assert all(allows(granted, p) for p in required_permissions(config)) is covered


def test_the_pod_fits_the_config(built, tmp_path):
    """Probes on the config's port, every written path on a writable volume (read-only root
    file system), the token from the Secret, and the applier applying what the actuators
    write."""
    objects = built
    config = pod_config(objects, tmp_path)
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    sidecar, applier = pod["containers"]
    assert sidecar["ports"] == [{"name": "http", "containerPort": config.port}]
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in sidecar["volumeMounts"] if not m.get("readOnly")]
    written = [config.state.directory, config.audit_log, config.kill_switch_file]
    written += [config.actuators.scale.directory]
    if config.actuators.file is not None:
        written.append(config.actuators.file.path)
    local_state = tmp_path / "state"
    assert writable == ["/var/lib/budgetpilot"]
    assert all(path.is_relative_to(local_state) for path in written)
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "token")
    assert token_mount["mountPath"] == "/etc/budgetpilot/token"
    assert volumes["token"]["secret"]["secretName"] == "budgetpilot-sidecar-token"
    script = config_map(objects)["apply.sh"]
    default = re.search(r"^actuation=\$\{BUDGETPILOT_ACTUATION:-(\S+)\}$", script, re.MULTILINE)
    actuation = default.group(1)
    assert config.actuators.scale.directory == local_state / "actuation" / "scale"
    assert '"$actuation"/scale/*.scale.yaml' in script and actuation.endswith("/actuation")
    if config.actuators.file is not None:
        assert config.actuators.file.path.parent == local_state / "actuation" / "router"
    assert applier["command"][-1] == "/etc/budgetpilot/config/apply.sh"


def test_the_config_fits_its_policy_and_actuates(built, tmp_path):
    """One cycle of the pod's config and policy (``ppo-elastic``), with an elastic engine twin
    standing in for the cluster: its listing for the API server's Pods, its router counters for
    the router's. The policy decides and every configured actuator writes its manifests."""
    config = pod_config(built, tmp_path)
    with EngineTwin("slow-ramp", seed=1, speed=0.0) as twin:
        twin.start()
        twin_entries = twin_settings(twin.url)
        settings = yaml.safe_load((tmp_path / "sidecar.yaml").read_text())
        settings.update({key: twin_entries[key] for key in ("discovery", "counters")})
        sidecar = Sidecar(load_config(None, settings))
        try:
            decision = sidecar.cycle()
        finally:
            sidecar.close()
    assert decision.mode == "policy"
    assert set(decision.desired_replicas) == set(config.scaling)
    expected = {"scale"} | ({"file"} if config.actuators.file is not None else set())
    assert decision.actuated == dict.fromkeys(expected, "ok")
    assert sorted(p.name for p in config.actuators.scale.directory.iterdir()) == [
        "llm.vllm-cheap.scale.yaml", "llm.vllm-strong.scale.yaml"
    ]  # fmt: skip


def test_the_router_objects_the_sidecar_writes_are_valid(tmp_path):
    config = pod_config(build("overlays/llm-d"), tmp_path)
    knobs = {"cheap_tier_share": 0.3, "shed_priority_below": 1.5, "offload_fraction": 0.1}
    manifests = FileActuator(config.actuators.file).manifests(knobs)
    assert {m["kind"] for m in manifests} == {
        "InferenceModelRewrite", "InferenceObjective", "ConfigMap"
    }  # fmt: skip
    for manifest in manifests:
        validate(manifest)


def test_the_applier_applies_what_the_actuators_write(tmp_path):
    """apply.sh, run once on the manifests the real actuators wrote, with a stand-in kubectl
    that records its arguments (no API server here): server-side apply of the router objects,
    ``kubectl scale`` of each pool's Deployment to the desired replicas."""
    objects = build("overlays/llm-d")
    config = pod_config(objects, tmp_path)
    knobs = {"cheap_tier_share": 0.2, "shed_priority_below": 0.5}
    payload = {"desired_replicas": {"strong": 4, "cheap": 2}}
    for actuator in build_actuators(config.actuators, config.scaling):
        actuator.apply(knobs, payload)
    calls = tmp_path / "kubectl.calls"
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    script = tmp_path / "apply.sh"
    script.write_text(config_map(objects)["apply.sh"])
    environment = {
        "PATH": f"{stub.parent}:/usr/bin:/bin",
        "BUDGETPILOT_ACTUATION": str(tmp_path / "state" / "actuation"),
    }
    subprocess.run(["sh", str(script), "once"], env=environment, check=True, timeout=60)
    router = config.actuators.file.path.parent
    assert sorted(calls.read_text().splitlines()) == [
        f"apply --server-side --field-manager=budgetpilot-sidecar --force-conflicts -f {router}/",
        "scale deployment vllm-cheap --namespace llm --replicas 2",
        "scale deployment vllm-strong --namespace llm --replicas 4",
    ]


def test_a_deployment_the_roles_do_not_cover_is_refused_at_start(built, tmp_path):
    objects = built
    config = pod_config(objects, tmp_path)
    renamed = config.scaling["cheap"].model_copy(update={"deployment": "vllm-cheap-v2"})
    scaling = {**config.scaling, "cheap": renamed}
    uncovered = config.model_copy(update={"scaling": scaling})
    with pytest.raises(SidecarConfigError, match="vllm-cheap-v2") as refused:
        Sidecar(uncovered)
    assert "vllm-cheap" not in str(refused.value).replace("vllm-cheap-v2", "")
    # The command line says it and exits 2, before scraping anything.
    path = tmp_path / "uncovered.yaml"
    path.write_text(
        (tmp_path / "sidecar.yaml").read_text().replace("vllm-cheap,", "vllm-cheap-v2,")
    )
    result = CliRunner().invoke(app, ["sidecar", "--config", str(path), "--check"])
    assert result.exit_code == 2
    assert "patch deployments/scale of apps/vllm-cheap-v2 in namespace llm" in result.output
