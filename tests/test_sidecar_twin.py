"""The sidecar closing the loop over the engine twin, on loopback.

The twin simulates the fleet and serves its engines' pages (vLLM v1, vLLM v0 or SGLang names:
the mapping is configuration), its router's counters and its control API; the sidecar scrapes
them, decides and sets the twin's knobs. Checked: the knobs in force in the twin are the
sidecar's published decision; the sidecar's burn rates equal those of an error-budget engine
fed the twin's request events directly; its fleet features are the twin's replica gauges and
arrivals; and re-running the policy in-process on the audited observations gives the actions
the sidecar took (before guardrails). The preemptions (SGLang: retractions) the twin's pages
count are the sidecar's preemption signal, both naming them by the same metric mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.twin import EngineTwin
from eval.perf_sidecar import fleet_contracts, linear_policy
from policies.runtime import load_policy
from policies.sidecar.config import load_config, load_twin_config, twin_settings
from policies.sidecar.loop import Sidecar
from slo.engine import BudgetEngine

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")

CYCLES = 8
INTERVAL_S = 30.0


#: Metric mappings of the closed loops (the sidecar reads the names the twin renders).
MAPPINGS = ("sglang", "vllm", "vllm-legacy")


#: The shipped reference policy (a real exported PPO actor).
ZOO_POLICY = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-standard.onnx"


@pytest.fixture(
    scope="module",
    params=[*((mapping, "linear") for mapping in MAPPINGS), ("vllm", "zoo")],
    ids=lambda p: "-".join(p),
)
def closed_loop(request, tmp_path_factory):
    """Run the loop with engines of one metric mapping and a policy (a linear stand-in, or the
    shipped reference policy); return what the checks need."""
    mapping, kind = request.param
    tmp = tmp_path_factory.mktemp("loop")
    if kind == "zoo":
        policy_path = ZOO_POLICY
    else:
        policy_path = linear_policy(tmp / "linear.onnx", *fleet_contracts(), seed=5, scale=0.5)
    twin = EngineTwin("steady", seed=11, speed=0.0, mapping=mapping)
    twin.start()
    audit = tmp / "audit.jsonl"
    config = load_twin_config(
        None,
        {
            "policy": str(policy_path),
            "port": 0,
            "interval_s": INTERVAL_S,
            "audit_log": str(audit),
            "guardrails": {"max_step": 0.5},
            "mapping": mapping,
        },
        twin.url,
    )
    sidecar = Sidecar(config)
    reference = BudgetEngine(twin.spec)  # the same budgets, fed request events directly
    steps = []
    try:
        sidecar.cycle(twin.now)  # the first scrape is the counters' baseline
        for _ in range(CYCLES):
            arrivals = twin.sim.arrivals
            reference.ingest_events(twin.step(INTERVAL_S))
            reference.advance_to(twin.now)
            scraped = twin.stats  # what the pages show (actuating recomputes the twin's stats)
            decision = sidecar.cycle(twin.now)
            steps.append(
                {
                    "decision": decision,
                    "twin_knobs": twin.knobs(),
                    "reference_burn": reference.burn_rates(),
                    "sidecar_burn": sidecar.observer.engine.burn_rates(),
                    "stats": scraped,
                    "arrivals": twin.sim.arrivals - arrivals,
                    "pools": [r.pool for r in twin.replicas],
                }
            )
    finally:
        sidecar.close()
        twin.close()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    return {"steps": steps, "records": records, "policy_path": policy_path}


def test_the_twin_runs_the_knobs_the_sidecar_published(closed_loop):
    for step in closed_loop["steps"]:
        decision = step["decision"]
        assert decision.mode == "policy" and decision.actuated == {"twin": "ok"}
        assert step["twin_knobs"] == decision.knobs
    published = {tuple(s["decision"].knobs.values()) for s in closed_loop["steps"]}
    assert len(published) > 1  # the policy moved the knobs


def test_sidecar_burn_rates_equal_the_event_feed(closed_loop):
    for step in closed_loop["steps"]:
        np.testing.assert_allclose(step["sidecar_burn"], step["reference_burn"], rtol=1e-9)
    assert max(s["reference_burn"].max() for s in closed_loop["steps"]) > 0


def test_fleet_features_are_the_twin_replica_gauges(closed_loop):
    for step in closed_loop["steps"]:
        stats, pools = step["stats"], np.array(step["pools"])
        signals = step["decision"].observation.signals.pools
        for pool in ("strong", "cheap"):
            mine = (pools == pool) & (stats.healthy > 0)
            assert signals[pool]["kv_usage_max"] == pytest.approx(stats.kv_usage[mine].max())
            waiting = np.log1p(stats.waiting[pools == pool].sum() / mine.sum())
            assert signals[pool]["waiting_per_replica"] == pytest.approx(min(waiting, 12.0))
            healthy = mine.sum() / (pools == pool).sum()
            assert signals[pool]["healthy_fraction"] == pytest.approx(healthy)
        assert step["decision"].observation.arrivals == step["arrivals"] > 0


def test_the_policy_in_process_repeats_the_audited_actions(closed_loop):
    policy = load_policy(closed_loop["policy_path"])
    records = closed_loop["records"]
    assert len(records) == CYCLES + 1
    for record in records:
        vector = np.asarray(record["observation"]["vector"], dtype=np.float32)
        np.testing.assert_array_equal(policy.act(vector), np.float32(record["raw_action"]))


@pytest.mark.parametrize("mapping", ["vllm", "sglang"])  # the legacy mappings name them alike
def test_the_twins_pages_feed_the_sidecars_preemptions(mapping, tmp_path):
    """Preemptions (SGLang: retractions) counted by the twin's replicas are the sidecar's
    preemption signal, read by the names of the same metric mapping (no signal override)."""
    policy_path = linear_policy(tmp_path / "linear.onnx", *fleet_contracts(), seed=5, scale=0.0)
    with EngineTwin("heavy-prompts", seed=11, speed=0.0, mapping=mapping) as twin:
        twin.start()
        settings = twin_settings(twin.url)
        config = {"policy": str(policy_path), "interval_s": INTERVAL_S, "mapping": mapping}
        sidecar = Sidecar(load_config(None, config | settings | {"shadow": True}))
        try:
            sidecar.cycle(twin.now)  # the counters' baseline
            seen = []
            for _ in range(4):
                before = twin.stats.preemptions.sum()
                twin.step(INTERVAL_S)
                decision = sidecar.cycle(twin.now)
                seen.append(
                    (decision.observation.preemptions, twin.stats.preemptions.sum() - before)
                )
        finally:
            sidecar.close()
    assert [observed for observed, _ in seen] == [float(counted) for _, counted in seen]
    assert sum(counted for _, counted in seen) > 0, seen
