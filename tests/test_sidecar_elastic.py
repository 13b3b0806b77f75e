"""Replica autoscaling: the engine twin's elastic fleet and the sidecar deciding desired replicas.

The closed loops run over real HTTP on loopback between an elastic twin (``short-flash-crowd``)
and the sidecar with an elastic linear policy that scales the strong pool by its replicas
serving (up while few serve, down once more serve: with the provisioning delay it overshoots
and comes back). Checked: the twin runs the desired replicas the sidecar published, each within
the ``scaling`` bounds and at most ``max_step`` from the previous one; the sidecar's replica
features are the ones :class:`~envs.contract.FleetSignalTracker` computes from the twin's true
replica lifecycle, as the environment does; its budgets stay exact while new replicas start;
the scale manifests, the desired-replicas gauge, the decision JSON and the audit log carry the
desired replicas. Also: the twin's ``/v1/replicas`` validation, a provisioning replica's 503,
Kubernetes Pod JSON -> lifecycle, and the start errors of an elastic policy.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from envs.contract import (
    FleetSignalTracker,
    ReplicaGauges,
    ReplicaLifecycle,
    neutral_knob_values,
    replicas_knob_name,
)
from envs.fleet_env import LLMFleetEnv
from envs.twin import EngineTwin
from eval.perf_sidecar import FORBIDDEN_MODULES, linear_policy
from policies.sidecar.config import (
    DiscoverySettings,
    PodDiscoverySettings,
    SidecarConfigError,
    load_config,
    twin_scaling,
    twin_settings,
)
from policies.sidecar.discovery import (
    Discovery,
    DiscoveryError,
    engine_of_pod,
    lifecycle_of_pod,
    lifecycle_of_state,
    read_listing,
)
from policies.sidecar.loop import Sidecar
from policies.sidecar.server import SidecarServer
from slo.engine import BudgetEngine
from tests.conftest import finish_process
from tests.test_sidecar import _Capture

pytest.importorskip("onnx", reason="the test policies are written with onnx (train extra)")

SCENARIO = "short-flash-crowd"
INTERVAL_S = 30.0
CYCLES = 16
SCALING = {
    "strong": {"deployment": "vllm-strong", "namespace": "llm", "max_replicas": 5},
    "cheap": {"deployment": "vllm-cheap", "namespace": "llm", "max_replicas": 2},
}


def http(url: str, body: object = None) -> tuple[int, dict | str]:
    """(status, decoded JSON or text) of a GET, or of a POST of ``body`` as JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text, kind = response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as err:
        status, text, kind = err.code, err.read().decode(), err.headers
    return status, json.loads(text) if "json" in kind["Content-Type"] else text


@pytest.fixture(scope="module")
def contracts():
    env = LLMFleetEnv(SCENARIO, elastic=True)
    return env.observation_contract, env.action_contract, env.slo_spec


def scaling_policy(path, contracts):
    """A linear policy keeping every knob neutral but the replica knobs: the strong pool grows
    while at most half its cap serves and shrinks beyond (``0.5 tanh(3 - 6 serving/cap)``), the
    cheap pool always asks for more."""
    observation, action, spec = contracts
    units = action.encode(neutral_knob_values(action.names))
    bias = np.arctanh(np.clip(units, -0.995, 0.995))
    weights = np.zeros((observation.size, len(action.knobs)))
    strong = action.names.index(replicas_knob_name("strong"))
    bias[strong] = 3.0
    weights[observation.feature_names.index("pool.strong.replicas_serving"), strong] = -6.0
    bias[action.names.index(replicas_knob_name("cheap"))] = 1.0
    return linear_policy(path, observation, action, spec, bias=bias, weights=weights)


@pytest.fixture(scope="module")
def policy_path(contracts, tmp_path_factory):
    return scaling_policy(tmp_path_factory.mktemp("zoo") / "elastic.onnx", contracts)


def elastic_config(policy, twin_url: str, tmp_path, **extra) -> dict:
    """Sidecar settings for an elastic twin: its discovery, counters and control API, plus
    router and scale manifests."""
    settings = twin_settings(twin_url)
    file_actuator = {
        "path": str(tmp_path / "router.yaml"),
        "pool": "llama-pool",
        "model": "chat",
        "strong_model": "llama-3-8b",
        "cheap_model": "llama-3.2-1b",
    }
    settings["actuators"] |= {"file": file_actuator, "scale": {"directory": str(tmp_path)}}
    return {
        "policy": str(policy),
        "port": 0,
        "interval_s": INTERVAL_S,
        "scaling": copy.deepcopy(SCALING),
        "audit_log": str(tmp_path / "audit.jsonl"),
        **settings,
        **extra,
    }


