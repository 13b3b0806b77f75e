"""The engine twin's page faults and the sidecar's reaction, over real HTTP on loopback.

Faults are injected with ``POST /v1/faults`` on chosen replicas; the sidecar scrapes the twin,
decides and sets its knobs as in production. Checked for each fault: it is named in the
decision's problems, no burn rate is negative, no budget above 100 %, every knob within its
range; and an SLO whose series are gone from every page stops the policy after
``missing_data.after_cycles`` intervals, which the decision's reason names.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from envs.twin import EngineTwin
from envs.twin_faults import PageFault
from eval.perf_sidecar import fleet_contracts, linear_policy
from policies.sidecar.config import load_config, twin_settings
from policies.sidecar.loop import Sidecar

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
INTERVAL_S = 30.0


@pytest.fixture(scope="module")
def twin():
    with EngineTwin("steady", seed=3, speed=0.0) as engine_twin:
        engine_twin.start()
        yield engine_twin


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return linear_policy(tmp_path_factory.mktemp("zoo") / "linear.onnx", *fleet_contracts())


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def sidecar_for(twin: EngineTwin, policy) -> Sidecar:
    config = {"policy": str(policy), "port": 0, "interval_s": INTERVAL_S, **twin_settings(twin.url)}
    return Sidecar(load_config(None, config))


def loop(twin: EngineTwin, sidecar: Sidecar, cycles: int) -> list:
    """``cycles`` decisions, the twin stepping one interval before each."""
    decisions = []
    for _ in range(cycles):
        twin.step(INTERVAL_S)
        decisions.append(sidecar.cycle(twin.now))
    return decisions


def check_bounded(sidecar: Sidecar, decision) -> None:
    snapshot = decision.observation.snapshot
    assert np.all(snapshot.burn_rates >= 0) and np.all(snapshot.budget_remaining <= 1.0)
    for knob in sidecar.action_contract.knobs:
        assert knob.low <= decision.knobs[knob.name] <= knob.high


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ({"kind": "nan", "metric": f"{TTFT}_count", "spelling": "-nan(ind)"}, "non_finite"),
        ({"kind": "nan", "metric": f"{TTFT}_bucket", "spelling": "nan(snan)"}, "non_finite"),
        ({"kind": "missing_bucket", "metric": TTFT, "le": "1.0"}, "incomplete"),
        ({"kind": "inconsistent", "metric": TTFT}, "inconsistent"),
        ({"kind": "counter_reset"}, "counter_reset"),
        ({"kind": "missing_series", "metric": ITL}, "missing_series"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_each_fault_on_one_replica_is_named_and_costs_only_its_data(twin, policy, fault, kind):
    sidecar = sidecar_for(twin, policy)
    replica = twin.replicas[0].name
    try:
        loop(twin, sidecar, 2)
        status, faults = post(f"{twin.url}/v1/faults", {"replica": replica, **fault})
        assert status == 200 and faults.get(replica, []) in ([], [PageFault.of(fault).to_dict()])
        decisions = loop(twin, sidecar, 3)
        problems = {(p.endpoint, p.kind) for d in decisions for p in d.problems}
        assert (replica, kind) in problems, problems
        assert not any(k == "parse" for _, k in problems)  # the page is read, not dropped
        for decision in decisions:
            check_bounded(sidecar, decision)
            assert decision.mode == "policy", decision.reason  # the other replicas feed it
    finally:
        post(f"{twin.url}/v1/faults", {"clear": "all"})
        sidecar.close()


def test_a_stale_page_never_turns_into_negative_burn(twin, policy):
    sidecar = sidecar_for(twin, policy)
    try:
        loop(twin, sidecar, 2)
        post(f"{twin.url}/v1/faults", {"replica": twin.replicas[1].name, "kind": "stale"})
        for decision in loop(twin, sidecar, 3):
            check_bounded(sidecar, decision)
        post(f"{twin.url}/v1/faults", {"clear": "all"})  # the page jumps to the present
        for decision in loop(twin, sidecar, 2):
            check_bounded(sidecar, decision)
    finally:
        post(f"{twin.url}/v1/faults", {"clear": "all"})
        sidecar.close()


def test_a_histogram_gone_from_every_page_holds_the_policy_until_it_returns(twin, policy):
    """An engine version without the ITL histogram: the policy stops after three intervals
    without data for itl-100ms, and decides again once the series is back."""
    sidecar = sidecar_for(twin, policy)
    try:
        loop(twin, sidecar, 1)
        for replica in twin.replicas:
            body = {"replica": replica.name, "kind": "missing_series", "metric": ITL}
            assert post(f"{twin.url}/v1/faults", body)[0] == 200
        decisions = loop(twin, sidecar, 4)
        assert decisions[0].mode == "policy" and decisions[-1].mode == "hold"
        assert "itl-100ms" in decisions[-1].reason
        shown = decisions[-1].to_dict(sidecar)["observation"]["slos"]["itl-100ms"]
        assert shown["state"] == "no_data" and shown["budget_remaining"] is None
        post(f"{twin.url}/v1/faults", {"clear": "all"})
        assert loop(twin, sidecar, 2)[-1].mode == "policy"
    finally:
        post(f"{twin.url}/v1/faults", {"clear": "all"})
        sidecar.close()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"replica": "nope", "kind": "stale"}, "replica"),
        ({"replica": "strong-0", "kind": "flood"}, "kind"),
        ({"replica": "strong-0", "kind": "nan"}, "metric"),
        ({"replica": "strong-0", "kind": "stale", "metric": "x"}, "metric"),
        ({"clear": "nope"}, "clear"),
    ],
)
def test_a_bad_fault_is_refused_naming_the_field(twin, body, field):
    status, answer = post(f"{twin.url}/v1/faults", body)
    assert status == 400 and answer["error"].startswith(f"{field}:"), answer
