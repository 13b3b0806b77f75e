"""The production-style autoscalers: llm-d's WVA in saturation mode and Knative's KPA, with their
upstream parameters, defaults and ranges; the frontier sweeps of every autoscaler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from agents.autoscalers import (
    VLLM_MAX_NUM_SEQS,
    BudgetAutoscaler,
    BudgetAutoscalerParams,
    HorizontalPodAutoscaler,
    HpaParams,
    KnativePodAutoscaler,
    KpaParams,
    Variant,
    WorkloadVariantAutoscaler,
    WvaParams,
    saturation_targets,
)
from agents.baselines import make_controller, params_as_dict
from agents.tuning import load_tuned_params
from envs.contract import next_desired_replicas
from envs.scenarios import SCENARIOS
from tests.test_baselines import elastic_context
from tests.test_elastic import _budget_obs as observation

# ------------------------------------------------------------------------------------------------
# Parameters: upstream names, defaults, ranges


def test_parameters_carry_the_upstream_names_and_defaults() -> None:
    assert params_as_dict(WvaParams()) == {
        "kvCacheThreshold": 0.8,
        "queueLengthThreshold": 5.0,
        "kvSpareTrigger": 0.1,
        "queueSpareTrigger": 3.0,
        "variantCost": 10.0,
    }
    assert params_as_dict(KpaParams()) == {
        "target": 100.0,
        "target-utilization-percentage": 70.0,
        "stable-window": 60.0,
        "panic-window-percentage": 10.0,
        "panic-threshold-percentage": 200.0,
        "max-scale-up-rate": 1000.0,
        "max-scale-down-rate": 2.0,
        "scale-down-delay": 0.0,
        "min-scale": 1,
    }
    assert KpaParams.from_dict({"stable-window": "2m", "scale-down-delay": "5m"}) == KpaParams(
        stable_window=120.0, scale_down_delay=300.0
    )
    # The concurrency KPA counts assumes the simulated replicas' max_num_seqs.
    setup = SCENARIOS["slow-ramp"].build(np.random.default_rng(0), 0.0)
    assert {pool.max_num_seqs for pool in setup.config.pools} == {VLLM_MAX_NUM_SEQS}


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("wva", {"kvCacheThreshold": 1.5}, "'kvCacheThreshold' must be in [0, 1]"),
        ("wva", {"queueLengthThreshold": -1}, "'queueLengthThreshold' must be in [0, inf]"),
        ("wva", {"kvCacheThreshold": 0.5, "kvSpareTrigger": 0.6}, "'kvSpareTrigger' (0.6)"),
        ("wva", {"kvCacheTreshold": 0.5}, "unknown parameter(s) 'kvCacheTreshold'"),
        ("kpa", {"stable-window": "5s"}, "'stable-window' must be in [6, 3600]"),
        ("kpa", {"stable-window": "soon"}, "'stable-window' must be a duration"),
        ("kpa", {"panic-threshold-percentage": 100}, "'panic-threshold-percentage' must be in"),
        ("kpa", {"panic-window-percentage": 0.5}, "'panic-window-percentage' must be in [1, 100]"),
        ("kpa", {"max-scale-down-rate": 1.0}, "'max-scale-down-rate' must be in (1, inf]"),
        ("kpa", {"target": "high"}, "'target' must be a number"),
        ("kpa", {"stable_window": 60}, "unknown parameter(s) 'stable_window'"),
        ("hpa", {"metric": "cpu"}, "'metric' must be one of ['kv_usage', 'waiting']"),
    ],
)
def test_bad_parameters_are_refused_naming_the_parameter(
    name: str, params: dict, named: str, tmp_path
) -> None:
    with pytest.raises(ValueError, match="parameter") as raised:
        make_controller(name, elastic_context(), params)
    assert named in str(raised.value)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"baseline": name, "scenario": "slow-ramp", "best_params": params}))
    with pytest.raises(ValueError) as from_file:
        load_tuned_params(path)
    assert str(path) in str(from_file.value) and named in str(from_file.value)


# ------------------------------------------------------------------------------------------------
# WVA


def _variant(name: str, cost: float, ready: int, kv: float, queue: float = 0.0, **kw) -> Variant:
    current, desired = kw.get("current", ready), kw.get("desired", ready)
    return Variant(name, cost, ready, current, desired, ((kv, queue),) * ready)


def test_wva_scales_up_the_cheapest_variant_and_down_the_most_expensive() -> None:
    p = WvaParams()
    loaded = [_variant("a100", 20.0, 2, 0.75), _variant("l4", 5.0, 2, 0.75)]
    assert saturation_targets(loaded, p) == {"a100": 2, "l4": 3}  # spare KV 0.05 < 0.1
    idle = [_variant("a100", 20.0, 2, 0.1), _variant("l4", 5.0, 2, 0.1)]
    assert saturation_targets(idle, p) == {"a100": 1, "l4": 2}  # 4 x 0.1 over 3 leaves spare
    # Equal costs: alphabetically first grows, last shrinks.
    assert saturation_targets([_variant("b", 1, 2, 0.9), _variant("a", 1, 2, 0.9)], p)["a"] == 3
    # A decision in flight (desired != current) is kept, the other variant takes the step.
    pending = [_variant("l4", 5.0, 2, 0.75, desired=3), _variant("a100", 20.0, 2, 0.75)]
    assert saturation_targets(pending, p) == {"l4": 3, "a100": 3}


@pytest.mark.parametrize(
    ("kv", "queue", "ready", "target"),
    [
        (0.5, 0.0, 2, 2),  # spare 0.3 KV, 5 queue: nothing to do; after removal 1.0 KV: unsafe
        (0.75, 0.0, 2, 3),  # spare KV 0.05 < kvSpareTrigger
        (0.2, 2.5, 3, 4),  # spare queue 2.5 < queueSpareTrigger
        (0.9, 0.0, 2, 3),  # every replica saturated
        (0.2, 0.0, 3, 2),  # 3 x 0.2 over 2 leaves 0.5 KV spare, 5 queue: safe
        (0.2, 0.0, 1, 1),  # one replica: never below one
        (0.2, 1.0, 3, 2),  # 3 waiting over 2 replicas leaves 3.5 >= 3 spare queue slots
        (0.2, 1.5, 3, 3),  # 4.5 waiting over 2 leaves 2.75 < 3: unsafe
    ],
)
def test_wva_saturation_rule(kv: float, queue: float, ready: int, target: int) -> None:
    assert saturation_targets([_variant("strong", 10.0, ready, kv, queue)], WvaParams()) == {
        "strong": target
    }


def test_wva_controller_reads_the_pools_and_waits_for_provisioning() -> None:
    context = elastic_context()
    wva = WorkloadVariantAutoscaler(context)

    def strong_target(desired: int, serving: int, provisioning: int = 0, kv: float = 0.75) -> int:
        obs = observation(
            context,
            **{
                "pool.strong.kv_usage_mean": kv,
                "pool.strong.replicas_desired": desired / 6,
                "pool.strong.replicas_serving": serving / 6,
                "pool.strong.replicas_provisioning": provisioning / 6,
                "pool.cheap.replicas_desired": 1 / 3,
                "pool.cheap.replicas_serving": 1 / 3,
            },
        )
        knobs = context.action.decode(wva.act(obs))
        assert knobs["cheap_replicas_change"] == 0.0  # an idle single replica stays
        return next_desired_replicas(desired, knobs["strong_replicas_change"], 6)

    assert strong_target(2, 2) == 3
    assert strong_target(3, 2, provisioning=1) == 3  # no cascade while a replica provisions
    assert strong_target(3, 3, kv=0.1) == 2
    assert strong_target(6, 6, kv=0.95) == 6  # the pool's cap


# ------------------------------------------------------------------------------------------------
# KPA


def _recommend(kpa: KnativePodAutoscaler, serving: int, in_flight: float) -> int:
    """KPA's desired strong replicas after a sample of ``in_flight`` requests (all running) on
    each of ``serving`` replicas."""
    features = {
        "pool.strong.running_per_replica": in_flight / VLLM_MAX_NUM_SEQS,
        "pool.strong.replicas_desired": serving / 6,
        "pool.strong.replicas_serving": serving / 6,
    }
    return kpa.recommend(kpa.view(observation(kpa.context, **features)), "strong")


def test_kpa_stable_mode_averages_the_stable_window() -> None:
    context = elastic_context()  # 30 s decisions: the 60 s stable window is two samples
    params = KpaParams(
        target=10.0, target_utilization_percentage=100, panic_threshold_percentage=1000
    )
    kpa = KnativePodAutoscaler(context, params)
    assert [_recommend(kpa, 2, n) for n in (10.0, 30.0, 30.0)] == [2, 4, 6]
    at_70_percent = KnativePodAutoscaler(context, KpaParams(target=10.0))
    assert _recommend(at_70_percent, 2, 10.0) == 3  # ceil(20 / 7)


def test_kpa_panics_scales_up_fast_and_not_down_until_a_stable_window_passes() -> None:
    kpa = KnativePodAutoscaler(
        elastic_context(), KpaParams(target=10.0, target_utilization_percentage=100)
    )
    assert _recommend(kpa, 2, 10.0) == 2
    # 60 in flight: the panic window (the last sample) wants 6, 3x the 2 ready: panic, where
    # the stable window would still say 4.
    assert _recommend(kpa, 2, 30.0) == 6
    # The burst is gone: panicking, KPA keeps its peak for a stable window, then scales down,
    # by half of the 6 ready replicas at most (max-scale-down-rate 2).
    assert [_recommend(kpa, 6, 1.0) for _ in range(4)] == [6, 6, 3, 3]


def test_kpa_scale_down_delay_holds_the_highest_recent_count() -> None:
    params = KpaParams(
        target=10.0,
        target_utilization_percentage=100,
        panic_threshold_percentage=1000,
        scale_down_delay="90s",
    )
    kpa = KnativePodAutoscaler(elastic_context(), params)
    assert _recommend(kpa, 4, 10.0) == 4
    # 10 in flight: 3 (stable mean of 40 and 10), then 1 (2 at most halving); the 4 of the
    # first sample holds for 90 s, the 3 after it too.
    assert [_recommend(kpa, 4, 2.5) for _ in range(4)] == [4, 4, 3, 2]


# ------------------------------------------------------------------------------------------------
# Frontier sweeps


@pytest.mark.parametrize(
    ("cls", "params", "parameter", "values"),
    [
        (HorizontalPodAutoscaler, HpaParams(target=0.1), "target", (0.025, 0.05, 0.2, 0.4)),
        (HorizontalPodAutoscaler, HpaParams("waiting", 1.0), "target", (0.25, 4.0)),
        (BudgetAutoscaler, BudgetAutoscalerParams(), "calm_burn", (0.25, 0.5, 2.0)),
        (WorkloadVariantAutoscaler, WvaParams(), "kvCacheThreshold", (0.1, 0.2, 0.4)),
        (KnativePodAutoscaler, KpaParams(target=16.0), "target", (4.0, 8.0, 32.0)),
    ],
)
def test_frontier_sweeps_vary_the_main_target_only(cls, params, parameter, values) -> None:
    sweep = cls.frontier_sweep(params)
    assert tuple(getattr(p, parameter) for p in sweep) == values
    for point in sweep:
        others = {k: v for k, v in vars(point).items() if k != parameter}
        assert others == {k: v for k, v in vars(params).items() if k != parameter}


def test_every_autoscaler_runs_an_elastic_episode() -> None:
    from eval.bench import ControllerSpec, RunSpec, run_episode

    for name in ("wva", "kpa"):
        run = RunSpec(ControllerSpec(name, elastic=True), "short-flash-crowd", 0, None, 0.1, 60.0)
        metrics = run_episode(run).metrics
        assert metrics["steps"] == 12 and math.isfinite(metrics["budget_spent_total"])
        assert np.isfinite(metrics["cost_gpu_hours"]) and metrics["cost_gpu_hours"] > 0


@pytest.mark.parametrize(
    ("point", "low", "high", "side", "verdict"),
    [
        (-1.0, -1.5, -0.5, 0, "below the frontier"),
        (1.0, 0.5, 1.5, 0, "above the frontier"),
        (0.1, -0.5, 0.5, 0, "on the frontier (within noise)"),
        (-1.0, -1.5, -0.5, -1, "below the frontier (cheaper than all its settings)"),
        (1.0, 0.5, 1.5, -1, "no verdict (cheaper than all its settings)"),
        (-1.0, -1.5, -0.5, 1, "no verdict (dearer than all its settings)"),
        (1.0, 0.5, 1.5, 1, "above the frontier (dearer than all its settings)"),
    ],
)
def test_frontier_verdicts_use_bounds_one_way_outside_the_range(
    point: float, low: float, high: float, side: int, verdict: str
) -> None:
    from eval.report import frontier_verdict
    from eval.stats import Interval

    assert frontier_verdict(Interval(point, low, high), side) == verdict


def test_sweeps_run_only_beside_an_elastic_policy() -> None:
    from eval.bench import BenchConfig, plan_runs, resolve_controllers

    def labels(names: list[str], **config) -> set[str]:
        controllers = resolve_controllers(names)
        runs, _, _ = plan_runs(BenchConfig(controllers, ("slow-ramp",), (0, 1), **config))
        return {run.label for run in runs if run.label}

    assert labels(["wva", "kpa"]) == set()  # no policy to judge: no frontier
    assert labels(["ppo-elastic", "kpa"], frontier_seeds=0) == set()
    swept = labels(["ppo-elastic", "kpa"], tuned_dir=Path("/nonexistent"))  # defaults: 100
    assert swept == {f"kpa@target={v:g}" for v in (4, 8, 16, 32)}


@pytest.mark.slow
def test_the_elastic_report_judges_the_policy_against_each_frontier(tmp_path) -> None:
    from eval.bench import BenchConfig, resolve_controllers, run_bench
    from eval.report import frontier_verdict, write_report
    from eval.stats import Interval

    config = BenchConfig(
        resolve_controllers(["ppo-elastic", "wva", "kpa"]),
        ("short-flash-crowd",),
        (0, 1, 2),
        episode_hours=0.1,
        warmup_s=60.0,
        bootstrap_reps=200,
        frontier_seeds=2,
    )
    report = write_report(run_bench(config, use_ray=False), tmp_path).read_text()
    document = json.loads((tmp_path / "results.json").read_text())
    frontiers = document["analysis"]["frontiers"]["short-flash-crowd"]
    assert set(frontiers) == {"wva", "kpa"}
    runs = {(r["controller"], r["seed"]): r for r in document["runs"]}
    for autoscaler, frontier in frontiers.items():
        assert frontier["seeds"] == [0, 1]
        values = [p["value"] for p in frontier["points"]]
        assert values == sorted(values) and len(values) >= 4
        assert autoscaler in [p["label"] for p in frontier["points"]]  # the tuned setting
        for point in frontier["points"]:
            spent = [runs[(point["label"], seed)]["budget_spent_total"] for seed in (0, 1)]
            assert point["spent"] == pytest.approx(np.mean(spent))  # IQM of two runs
        verdict = frontier["policies"]["ppo-elastic"]
        gap = verdict["gap"]
        assert gap["low"] <= gap["point"] <= gap["high"] and verdict["side"] in (-1, 0, 1)
        assert verdict["verdict"] == frontier_verdict(Interval(**gap), verdict["side"])
        assert verdict["verdict"] in report
    ranked = document["analysis"]["production_autoscalers"]["short-flash-crowd"]
    assert set(ranked["ranking"]) == {"wva", "kpa"} and ranked["strongest"] == ranked["ranking"][0]
    assert f"**{ranked['strongest']}** strongest" in report
    assert "against its frontier" in report and "**Frontiers (elastic scenarios).**" in report
    # Sweep points are not controllers of the tables.
    assert "kpa@target" not in report.split("## Scenarios")[1]