def expected_pool_features(contract, stats) -> dict:
    """Pool features of the environment (``LLMFleetEnv._fleet_signals``) for these stats."""
    pool = np.array([contract.pools.index(n) for n in stats.pool_names])
    desired = np.zeros(len(contract.pools))
    desired[pool] = stats.pool_desired
    gauges = ReplicaGauges(
        pool=pool[stats.pool],
        healthy=stats.healthy,
        kv_usage=stats.kv_usage,
        kv_usage_mean=stats.kv_usage_mean,
        waiting=stats.waiting,
        running=stats.running,
        max_num_seqs=stats.max_num_seqs,
        lifecycle=stats.lifecycle,
        pool_desired=desired,
    )
    return FleetSignalTracker(contract, INTERVAL_S).update(gauges, 0.0, 0.0).pools


@pytest.fixture(scope="module")
def closed_loop(policy_path, tmp_path_factory):
    """The stepped loop (the twin's clock still, the test advancing it): what the checks need."""
    tmp = tmp_path_factory.mktemp("loop")
    twin = EngineTwin(SCENARIO, seed=3, speed=0.0)
    twin.start()
    sidecar = Sidecar(load_config(None, elastic_config(policy_path, twin.url, tmp)))
    server = SidecarServer(sidecar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    reference = BudgetEngine(twin.spec)  # the same budgets, fed request events directly
    steps = []
    try:
        initial = dict(sidecar.desired)
        for _ in range(CYCLES):
            stats = twin.stats  # what discovery and the pages show (actuating changes it)
            decision = sidecar.cycle(twin.now)
            steps.append(
                {
                    "decision": decision,
                    "stats": stats,
                    "twin_desired": twin.sim.desired_replicas,
                    "sidecar_burn": sidecar.observer.engine.burn_rates(),
                    "reference_burn": reference.burn_rates(),
                }
            )
            reference.ingest_events(twin.step(INTERVAL_S))
            reference.advance_to(twin.now)
        served = {path: http(f"{server.url}{path}")[1] for path in ("/metrics", "/v1/decision")}
    finally:
        server.shutdown()
        sidecar.close()
        twin.close()
    records = [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]
    return {"steps": steps, "initial": initial, "served": served, "records": records, "tmp": tmp}


def test_the_twin_runs_the_desired_replicas_the_sidecar_published(closed_loop):
    for step in closed_loop["steps"]:
        decision = step["decision"]
        assert decision.mode == "policy"
        assert decision.actuated == {"file": "ok", "scale": "ok", "twin": "ok"}
        assert step["twin_desired"] == decision.desired_replicas
    published = [s["decision"].desired_replicas["strong"] for s in closed_loop["steps"]]
    assert max(published) == SCALING["strong"]["max_replicas"]  # up to the bound...
    assert published[-1] < max(published)  # ...and back down once the new replicas serve


def test_published_replicas_stay_in_bounds_and_move_by_max_step(closed_loop):
    previous = closed_loop["initial"]
    guardrails = set()
    for step in closed_loop["steps"]:
        decision = step["decision"]
        for pool, count in decision.desired_replicas.items():
            assert 1 <= count <= SCALING[pool]["max_replicas"]
            assert abs(count - previous[pool]) <= 1
        guardrails |= {i.guardrail for i in decision.interventions}
        previous = decision.desired_replicas
    assert {"replica_step", "replica_bounds"} <= guardrails  # both limits were needed


def test_replica_features_are_the_environments_of_the_twins_lifecycle(closed_loop, contracts):
    contract = contracts[0]
    states = set()
    for step in closed_loop["steps"]:
        expected = expected_pool_features(contract, step["stats"])
        observed = step["decision"].observation.signals.pools
        for pool in contract.pools:
            for feature in contract.pool_features:
                if feature != "kv_usage_mean":  # the sidecar averages samples, not time
                    assert observed[pool][feature] == pytest.approx(expected[pool][feature])
        states |= set(step["stats"].lifecycle[step["stats"].pool == 0].tolist())
    assert {ReplicaLifecycle.PROVISIONING, ReplicaLifecycle.SERVING} <= states


def test_budgets_stay_exact_while_new_replicas_start_serving(closed_loop):
    # Until the first scale-down: a replica that stops takes the requests it ended since its
    # last scrape with it (as a real one does).
    steps = closed_loop["steps"]
    strong = [s["decision"].desired_replicas["strong"] for s in steps]
    first_down = next(k for k in range(1, len(steps)) if strong[k] < strong[k - 1])
    scaling_up = steps[: first_down + 1]
    assert any(s["stats"].pool_serving[0] > 2 for s in scaling_up)  # new replicas served
    for step in scaling_up:
        np.testing.assert_allclose(step["sidecar_burn"], step["reference_burn"], rtol=1e-9)


def test_scale_manifests_are_deployment_patches(closed_loop):
    final = closed_loop["steps"][-1]["decision"].desired_replicas
    for pool, settings in SCALING.items():
        path = closed_loop["tmp"] / f"llm.{settings['deployment']}.scale.yaml"
        assert yaml.safe_load(path.read_text()) == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": settings["deployment"], "namespace": "llm"},
            "spec": {"replicas": final[pool]},
        }
    assert list(yaml.safe_load_all((closed_loop["tmp"] / "router.yaml").read_text()))


