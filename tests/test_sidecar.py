"""The controller sidecar over real HTTP on loopback: config, contract fit, decisions,
guardrails, stale metrics, actuators, HTTP endpoints, audit log, persisted state, CLI.

The fleet is a local HTTP server serving vLLM pages rendered from synthetic request events;
the policy is a linear ONNX policy over the fleet environment's contracts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from envs.contract import ActionContract
from eval.cli import app
from eval.perf_sidecar import (
    FORBIDDEN_MODULES,
    PageServer,
    engine_pages,
    fleet_contracts,
    linear_policy,
    router_pages,
)
from policies.runtime import PolicyFileError
from policies.sidecar.actuators import FileActuator
from policies.sidecar.config import (
    TOKEN_ENV,
    FileActuatorSettings,
    GuardrailSettings,
    SidecarConfigError,
    load_config,
)
from policies.sidecar.guardrails import Guardrails, action_problem
from policies.sidecar.loop import Sidecar
from policies.sidecar.server import SidecarServer
from slo.prometheus_server import free_port
from tests.conftest import finish_process

pytest.importorskip("onnx", reason="the test policies are written with onnx (train extra)")

#: Engine name -> pool of the test fleet.
ENGINES = {"strong-0": "strong", "strong-1": "strong", "cheap-0": "cheap"}
#: A scrape time on the engine's 30 s bucket grid.
T0 = 1_700_000_010.0


@pytest.fixture(scope="module")
def contracts():
    return fleet_contracts()


@pytest.fixture(scope="module")
def policy_path(contracts, tmp_path_factory) -> Path:
    return linear_policy(tmp_path_factory.mktemp("zoo") / "linear.onnx", *contracts)


@pytest.fixture(scope="module")
def pages(contracts) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    spec = contracts[2]
    return {"engine": engine_pages(spec, 8, rng, 200), "router": router_pages(spec, 8, rng, 600)}


@pytest.fixture
def fleet(pages):
    server = PageServer()
    serve_fleet(server, pages)
    yield server
    server.close()


def serve_fleet(server: PageServer, pages: dict[str, list[str]]) -> None:
    for name in ENGINES:
        server.set_sequence(f"/engines/{name}/metrics", pages["engine"])
    server.set_sequence("/router/metrics", pages["router"])


def config_dict(policy: Path, fleet: PageServer, **extra) -> dict:
    engines = [
        {"name": n, "url": f"{fleet.url}/engines/{n}/metrics", "pool": p, "max_num_seqs": 128}
        for n, p in ENGINES.items()
    ]
    return {
        "policy": str(policy),
        "port": 0,
        "engines": engines,
        "counters": [{"name": "router", "url": f"{fleet.url}/router/metrics"}],
        "scrape": {"timeout_s": 1.0},
        **extra,
    }


def make_sidecar(policy: Path, fleet: PageServer, **extra) -> Sidecar:
    return Sidecar(load_config(None, config_dict(policy, fleet, **extra)))


def metric(sidecar: Sidecar, line_start: str) -> float:
    """The value of the first /metrics sample line starting with ``line_start``."""
    for line in sidecar.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r} in /metrics")


def assert_in_contract(sidecar: Sidecar, decision) -> None:
    low, high = sidecar.observation_contract.bounds()
    vector = decision.observation.vector
    assert np.all(np.isfinite(vector)) and np.all(vector >= low) and np.all(vector <= high)
    for knob in sidecar.action_contract.knobs:
        value = decision.knobs[knob.name]
        assert knob.low <= value <= knob.high, (knob.name, value)
        assert not knob.integer or value == round(value)


# ------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["engines"][1].update(url="ftp://x"), "engines[1].url"),
        (lambda c: c["engines"][0].update(max_num_seqs=0), "engines[0].max_num_seqs"),
        (lambda c: c.update(interval_s=-1), "interval_s"),
        (lambda c: c.update(scrape_timeout=3), "scrape_timeout"),  # unknown key
        (lambda c: c["engines"][2].update(name="strong-0"), "must be unique"),
        (lambda c: c.update(host="0.0.0.0"), "token"),
        (lambda c: c.update(engines=[]), "engines"),
        (lambda c: c.update(guardrails={"max_step": 2}), "guardrails.max_step"),
        (lambda c: c.update(mapping="trtllm"), "mapping: unknown metric mapping 'trtllm'"),
        (
            lambda c: c.update(mapping={"base": "sglang", "preemptions": 5}),
            "mapping: metric mapping key 'preemptions': expected a non-empty string or null",
        ),
        (
            lambda c: c.update(signals={"preemptions": None}),
            "signals: preemptions: engine metric names are set in the metric mapping",
        ),
    ],
)
def test_invalid_config_is_refused_naming_the_field(edit, message, policy_path, fleet, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    data = config_dict(policy_path, fleet)
    edit(data)
    with pytest.raises(SidecarConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, data)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("policy: x.onnx\nengines:\n  - name: [unclosed\n")
    with pytest.raises(SidecarConfigError, match=r"sidecar.yaml: line \d+: not valid YAML"):
        load_config(path)


def test_binding_beyond_loopback_needs_a_token(policy_path, fleet, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SidecarConfigError, match="token"):
        load_config(None, config_dict(policy_path, fleet, host="0.0.0.0"))
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert load_config(None, config_dict(policy_path, fleet, host="0.0.0.0")).token() == "s3cret"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"counters": []}, "need budgetpilot counters"),
        ({"mapping": {"base": "sglang", "waiting": None}}, "mapping.waiting: mapping 'custom'"),
        ({"mapping": {"finished": None}}, r"mapping.finished\) and no arrivals counter"),
        ({"guardrails": {"bounds": {"warp_speed": [0, 1]}}}, "guardrails.bounds.warp_speed"),
        ({"guardrails": {"bounds": {"cheap_tier_share": [0, 2]}}}, "leaves the knob's range"),
        ({"initial_knobs": {"admission_limit": 10.0}}, "initial_knobs.admission_limit"),
        ({"fallback": {"baseline": "oracle"}}, "fallback.baseline"),
        ({"fallback": {"baseline": "reactive", "params": {"kv_hi": 1}}}, "fallback.params"),
        (
            {"actuators": {"scale": {"directory": "scale"}}},
            r"actuators.scale: the policy does not scale pools .* remove actuators.scale",
        ),
        (
            {"scaling": {"strong": {"deployment": "vllm-strong", "max_replicas": 4}}},
            "scaling: the policy does not scale pools",
        ),
    ],
)
def test_config_that_cannot_serve_the_policy_is_refused(extra, message, policy_path, fleet):
    with pytest.raises(SidecarConfigError, match=message):
        make_sidecar(policy_path, fleet, **extra)


def test_engine_pools_must_match_the_contract(policy_path, fleet):
    data = config_dict(policy_path, fleet)
    data["engines"][2]["pool"] = "tiny"
    with pytest.raises(SidecarConfigError) as err:
        Sidecar(load_config(None, data))
    assert "engines[2] (cheap-0): pool 'tiny'" in str(err.value)
    assert "pool 'cheap' of the policy's contract has no engine" in str(err.value)


def _variant(contracts, tmp_path, **changes) -> Path:
    observation, action, spec = contracts
    observation = dataclasses.replace(observation, **changes)
    return linear_policy(tmp_path / "variant.onnx", observation, action, spec)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": "budgetpilot.observation/v1"}, "this sidecar builds"),
        ({"windows": ("5m", "2h", "45m")}, r"windows \['45m'\]"),
        ({"pools": ("large", "small")}, "pool 'strong' is not a pool"),
        ({"spec_digest": "0123456789abcdef"}, "another SLO spec"),
        ({"slo_names": ("ttft-1s",)}, "the contract observes SLOs"),
    ],
)
def test_policy_whose_contract_does_not_fit_is_refused(
    changes, message, contracts, fleet, tmp_path
):
    with pytest.raises(SidecarConfigError, match=message):
        make_sidecar(_variant(contracts, tmp_path, **changes), fleet)


def test_corrupt_policy_refuses_to_start_from_the_cli(policy_path, fleet, tmp_path):
    broken = tmp_path / "broken.onnx"
    data = bytearray(policy_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    broken.with_suffix(".json").write_text(policy_path.with_suffix(".json").read_text())
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(config_dict(broken, fleet)))
    result = CliRunner().invoke(app, ["sidecar", "--config", str(config), "--check"])
    assert result.exit_code == 2
    assert "error:" in result.output and "SHA-256" in result.output
    with pytest.raises(PolicyFileError, match="absent.onnx: ONNX file not found"):
        make_sidecar(tmp_path / "absent.onnx", fleet)


# ------------------------------------------------------------------------------------------------
# Decisions and guardrails


def test_policy_decision_is_the_policy_action_through_the_guardrails(policy_path, fleet):
    sidecar = make_sidecar(policy_path, fleet)
    first = sidecar.cycle(T0)
    second = sidecar.cycle(T0 + 30)
    assert (first.mode, second.mode) == ("policy", "policy")
    action = sidecar.policy.act(second.observation.vector)
    np.testing.assert_array_equal(np.float32(second.raw_action), action)
    expected, _ = sidecar.guardrails.apply(sidecar.guardrails.decode(action), first.knobs)
    assert second.knobs == pytest.approx(expected)
    assert second.observation.healthy_replicas == 3
    assert second.observation.snapshot.burn_rates.max() > 0  # the pages' latencies burn budget
    assert_in_contract(sidecar, second)
    assert metric(sidecar, 'budgetpilot_sidecar_mode{mode="policy"}') == 1.0
    sidecar.close()


UNIT = ActionContract()


@pytest.mark.parametrize(
    ("settings", "knob", "current", "proposed", "expected", "guardrail"),
    [
        ({"bounds": {"cheap_tier_share": (0.0, 0.3)}}, "cheap_tier_share", 0.3, 0.8, 0.3, "bounds"),
        ({"max_step": 0.25}, "cheap_tier_share", 0.0, 0.8, 0.2, "max_step"),
        ({"max_step": 0.25}, "admission_limit", 3.0, 0.3, 0.3 * 10**0.75, "max_step"),
        ({"hysteresis": 0.02}, "cheap_tier_share", 0.4, 0.41, 0.4, "hysteresis"),
        ({"hysteresis": 0.02}, "cheap_tier_share", 0.4, 0.42, 0.42, None),
        ({"hysteresis": 0.02}, "shed_priority_below", 0.0, 0.52, 0.0, "hysteresis"),
        ({"hysteresis": 0.02}, "shed_priority_below", 0.0, 0.6, 1.0, None),
        ({"max_step": 0.1}, "shed_priority_below", 0.0, 2.0, 1.0, "max_step"),
    ],
)
def test_guardrails_bound_rate_limit_and_hold(
    settings, knob, current, proposed, expected, guardrail
):
    guardrails = Guardrails(UNIT, GuardrailSettings(**{"hysteresis": 0.0, **settings}))
    in_force = {k.name: k.low for k in UNIT.knobs} | {knob: current}
    values, interventions = guardrails.apply(in_force | {knob: proposed}, in_force)
    assert values[knob] == pytest.approx(expected)
    assert [i.guardrail for i in interventions if i.knob == knob][:1] == (
        [guardrail] if guardrail else []
    )


def test_final_clamp_keeps_every_value_finite_and_in_range():
    guardrails = Guardrails(UNIT, GuardrailSettings())
    default = {k.name: k.low for k in UNIT.knobs}
    values = {"cheap_tier_share": 5.0, "offload_fraction": float("nan"), "shed_priority_below": 1.4}
    clamped, interventions = guardrails.final_clamp(values, default)
    assert clamped["cheap_tier_share"] == 0.8
    assert clamped["offload_fraction"] == 0.0
    assert clamped["shed_priority_below"] == 1.0
    assert clamped["admission_limit"] == default["admission_limit"]  # missing: the default
    assert {i.knob for i in interventions} >= {"cheap_tier_share", "offload_fraction"}


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        ([0.0] * 7, None),
        ([0.0] * 6 + [float("nan")], "non-finite"),
        ([0.0] * 6 + [1.5], "outside"),
        ([0.0] * 3, "3 values for 7 knobs"),
        ("garbage", "not a numeric vector"),
    ],
)
def test_unusable_actions_are_named(action, problem):
    found = action_problem(action, 7)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize(
    ("policy_kwargs", "problem"),
    [({"bias": np.full(7, np.nan)}, "non-finite"), ({"squash": False, "scale": 50.0}, "outside")],
)
def test_unusable_policy_output_holds_the_last_safe_action(
    policy_kwargs, problem, contracts, fleet, tmp_path
):
    policy = linear_policy(tmp_path / "bad.onnx", *contracts, **policy_kwargs)
    sidecar = make_sidecar(policy, fleet, initial_knobs={"cheap_tier_share": 0.2})
    decision = sidecar.cycle(T0)
    assert decision.mode == "hold" and problem in decision.reason
    assert decision.knobs == sidecar.last_safe and decision.knobs["cheap_tier_share"] == 0.2
    assert {i.guardrail for i in decision.interventions} == {"invalid_output"}
    assert metric(sidecar, "budgetpilot_sidecar_guardrail_interventions_total") >= 1
    assert_in_contract(sidecar, decision)
    json.dumps(decision.to_dict(sidecar), allow_nan=False)  # NaN never reaches the JSON


# ------------------------------------------------------------------------------------------------
# Missing, stale and broken metrics


def test_stale_metrics_hold_then_fall_back_then_recover(policy_path, fleet, pages, caplog):
    caplog.set_level(logging.INFO, logger="budgetpilot.sidecar")
    sidecar = make_sidecar(policy_path, fleet, fallback={"baseline": "reactive", "after_s": 60})
    sidecar.cycle(T0)
    safe = sidecar.cycle(T0 + 30).knobs
    for path in list(fleet.routes):
        fleet.set_text(path, "engine down\n", status=503)
    modes = [sidecar.cycle(T0 + 30 * k) for k in (2, 3, 4)]
    assert [d.mode for d in modes] == ["hold", "hold", "fallback"]
    assert modes[0].knobs == safe and modes[1].knobs == safe
    assert "fallback baseline 'reactive'" in modes[2].reason
    assert_in_contract(sidecar, modes[2])
    assert metric(sidecar, "budgetpilot_sidecar_fallback_active") == 1.0
    errors = 'budgetpilot_sidecar_scrape_errors_total{endpoint="strong-0",kind="http_status"}'
    assert metric(sidecar, errors) == 3.0
    assert "decision mode hold -> fallback" in caplog.text
    assert "HTTP 503" in caplog.text
    serve_fleet(fleet, pages)
    recovered = sidecar.cycle(T0 + 150)
    assert (
        recovered.mode == "policy" and metric(sidecar, "budgetpilot_sidecar_fallback_active") == 0
    )
    sidecar.close()


def test_an_engine_down_is_an_unhealthy_replica_not_stale_metrics(policy_path, fleet):
    sidecar = make_sidecar(policy_path, fleet)
    sidecar.cycle(T0)
    fleet.set_text("/engines/strong-1/metrics", "", status=503)
    decision = sidecar.cycle(T0 + 30)
    assert decision.mode == "policy"
    assert decision.observation.healthy_replicas == 2
    assert decision.observation.signals.pools["strong"]["healthy_fraction"] == 0.5
    assert metric(sidecar, 'budgetpilot_sidecar_endpoint_up{endpoint="strong-1"}') == 0.0
    sidecar.close()


def test_a_slow_engine_times_out_without_stalling_the_cycle(policy_path, fleet, pages):
    sidecar = make_sidecar(policy_path, fleet, scrape={"timeout_s": 0.3})
    sidecar.cycle(T0)
    release, answered = threading.Event(), []
    page = pages["engine"][1]
    # The engine answers only once the test releases it: a cycle that waited for it would
    # never return (the handler gives up after a minute, then answers).
    fleet.routes["/engines/cheap-0/metrics"] = lambda: (
        release.wait(60),
        answered.append(True),
        (200, page),
    )[2]
    try:
        decision = sidecar.cycle(T0 + 30)
        again = sidecar.cycle(T0 + 60)
        assert not answered  # both cycles decided while the engine still hung
    finally:
        release.set()
    assert ("cheap-0", "timeout") in {(p.endpoint, p.kind) for p in decision.problems}
    assert decision.observation.signals.pools["cheap"]["healthy_fraction"] == 0.0
    assert ("cheap-0", "timeout") in {(p.endpoint, p.kind) for p in again.problems}
    release.set()
    sidecar.close()


def _replace_value(page: str, name: str, value: str) -> str:
    return "\n".join(
        line.rsplit(" ", 1)[0] + f" {value}" if line.startswith(name + "{") else line
        for line in page.splitlines()
    )


def _duplicate_line(page: str, name: str) -> str:
    line = next(x for x in page.splitlines() if x.startswith(name))
    return page + line + "\n"


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        (lambda p: _replace_value(p, "vllm:kv_cache_usage_perc", "NaN"), "non_finite"),
        (lambda p: _replace_value(p, "vllm:num_preemptions_total", "+Inf"), "non_finite"),
        (
            lambda p: _replace_value(p, "vllm:time_to_first_token_seconds_count", "NaN"),
            "non_finite",
        ),
        (lambda p: _duplicate_line(p, "vllm:time_to_first_token_seconds_count"), "duplicate"),
        (lambda p: p.replace("vllm:num_requests_waiting", "vllm:renamed"), "missing_series"),
        (lambda p: p.replace('running{engine="0"', "running{engine=0"), "parse"),
        (lambda p: p.encode("utf-16").decode("latin-1"), "parse"),
    ],
)
def test_damaged_pages_are_skipped_and_reported(damage, kind, policy_path, fleet, pages, caplog):
    sidecar = make_sidecar(policy_path, fleet)
    sidecar.cycle(T0)
    fleet.set_text("/engines/strong-0/metrics", damage(pages["engine"][1]))
    decision = sidecar.cycle(T0 + 30)
    assert ("strong-0", kind) in {(p.endpoint, p.kind) for p in decision.problems}
    assert (
        metric(
            sidecar, f'budgetpilot_sidecar_scrape_errors_total{{endpoint="strong-0",kind="{kind}"}}'
        )
        >= 1
    )
    assert "strong-0" in caplog.text
    assert decision.mode == "policy"
    assert_in_contract(sidecar, decision)
    sidecar.close()


def test_a_counter_reset_counts_from_zero(policy_path, fleet, pages):
    sidecar = make_sidecar(policy_path, fleet)
    fleet.set_sequence("/engines/strong-0/metrics", [pages["engine"][5], pages["engine"][0]])
    sidecar.cycle(T0)
    decision = sidecar.cycle(T0 + 30)
    assert ("strong-0", "counter_reset") in {(p.endpoint, p.kind) for p in decision.problems}
    burn = decision.observation.snapshot.burn_rates
    assert np.all(np.isfinite(burn)) and np.all(burn >= 0)
    sidecar.close()


# ------------------------------------------------------------------------------------------------
# Actuators, shadow mode, kill switch


def test_file_actuator_writes_router_manifests(policy_path, fleet, tmp_path):
    path = tmp_path / "router" / "budgetpilot.yaml"
    file = {
        "path": str(path),
        "namespace": "llm",
        "pool": "llama-pool",
        "model": "chat",
        "strong_model": "meta-llama/Llama-3.1-8B-Instruct",
        "cheap_model": "meta-llama/Llama-3.2-1B-Instruct",
        "objectives": {"premium": 2, "standard": 1, "batch": 0},
    }
    sidecar = make_sidecar(
        policy_path,
        fleet,
        actuators={"file": file},
        guardrails={"max_step": 1.0, "hysteresis": 0.0},
        initial_knobs={"shed_priority_below": 1.0},
    )
    decision = sidecar.cycle(T0)
    assert decision.actuated == {"file": "ok"}
    docs = list(yaml.safe_load_all(path.read_text()))
    rewrite, *objectives, configmap = docs
    assert rewrite["kind"] == "InferenceModelRewrite" and rewrite["metadata"]["namespace"] == "llm"
    targets = {t["modelRewrite"]: t.get("weight") for t in rewrite["spec"]["rules"][0]["targets"]}
    share = decision.knobs["cheap_tier_share"]
    if round(share * 1000) >= 1:
        assert targets["meta-llama/Llama-3.2-1B-Instruct"] == round(share * 1000)
    priorities = {o["metadata"]["name"]: o["spec"]["priority"] for o in objectives}
    shed = decision.knobs["shed_priority_below"]
    assert priorities == {n: (-1 if p < shed else p) for n, p in file["objectives"].items()}
    assert float(configmap["data"]["admission_limit"]) == decision.knobs["admission_limit"]
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize(
    ("share", "shed", "weights", "priorities"),
    [
        (0.0, 0.0, {"big": None}, {"gold": 2, "bronze": 0}),
        (0.25, 1.0, {"big": 750, "small": 250}, {"gold": 2, "bronze": -1}),
        (0.8, 2.0, {"big": 200, "small": 800}, {"gold": 2, "bronze": -1}),
    ],
)
def test_router_manifests_encode_share_and_shedding(share, shed, weights, priorities, tmp_path):
    settings = FileActuatorSettings(
        path=tmp_path / "x.yaml",
        pool="p",
        model="chat",
        strong_model="big",
        cheap_model="small",
        objectives={"gold": 2, "bronze": 0},
    )
    rewrite, *objectives, _ = FileActuator(settings).manifests(
        {"cheap_tier_share": share, "shed_priority_below": shed}
    )
    targets = rewrite["spec"]["rules"][0]["targets"]
    assert {t["modelRewrite"]: t.get("weight") for t in targets} == weights
    assert {o["metadata"]["name"]: o["spec"]["priority"] for o in objectives} == priorities


class _Capture(ThreadingHTTPServer):
    """Records POSTed JSON bodies; answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status
        super().__init__(("127.0.0.1", 0), _CaptureHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _CaptureHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_webhook_receives_each_decision_and_failures_are_counted(policy_path, fleet):
    hook = _Capture()
    sidecar = make_sidecar(policy_path, fleet, actuators={"webhook": {"url": hook.url}})
    decision = sidecar.cycle(T0)
    assert decision.actuated == {"webhook": "ok"}
    assert hook.bodies[0]["knobs"] == decision.knobs and hook.bodies[0]["mode"] == "policy"
    hook.status = 500
    failed = sidecar.cycle(T0 + 30)
    assert (
        failed.actuated["webhook"].startswith("error: POST") and "500" in failed.actuated["webhook"]
    )
    assert metric(sidecar, 'budgetpilot_sidecar_actuation_errors_total{actuator="webhook"}') == 1
    assert sidecar.in_force == decision.knobs  # a failed actuation changes nothing in force
    hook.shutdown()
    sidecar.close()


def test_shadow_mode_decides_and_logs_without_actuating(policy_path, fleet, tmp_path):
    hook = _Capture()
    audit = tmp_path / "audit.jsonl"
    sidecar = make_sidecar(
        policy_path,
        fleet,
        shadow=True,
        audit_log=str(audit),
        actuators={"webhook": {"url": hook.url}},
        initial_knobs={"cheap_tier_share": 0.1},
    )
    decisions = [sidecar.cycle(T0 + 30 * k) for k in range(3)]
    assert hook.bodies == []
    assert all(d.actuated == {"webhook": "skipped: shadow mode"} for d in decisions)
    assert sidecar.in_force["cheap_tier_share"] == 0.1
    assert len(audit.read_text().splitlines()) == 3
    hook.shutdown()
    sidecar.close()


def test_kill_switch_publishes_the_kill_knobs(policy_path, fleet, tmp_path):
    kill_file = tmp_path / "KILL"
    sidecar = make_sidecar(
        policy_path, fleet, kill_switch_file=str(kill_file), kill_knobs={"admission_limit": 1.0}
    )
    sidecar.cycle(T0)
    kill_file.touch()
    decision = sidecar.cycle(T0 + 30)
    assert decision.mode == "kill" and decision.kill_switch
    assert decision.knobs["admission_limit"] == 1.0 and decision.knobs["cheap_tier_share"] == 0.0
    kill_file.unlink()
    assert sidecar.cycle(T0 + 60).mode == "policy"
    sidecar.close()


# ------------------------------------------------------------------------------------------------
# HTTP endpoints


def _http(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_http_endpoints_serve_decisions_metrics_health_and_switches(policy_path, fleet):
    sidecar = make_sidecar(policy_path, fleet)
    server = SidecarServer(sidecar, token="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert _http(f"{server.url}/v1/decision")[0] == 503
        assert _http(f"{server.url}/readyz")[0] == 503
        sidecar.cycle(T0)
        status, body = _http(f"{server.url}/v1/decision")
        decision = json.loads(body)
        assert status == 200 and decision["mode"] == "policy"
        assert set(decision["knobs"]) == set(sidecar.action_contract.names)
        assert {"reason", "guardrail_interventions", "observation", "raw_action"} <= set(decision)
        assert decision["observation"]["slos"]["ttft-1s"]["burn_rates"].keys() == {
            "5m", "30m", "1h", "6h"
        }  # fmt: skip
        status, text = _http(f"{server.url}/metrics")
        for name in (
            "budgetpilot_sidecar_burn_rate{",
            "budgetpilot_sidecar_budget_remaining{",
            "budgetpilot_sidecar_knob{",
            "budgetpilot_sidecar_decision_seconds_bucket{",
            "budgetpilot_sidecar_fallback_active",
        ):
            assert name in text
        assert _http(f"{server.url}/healthz")[0] == 200
        assert _http(f"{server.url}/readyz")[0] == 200
        assert _http(f"{server.url}/v1/kill", {"engaged": True})[0] == 401
        assert _http(f"{server.url}/v1/kill", {"engaged": True}, token="wrong")[0] == 401
        assert _http(f"{server.url}/v1/kill", {"engaged": "yes"}, token="s3cret")[0] == 400
        assert _http(f"{server.url}/v1/kill", {"engaged": True}, token="s3cret")[0] == 200
        assert sidecar.cycle(T0 + 30).mode == "kill"
        assert _http(f"{server.url}/v1/shadow", {"enabled": True}, token="s3cret")[0] == 200
        assert sidecar.shadow
        assert _http(f"{server.url}/nowhere")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        sidecar.close()


# ------------------------------------------------------------------------------------------------
# Audit log and persisted state


def test_audit_log_records_every_decision_with_its_observation(policy_path, fleet, tmp_path):
    audit = tmp_path / "audit.jsonl"
    sidecar = make_sidecar(policy_path, fleet, audit_log=str(audit))
    decisions = [sidecar.cycle(T0 + 30 * k) for k in range(3)]
    sidecar.close()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(records) == 3
    for record, decision in zip(records, decisions, strict=True):
        vector = np.asarray(record["observation"]["vector"], dtype=np.float32)
        np.testing.assert_array_equal(vector, decision.observation.vector)
        assert record["knobs"] == decision.knobs
        assert record["raw_action"] == decision.raw_action
        assert "guardrail_interventions" in record and "reason" in record


def test_budget_state_survives_a_restart(policy_path, fleet, tmp_path):
    state = {"directory": str(tmp_path / "state"), "save_every_s": 0}
    first = make_sidecar(policy_path, fleet, state=state)
    for k in range(4):
        first.cycle(T0 + 30 * k)
    first.set_kill_switch(True, "maintenance")
    first.close()
    engine = first.observer.engine
    restarted = make_sidecar(policy_path, fleet, state=state)
    np.testing.assert_array_equal(
        restarted.observer.engine.budget_remaining(), engine.budget_remaining()
    )
    np.testing.assert_array_equal(restarted.observer.engine.burn_rates(), engine.burn_rates())
    assert restarted.in_force == first.in_force and restarted.kill_switch
    fresh = make_sidecar(policy_path, fleet)
    assert not np.array_equal(fresh.observer.engine.burn_rates(), engine.burn_rates())
    restarted.close()
    fresh.close()


def test_a_corrupt_state_starts_fresh_and_says_so(policy_path, fleet, tmp_path, caplog):
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "engine.npz").write_bytes(b"not a zip")
    (directory / "sidecar.json").write_text("{")
    sidecar = make_sidecar(policy_path, fleet, state={"directory": str(directory)})
    assert metric(sidecar, 'budgetpilot_sidecar_state_errors_total{operation="restore"}') == 1
    assert "starting with fresh budgets" in caplog.text
    assert sidecar.cycle(T0).mode == "policy"
    sidecar.close()


# ------------------------------------------------------------------------------------------------
# Command line and process hygiene


def test_cli_runs_one_cycle_and_prints_the_decision(policy_path, fleet, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(config_dict(policy_path, fleet)))
    result = CliRunner().invoke(app, ["sidecar", "--config", str(config), "--once", "--shadow"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.output[result.output.index("{") :])
    assert decision["mode"] == "policy" and decision["shadow"] is True
    checked = CliRunner().invoke(app, ["sidecar", "--config", str(config), "--check"])
    assert checked.exit_code == 0 and "fits the config" in checked.output


def test_a_sidecar_cycle_imports_no_training_stack(policy_path, fleet, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(config_dict(policy_path, fleet)))
    code = (
        "import sys, json\n"
        "from eval.cli import app\n"
        f"app(['sidecar', '--config', {str(config)!r}, '--once'], standalone_mode=False)\n"
        f"print(json.dumps([m for m in {list(FORBIDDEN_MODULES)!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert '"mode": "policy"' in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_example_config_is_valid():
    config = load_config(Path(__file__).resolve().parents[1] / "policies/sidecar/example.yaml")
    assert len(config.engines) == 3 and config.actuators.file is not None
    assert config.fallback.baseline == "reactive" and config.fallback_after_s == 120


def test_gauges_are_averaged_over_the_scrapes_of_an_interval(policy_path, fleet, pages):
    sidecar = make_sidecar(policy_path, fleet, scrape={"per_interval": 2})
    samples = [
        _replace_value(pages["engine"][k], "vllm:kv_cache_usage_perc", v)
        for k, v in ((1, "0.2"), (2, "0.6"))
    ]
    for name in ENGINES:
        fleet.set_sequence(f"/engines/{name}/metrics", samples)
    sidecar.scrape(T0)
    sidecar.scrape(T0 + 15)
    strong = sidecar.decide(T0 + 15).observation.signals.pools["strong"]
    assert strong["kv_usage_mean"] == pytest.approx(0.4)
    assert strong["kv_usage_max"] == pytest.approx(0.6)
    sidecar.close()


def test_run_scrapes_per_interval_and_decides_on_the_interval(policy_path, fleet, pages):
    scrapes = []
    page = pages["engine"][1]
    fleet.routes["/engines/strong-0/metrics"] = lambda: (scrapes.append(time.time()), (200, page))[
        1
    ]
    sidecar = make_sidecar(policy_path, fleet, interval_s=0.6, scrape={"per_interval": 3})
    stop = threading.Event()
    runner = threading.Thread(target=sidecar.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 30
    while len(scrapes) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(timeout=30)
    assert len(scrapes) >= 8, f"{len(scrapes)} scrapes in 30 s"
    decisions = metric(sidecar, 'budgetpilot_sidecar_decisions_total{mode="policy"}')
    # One decision at start, then one every third scrape (on multiples of the interval).
    assert 1 + (len(scrapes) - 1) // 3 <= decisions <= 2 + (len(scrapes) - 1) // 3
    sidecar.close()


def _ready(url: str) -> bool:
    try:
        return _http(url)[0] == 200
    except OSError:  # not listening yet
        return False


def test_the_sidecar_process_serves_until_sigterm_and_saves_its_state(policy_path, fleet, tmp_path):
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    state = tmp_path / "state"
    config.write_text(yaml.safe_dump(config_dict(policy_path, fleet, port=port, interval_s=0.5)))
    command = [sys.executable, "-m", "eval.cli", "sidecar", "--config", str(config)]
    process = subprocess.Popen([*command, "--state-dir", str(state)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"http://127.0.0.1:{port}/readyz"):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(_http(f"http://127.0.0.1:{port}/v1/decision")[1])["mode"] == "policy"
    finally:
        _, stderr = finish_process(process)
    assert process.returncode == 0, stderr.decode()
    assert (state / "engine.npz").exists() and (state / "sidecar.json").exists()


def test_cli_flags_give_the_common_settings(policy_path, fleet):
    engines = [
        f"name={n},url={fleet.url}/engines/{n}/metrics,pool={p},max_num_seqs=64"
        for n, p in ENGINES.items()
    ]
    flags = [flag for e in engines for flag in ("--engine", e)]
    command = [
        "sidecar",
        "--policy",
        str(policy_path),
        *flags,
        "--counters",
        f"{fleet.url}/router/metrics",
    ]
    result = CliRunner().invoke(app, [*command, "--interval", "15", "--once"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["mode"] == "policy"
    bad = CliRunner().invoke(app, ["sidecar", "--policy", str(policy_path), "--engine", "strong-0"])
    assert bad.exit_code == 2 and "key=value" in bad.output