def test_desired_replicas_are_served_as_a_gauge_decision_and_audit(closed_loop):
    final = closed_loop["steps"][-1]["decision"].desired_replicas
    families = {
        f.name: f for f in text_string_to_metric_families(closed_loop["served"]["/metrics"])
    }
    gauge = families["budgetpilot_sidecar_desired_replicas"]
    assert gauge.type == "gauge"
    assert {(s.labels["pool"], s.labels["deployment"]): s.value for s in gauge.samples} == {
        (pool, s["deployment"]): final[pool] for pool, s in SCALING.items()
    }
    decision = closed_loop["served"]["/v1/decision"]
    assert decision["desired_replicas"] == final
    assert set(decision["observation"]["replica_counts"]) == {"strong", "cheap"}
    records = closed_loop["records"]
    assert [r["desired_replicas"] for r in records] == [
        s["decision"].desired_replicas for s in closed_loop["steps"]
    ]


def audit_records(path: Path) -> list[dict]:
    """The audit log's complete records so far (none before the file exists)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True) if "\n" in line]


def scaled_beyond(records: list[dict], decisions: int, strong: int) -> bool:
    """At least ``decisions`` records, one with more than ``strong`` strong replicas desired."""
    return len(records) >= decisions and any(
        r["desired_replicas"]["strong"] > strong for r in records
    )


def wait_for(condition, timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (generous: the machine may be
    loaded)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s"
        time.sleep(0.1)


def test_a_live_loop_at_high_speed_keeps_twin_and_sidecar_in_step(policy_path, tmp_path):
    """The twin's own clock at 120x and the sidecar's run loop every 0.25 s (30 simulated s)."""
    with EngineTwin(SCENARIO, seed=5, speed=120.0) as twin:
        twin.start()
        config = elastic_config(
            policy_path, twin.url, tmp_path, interval_s=0.25, scrape={"stale_after_s": 2.0}
        )
        sidecar = Sidecar(load_config(None, config))
        stop = threading.Event()
        runner = threading.Thread(target=sidecar.run, args=(stop,))
        runner.start()
        try:
            # Until five decisions were made and one of them scaled the strong pool beyond two.
            wait_for(lambda: scaled_beyond(audit_records(tmp_path / "audit.jsonl"), 5, 2))
        finally:
            stop.set()
            runner.join(timeout=30)
            sidecar.close()
        assert twin.sim.desired_replicas == sidecar.desired
    records = audit_records(tmp_path / "audit.jsonl")
    previous = None
    for record in records:
        desired = record["desired_replicas"]
        assert all(1 <= desired[p] <= SCALING[p]["max_replicas"] for p in SCALING)
        if previous is not None:
            assert all(abs(desired[p] - previous[p]) <= 1 for p in SCALING)
        previous = desired if record["actuated"].get("twin") == "ok" else previous
    assert any(r["desired_replicas"]["strong"] > 2 for r in records)


def test_the_scale_actuator_alone_writes_the_manifests(policy_path, idle_twin, tmp_path):
    config = elastic_config(policy_path, idle_twin.url, tmp_path / "audit")
    config["actuators"] = {"scale": {"directory": str(tmp_path / "scale")}}
    sidecar = Sidecar(load_config(None, config))
    decision = sidecar.cycle(idle_twin.now)
    sidecar.close()
    assert decision.actuated == {"scale": "ok"} and sidecar.desired == decision.desired_replicas
    written = {
        path.name: yaml.safe_load(path.read_text()) for path in (tmp_path / "scale").iterdir()
    }
    assert written == {
        f"llm.{s['deployment']}.scale.yaml": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": s["deployment"], "namespace": "llm"},
            "spec": {"replicas": decision.desired_replicas[pool]},
        }
        for pool, s in SCALING.items()
    }
    assert decision.desired_replicas != idle_twin.sim.desired_replicas  # the twin was not told


def test_scaling_defaults_come_from_the_twin_unless_configured(
    policy_path, contracts, idle_twin, tmp_path
):
    config = elastic_config(policy_path, idle_twin.url, tmp_path)
    configured = load_config(None, config)
    del config["scaling"]
    unconfigured = load_config(None, config)
    caps = dict(zip(contracts[0].pools, contracts[0].max_replicas, strict=True))
    assert caps == idle_twin.max_replicas == {"strong": 6, "cheap": 3}
    assert twin_scaling(unconfigured, idle_twin.url) == {
        pool: {"deployment": pool, "min_replicas": 1, "max_replicas": cap, "max_step": 1}
        for pool, cap in caps.items()
    }
    assert twin_scaling(configured, idle_twin.url) == {}  # the config wins
    with EngineTwin("steady", seed=1, speed=0.0) as fixed:
        fixed.start()
        with pytest.raises(SidecarConfigError, match="runs a fixed fleet .* --elastic"):
            twin_scaling(unconfigured, fixed.url)


def test_the_cli_scales_the_twin_with_only_a_policy(policy_path, contracts, tmp_path):
    """``budgetpilot sidecar --policy P --twin URL``: no config file; the twin (at 120x) is the
    discovery, each pool scales within [1, the policy's cap], and the twin's desired replicas
    end where the audit log says the last decision put them."""
    audit = tmp_path / "audit.jsonl"
    caps = dict(zip(contracts[0].pools, contracts[0].max_replicas, strict=True))
    with EngineTwin(SCENARIO, seed=6, speed=120.0) as twin:
        twin.start()
        initial = twin.sim.desired_replicas
        arguments = ["sidecar", "--policy", str(policy_path), "--twin", twin.url, "--port", "0"]
        arguments += ["--interval", "0.25", "--audit-log", str(audit)]
        code = f"from eval.cli import app\napp({arguments!r})\n"
        process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60.0
            while not audit.exists() or len(audit.read_text().splitlines()) < 6:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the sidecar made no decisions"
                time.sleep(0.1)
        finally:
            _, errors = finish_process(process)
        assert process.returncode == 0, errors
        final = twin.sim.desired_replicas
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    previous = initial
    for record in records:
        assert record["actuated"] == {"twin": "ok"}
        desired = record["desired_replicas"]
        assert all(1 <= desired[p] <= caps[p] for p in caps)
        assert all(abs(desired[p] - previous[p]) <= 1 for p in caps)
        previous = desired
    assert final == records[-1]["desired_replicas"] != initial


# ------------------------------------------------------------------------------------------------
# The elastic twin


@pytest.fixture(scope="module")
def idle_twin():
    with EngineTwin(SCENARIO, seed=1, speed=0.0) as engine_twin:
        engine_twin.start()
        yield engine_twin


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"desired": {"giant": 2}}, ["unknown pool 'giant'", "strong, cheap"]),
        ({"desired": {"strong": 7}}, ["pool 'strong'", "7 outside [1, 6]"]),
        ({"desired": {"cheap": 0}}, ["pool 'cheap'", "0 outside [1, 3]"]),
        ({"desired": {"strong": 2.5}}, ["pool 'strong'", "whole number", "2.5"]),
        ({"desired": {"strong": "3"}}, ["pool 'strong'", "whole number"]),
        ({"desired": {"strong": True}}, ["pool 'strong'", "whole number"]),
        ({"desired": {"strong": 3, "cheap": 4}}, ["pool 'cheap'", "4 outside [1, 3]"]),
        ({"strong": 3}, ['expected {"desired"']),
        ([3], ['expected {"desired"']),
    ],
)
def test_bad_replica_updates_get_400_naming_pool_and_bound_and_change_nothing(
    idle_twin, body, words
):
    before = idle_twin.replicas_state()
    status, error = http(f"{idle_twin.url}/v1/replicas", body)
    assert status == 400
    for word in words:
        assert word in error["error"]
    assert idle_twin.replicas_state() == before == http(f"{idle_twin.url}/v1/replicas")[1]


def test_a_fixed_twin_refuses_replicas_and_lists_its_engines_as_before():
    with EngineTwin("steady", seed=1, speed=0.0) as fixed:
        fixed.start()
        for body in (None, {"desired": {"strong": 3}}):
            status, error = http(f"{fixed.url}/v1/replicas", body)
            assert status == 409 and "fixed fleet" in error["error"]
        engines = http(f"{fixed.url}/engines")[1]
        assert all(set(e) == set(engines[0]) and "state" not in e for e in engines)
        assert fixed.sim.desired_replicas == {"strong": 2, "cheap": 1}


def test_a_provisioning_replica_answers_503_then_serves_then_drains_and_goes():
    with EngineTwin(SCENARIO, seed=2, speed=0.0) as twin:
        url = twin.start()
        assert http(f"{url}/v1/replicas", {"desired": {"strong": 3}})[0] == 200
        listed = {e["name"]: e for e in http(f"{url}/engines")[1]}
        assert listed["strong-2"]["state"] == "provisioning" and not listed["strong-2"]["healthy"]
        assert {e["desired_replicas"] for e in listed.values() if e["pool"] == "strong"} == {3}
        status, error = http(f"{url}/engines/strong-2/metrics")
        assert status == 503 and "provisioning" in error["error"]
        waited = 0.0
        while {e["name"]: e for e in http(f"{url}/engines")[1]}["strong-2"]["state"] != "serving":
            assert waited < 600.0, "the replica never became ready"
            twin.step(10.0)
            waited += 10.0
        assert waited >= 120.0  # a Llama-3-8B replica needs minutes (node, weights, start)
        twin.step(60.0)
        status, page = http(f"{url}/engines/strong-2/metrics")
        assert status == 200 and served_total(page) > 0
        replicas = http(f"{url}/v1/replicas", {"desired": {"strong": 2}})[1]["replicas"]
        assert replicas["strong"] == {"provisioning": 0, "serving": 2, "draining": 1}
        draining = [e["name"] for e in http(f"{url}/engines")[1] if e["state"] == "draining"]
        assert http(f"{url}/engines/{draining[0]}/metrics")[0] == 200  # still exporting
        twin.step(120.0)  # its requests have ended: it stopped
        strong = {e["name"] for e in http(f"{url}/engines")[1] if e["pool"] == "strong"}
        assert strong == {"strong-0", "strong-1", "strong-2"} - {draining[0]}
        status, error = http(f"{url}/engines/{draining[0]}/metrics")
        assert status == 404 and "stopped" in error["error"]


# ------------------------------------------------------------------------------------------------
# Lifecycle from discovery: Kubernetes Pods


def served_total(page: str) -> float:
    families = text_string_to_metric_families(page)
    return sum(s.value for f in families if f.name == "vllm:request_success" for s in f.samples)


def _pod(name: str, pool: str) -> dict:
    """A Ready vLLM pod as ``kubectl get pod -o json`` shows it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "llm",
            "uid": "0b9b7c8e-3f0e-4a59-9d6b-2d3c7e3f5a11",
            "creationTimestamp": "2025-03-01T10:00:00Z",
            "generateName": f"vllm-{pool}-7d9f8b6c5d-",
            "labels": {
                "app": f"vllm-{pool}",
                "budgetpilot.io/pool": pool,
                "pod-template-hash": "7d9f8b6c5d",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"vllm-{pool}-7d9f8b6c5d",
                    "controller": True,
                    "blockOwnerDeletion": True,
                    "uid": "5c1e2a9d-8b7f-4e3a-9c2d-1f0e6b5a4d33",
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.8.5",
                    "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"],
                    "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
            "nodeName": "gpu-node-3",
            "terminationGracePeriodSeconds": 120,
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-03-01T10:04:12Z"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "hostIP": "10.0.1.5",
            "podIP": "10.244.1.17",
            "podIPs": [{"ip": "10.244.1.17"}],
            "qosClass": "Burstable",
            "startTime": "2025-03-01T10:00:03Z",
        },
    }


def _pending(pod: dict) -> dict:
    """Unschedulable: no node with a free GPU yet."""
    pod["spec"].pop("nodeName")
    pod["status"] = {
        "phase": "Pending",
        "qosClass": "Burstable",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    }
    return pod


def _loading(pod: dict) -> dict:
    """Running, the readiness probe failing while the engine loads the weights."""
    for condition in pod["status"]["conditions"]:
        if condition["type"] in ("Ready", "ContainersReady"):
            condition.update(status="False", reason="ContainersNotReady")
    return pod


def _terminating(pod: dict) -> dict:
    """Scaled down: deletion requested, the grace period running."""
    pod["metadata"].update(deletionTimestamp="2025-03-01T11:00:00Z", deletionGracePeriodSeconds=120)
    return pod


def _evicted(pod: dict) -> dict:
    pod["status"].update(phase="Failed", reason="Evicted", message="The node was low on memory.")
    return pod


def _listed(pod: dict) -> dict:
    """A pod as a list's item: the API server leaves out each item's kind and apiVersion."""
    return {k: v for k, v in pod.items() if k not in ("kind", "apiVersion")}


#: The namespace's pods: three of the strong pool (Ready, loading, terminating), one evicted,
#: a Ready cheap one and a pod outside the pools (no pool label: the label selector drops it).
PODS = [
    _pod("vllm-strong-7d9f8b6c5d-x2k4p", "strong"),
    _loading(_pod("vllm-strong-7d9f8b6c5d-m8q2r", "strong")),
    _terminating(_pod("vllm-strong-7d9f8b6c5d-c7d4w", "strong")),
    _evicted(_pod("vllm-strong-7d9f8b6c5d-z9v6t", "strong")),
    _pod("vllm-cheap-5b6d7c8f9a-h3j5k", "cheap"),
    {**_pod("prometheus-0", "none"), "metadata": {"name": "prometheus-0", "labels": {}}},
]
#: What discovery makes of them: (name, pool, lifecycle, metrics URL).
ENGINES_OF_PODS = [
    ("vllm-strong-7d9f8b6c5d-x2k4p", "strong", "SERVING", "http://10.244.1.17:8000/metrics"),
    ("vllm-strong-7d9f8b6c5d-m8q2r", "strong", "PROVISIONING", "http://10.244.1.17:8000/metrics"),
    ("vllm-strong-7d9f8b6c5d-c7d4w", "strong", "DRAINING", "http://10.244.1.17:8000/metrics"),
    ("vllm-cheap-5b6d7c8f9a-h3j5k", "cheap", "SERVING", "http://10.244.1.17:8000/metrics"),
]


@pytest.mark.parametrize(
    ("variant", "lifecycle"),
    [
        (lambda p: p, ReplicaLifecycle.SERVING),
        (_pending, ReplicaLifecycle.PROVISIONING),
        (_loading, ReplicaLifecycle.PROVISIONING),
        (_terminating, ReplicaLifecycle.DRAINING),
        (lambda p: _terminating(_loading(p)), ReplicaLifecycle.DRAINING),
        (_evicted, ReplicaLifecycle.STOPPED),
    ],
)
def test_pod_status_gives_the_replica_lifecycle(variant, lifecycle):
    assert lifecycle_of_pod(variant(_pod("vllm-strong-7d9f8b6c5d-x2k4p", "strong"))) == lifecycle


def test_pods_become_engines_and_states_are_read_by_name():
    settings = PodDiscoverySettings(max_num_seqs={"strong": 256, "cheap": 512})
    engine = engine_of_pod(_pod("vllm-strong-7d9f8b6c5d-x2k4p", "strong"), settings)
    assert (engine.name, engine.pool, engine.url, engine.max_num_seqs) == (
        "vllm-strong-7d9f8b6c5d-x2k4p",
        "strong",
        "http://10.244.1.17:8000/metrics",
        256,
    )
    assert engine_of_pod(_pending(_pod("p", "cheap")), settings).url is None  # no IP yet
    pods = [*PODS[:-1], _pod("x-a", "giant")]
    listing = read_listing({"apiVersion": "v1", "kind": "PodList", "items": pods}, settings)
    assert [(e.name, e.lifecycle.name) for e in listing.engines] == [
        (name, lifecycle) for name, _, lifecycle, _ in ENGINES_OF_PODS
    ]
    assert listing.reports_lifecycle and len(listing.problems) == 1
    assert "pool 'giant' has no discovery.pods.max_num_seqs" in listing.problems[0]
    assert lifecycle_of_state("draining") == ReplicaLifecycle.DRAINING
    with pytest.raises(ValueError, match="'ready' is not one of provisioning, serving"):
        lifecycle_of_state("ready")
    with pytest.raises(DiscoveryError, match="expected a JSON list"):
        read_listing({"kind": "Status", "message": "forbidden"})


# ------------------------------------------------------------------------------------------------
# Start errors, holding, the kill switch, shadow mode, the fallback, restarts


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda c, t: c.update(scaling={"strong": SCALING["strong"]}), "scaling.cheap: the policy"),
        (
            lambda c, t: c["scaling"]["strong"].update(max_replicas=7),
            "scaling.strong.max_replicas: 7 exceeds the policy's max_replicas 6",
        ),
        (lambda c, t: c["scaling"].update(giant=SCALING["cheap"]), "scaling.giant: not a pool"),
        (lambda c, t: c.update(kill_knobs={"strong_replicas_change": 0.5}), "kill_knobs.strong"),
        (
            lambda c, t: c.update(
                discovery=None,
                engines=[
                    {"name": e["name"], "url": e["metrics_url"], "pool": e["pool"]}
                    | {"max_num_seqs": e["max_num_seqs"]}
                    for e in t.engines()
                ],
            ),
            "configure discovery",
        ),
    ],
)
def test_an_elastic_policy_that_cannot_scale_is_refused_at_start(
    edit, words, policy_path, idle_twin, tmp_path
):
    config = elastic_config(policy_path, idle_twin.url, tmp_path)
    edit(config, idle_twin)
    with pytest.raises(SidecarConfigError, match=words.replace(".", r"\.")):
        Sidecar(load_config(None, config))


def test_an_elastic_policy_refuses_a_listing_without_lifecycle(policy_path, tmp_path):
    with EngineTwin("steady", seed=1, speed=0.0, elastic=False) as fixed:
        fixed.start()
        config = elastic_config(policy_path, fixed.url, tmp_path)
        config.update(engines=[], discovery={"url": f"{fixed.url}/engines"})
        with pytest.raises(SidecarConfigError, match="does not give every engine's lifecycle"):
            Sidecar(load_config(None, config))


def test_hold_kill_shadow_and_fallback_keep_or_follow_the_replicas(
    policy_path, contracts, tmp_path
):
    with EngineTwin(SCENARIO, seed=4, speed=0.0) as twin:
        twin.start()
        hook = _Capture()
        state = {"directory": str(tmp_path / "state")}
        config = elastic_config(
            policy_path, twin.url, tmp_path, fallback={"baseline": "hpa"}, state=state
        )
        config["actuators"]["webhook"] = {"url": hook.url}
        sidecar = Sidecar(load_config(None, config))
        t0 = twin.now
        grown = sidecar.cycle(t0).desired_replicas
        assert grown == twin.sim.desired_replicas == {"strong": 3, "cheap": 2}
        assert hook.bodies[-1]["desired_replicas"] == grown
        held = sidecar.decide(t0 + 60.0)  # no scrape since: stale metrics
        assert held.mode == "hold" and held.desired_replicas == grown
        fallback = sidecar.decide(t0 + 600.0)
        assert fallback.mode == "fallback" and "'hpa'" in fallback.reason
        sidecar.set_kill_switch(True)
        killed = sidecar.cycle(t0 + 630.0)
        assert killed.mode == "kill" and killed.desired_replicas == grown
        sidecar.set_kill_switch(False)
        sidecar.set_shadow(True)
        twin.set_replicas({"desired": {"strong": 1}})  # someone else scales down meanwhile
        stats = twin.stats
        shadow = sidecar.cycle(t0 + 660.0)
        assert set(shadow.actuated.values()) == {"skipped: shadow mode"}
        assert len(hook.bodies) == 2  # the first decision and the kill switch's
        counts = shadow.observation.replica_counts["strong"]
        assert counts == {"provisioning": 0, "serving": 1, "draining": 1}
        expected = expected_pool_features(contracts[0], stats)["strong"]
        observed = shadow.observation.signals.pools["strong"]
        for feature in ("replicas_draining", "replicas_desired", "healthy_fraction"):
            assert observed[feature] == pytest.approx(expected[feature])
        assert shadow.desired_replicas == {"strong": 2, "cheap": 2}  # decided from the fleet's
        assert twin.sim.desired_replicas == sidecar.desired == {"strong": 1, "cheap": 2}
        sidecar.set_shadow(False)
        sidecar.close()  # saves the desired replicas in force
        twin.set_replicas({"desired": {"strong": 4}})
        restarted = Sidecar(load_config(None, config))
        assert restarted.desired == {"strong": 1, "cheap": 2}  # its own, not the listing's
        restarted.close()
        hook.shutdown()


# ------------------------------------------------------------------------------------------------
# The command line and the example config


def test_the_cli_runs_an_elastic_policy_without_the_training_stack(
    policy_path, idle_twin, tmp_path
):
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"policy": str(policy_path), "scaling": SCALING}))
    code = (
        "import sys, json\n"
        "from eval.cli import app\n"
        f"app(['sidecar', '--config', {str(config)!r}, '--twin', {idle_twin.url!r}, '--once',"
        " '--shadow'], standalone_mode=False)\n"
        f"print(json.dumps([m for m in {list(FORBIDDEN_MODULES)!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    decision = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert decision["mode"] == "policy" and decision["desired_replicas"] == {
        "strong": 3,
        "cheap": 2,
    }
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert idle_twin.sim.desired_replicas == {"strong": 2, "cheap": 1}  # shadow: untouched


def test_the_example_configs_elastic_section_is_valid():
    text = (Path(__file__).resolve().parents[1] / "policies/sidecar/example.yaml").read_text()
    lines = text.splitlines()
    start = lines.index("# discovery:")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("# Published"))
    uncommented = [line[2:] for line in lines[start:end] if line.startswith("# ")]
    yaml_lines = [line for line in uncommented if re.match(r" |[a-z_]+:", line)]  # not prose
    data = yaml.safe_load(text) | yaml.safe_load("\n".join(yaml_lines))
    data.pop("engines")  # discovery lists them
    scale = next(line for line in lines if line.startswith("  # scale:"))
    data["actuators"] |= yaml.safe_load(scale.replace("# ", "", 1))
    config = load_config(None, data)
    assert config.discovery.pods.max_num_seqs == {"strong": 256, "cheap": 512}
    assert {p: s.max_replicas for p, s in config.scaling.items()} == {"strong": 6, "cheap": 3}
    assert config.actuators.scale.directory == Path("/etc/budgetpilot/scale")


def test_the_shipped_elastic_policy_scales_the_twin_through_the_sidecar(tmp_path):
    """The reference ``ppo-elastic`` (a real exported PPO actor) in the stepped loop: the twin
    runs the replicas it publishes, and the policy in-process repeats every audited action."""
    from policies.runtime import load_policy

    shipped = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-elastic.onnx"
    twin = EngineTwin("slow-ramp", seed=2, speed=0.0)
    twin.start()
    sidecar = Sidecar(load_config(None, elastic_config(shipped, twin.url, tmp_path)))
    published = []
    try:
        for _ in range(CYCLES):
            decision = sidecar.cycle(twin.now)
            assert decision.mode == "policy" and decision.actuated["twin"] == "ok"
            assert twin.sim.desired_replicas == decision.desired_replicas
            published.append(decision.desired_replicas)
            twin.step(INTERVAL_S)
    finally:
        sidecar.close()
        twin.close()
    assert len({tuple(d.values()) for d in published}) > 1  # it scaled
    policy = load_policy(shipped)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    for record in records:
        vector = np.asarray(record["observation"]["vector"], dtype=np.float32)
        np.testing.assert_array_equal(policy.act(vector), np.float32(record["raw_action"]))


def _selected(pod: dict, selector: str) -> bool:
    """Whether ``pod`` matches a label selector of ``key`` and ``key=value`` terms."""
    labels = pod["metadata"].get("labels", {})
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


class _ApiServer(BaseHTTPRequestHandler):
    """The pods API as a Kubernetes API server answers it: ``GET /api/v1/namespaces/NS/pods``
    with a bearer token gives a ``PodList`` of the pods matching ``labelSelector``; a wrong
    token gives a ``Status`` with code 401."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        selector = query.get("labelSelector", [""])[0]
        if self.headers.get("Authorization") == f"Bearer {self.server.token}":
            status, body = (
                200,
                {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "48213907"},
                    "items": [_listed(p) for p in self.server.pods if _selected(p, selector)],
                },
            )
        else:
            status, body = (
                401,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "Unauthorized",
                    "reason": "Unauthorized",
                    "code": 401,
                },
            )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base signature)
        pass


@pytest.fixture
def api_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    server.token, server.pods = "first", copy.deepcopy(PODS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl, as an operator would make one)."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def pods_discovery(url: str, **credentials) -> Discovery:
    """Discovery of the pool-labelled pods at ``url`` (the pods API of namespace ``llm``)."""
    pods = PodDiscoverySettings(max_num_seqs={"strong": 256, "cheap": 512})
    selector = "?labelSelector=budgetpilot.io%2Fpool"
    return Discovery(DiscoverySettings(url=f"{url}{selector}", pods=pods, **credentials))


def engines_found(discovery: Discovery) -> list[tuple]:
    listing = discovery.fetch()
    assert listing.reports_lifecycle and not listing.problems
    return [(e.name, e.pool, e.lifecycle.name, e.url) for e in listing.engines]


def test_discovery_sends_the_current_bearer_token(api_server, tmp_path):
    url = f"http://127.0.0.1:{api_server.server_port}/api/v1/namespaces/llm/pods"
    token = tmp_path / "token"
    token.write_text("first\n")
    discovery = pods_discovery(url, token_file=token)
    assert engines_found(discovery) == ENGINES_OF_PODS
    api_server.token = "rotated"
    token.write_text("rotated\n")  # the kubelet rotates projected tokens in place
    assert engines_found(discovery) == ENGINES_OF_PODS
    with pytest.raises(DiscoveryError, match="HTTP 401"):
        pods_discovery(url).fetch()


def test_discovery_verifies_https_with_the_given_ca(api_server, tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    api_server.socket = tls.wrap_socket(api_server.socket, server_side=True)
    url = f"https://127.0.0.1:{api_server.server_port}/api/v1/namespaces/llm/pods"
    token = tmp_path / "token"
    token.write_text("first")
    trusted = pods_discovery(url, token_file=token, ca_file=cert)
    assert engines_found(trusted) == ENGINES_OF_PODS
    api_server.pods[1] = _pod("vllm-strong-7d9f8b6c5d-m8q2r", "strong")  # its weights loaded
    assert engines_found(trusted)[1][2] == "SERVING"
    with pytest.raises(DiscoveryError, match="CERTIFICATE_VERIFY_FAILED"):
        pods_discovery(url, token_file=token).fetch()
    with pytest.raises(DiscoveryError, match="HTTP 401"):
        pods_discovery(url, ca_file=cert).fetch()


@pytest.mark.parametrize(
    ("url", "files", "message"),
    [
        ("http://10.0.0.2/pods", {"token_file": "token"}, "token would travel in clear"),
        ("http://127.0.0.1/pods", {"ca_file": "token"}, "ca_file: the discovery url is not https"),
        ("https://10.0.0.2/pods", {"token_file": "missing"}, "token_file: .*not a readable file"),
    ],
)
def test_discovery_credentials_are_checked(url, files, message, tmp_path):
    (tmp_path / "token").write_text("t")
    paths = {name: str(tmp_path / file) for name, file in files.items()}
    with pytest.raises(ValueError, match=message):
        DiscoverySettings(url=url, **paths)
