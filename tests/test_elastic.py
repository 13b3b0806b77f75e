"""Elastic fleets: the replica knobs and features, the provisioned-GPU cost, the elastic
scenarios and the baselines that scale (hpa, budget-autoscaler); fixed fleets left as they were."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from agents.autoscalers import (
    BudgetAutoscaler,
    BudgetAutoscalerParams,
    HorizontalPodAutoscaler,
    HpaParams,
)
from agents.base import ControlContext
from agents.baselines import StaticController
from agents.tuning import control_context, tune
from envs.contract import (
    REPLICA_FEATURES,
    ActionContract,
    FleetSignalTracker,
    ObservationContract,
    ReplicaGauges,
    ReplicaLifecycle,
    next_desired_replicas,
    replica_change_toward,
)
from envs.fleet_env import LLMFleetEnv
from envs.scenarios import ELASTIC_SCENARIOS, MAX_REPLICAS, SCENARIOS, Ramp
from envs.sim import ReplicaState
from eval.bench import (
    BenchConfig,
    RunSpec,
    expand_scenarios,
    plan_runs,
    resolve_controllers,
    run_episode,
)
from tests.test_baselines import elastic_context

SHORT = {"episode_hours": 0.1, "warmup_s": 120.0}
#: Digests of the fixed environment's contracts (sha256 of their ``to_dict()``), as the
#: reference policies were trained with them: elastic fleets must leave them untouched.
FIXED_OBSERVATION_DIGEST = "fc693362abbd84fc"
FIXED_ACTION_DIGEST = "0d0b735d6c964081"


def _scale(env: LLMFleetEnv, **changes: float) -> np.ndarray:
    """The action keeping every knob as it is but the given replica changes."""
    values = {**env.knob_values, "strong_replicas_change": 0.0, "cheap_replicas_change": 0.0}
    return env.action_contract.encode(values | changes)


# ------------------------------------------------------------------------------------------------
# Contracts


def test_fixed_contracts_are_unchanged() -> None:
    env = LLMFleetEnv("steady")
    assert env.observation_contract.digest == FIXED_OBSERVATION_DIGEST
    assert env.action_contract.digest == FIXED_ACTION_DIGEST
    assert "max_replicas" not in env.observation_contract.to_dict()
    assert env.action_contract == ActionContract()
    on_elastic_scenario = LLMFleetEnv("slow-ramp")
    assert on_elastic_scenario.observation_contract == env.observation_contract
    assert on_elastic_scenario.action_contract == env.action_contract


def test_elastic_contracts_have_the_replica_knobs_and_features() -> None:
    env = LLMFleetEnv("steady", elastic=True)
    knobs = {k.name: k for k in env.action_contract.knobs}
    for pool in ("strong", "cheap"):
        knob = knobs[f"{pool}_replicas_change"]
        assert (knob.low, knob.high, knob.scale) == (-0.5, 0.5, "linear")
        assert knob.from_unit(0.0) == 0.0 and "HPA" in knob.counterpart
        for feature in REPLICA_FEATURES:
            assert f"pool.{pool}.{feature}" in env.observation_contract.feature_names
        assert f"knob.{pool}_replicas_change" in env.observation_contract.feature_names
    contract = env.observation_contract
    assert contract.max_replicas == (MAX_REPLICAS["strong"], MAX_REPLICAS["cheap"])
    assert ObservationContract.from_dict(contract.to_dict()) == contract
    assert contract.digest != FIXED_OBSERVATION_DIGEST
    assert env.action_space.shape == (9,)
    with pytest.raises(ValueError, match="max_replicas"):
        ObservationContract(slo_names=("a",), max_replicas=(6,))


@pytest.mark.parametrize(
    "desired, change, expected",
    [
        (2, 0.0, 2),
        (2, 0.09, 2),  # inside the dead band
        (4, -0.09, 4),
        (2, math.nan, 2),
        (2, 0.1, 3),  # at least one replica
        (4, 0.25, 5),
        (4, 0.5, 6),
        (5, 0.5, 6),  # capped at max_replicas
        (5, -0.3, 3),  # round(1.5) rounds half up
        (2, -0.5, 1),
        (1, -0.5, 1),  # never below one replica
    ],
)
def test_replica_knob_dead_band_and_step(desired: int, change: float, expected: int) -> None:
    assert next_desired_replicas(desired, change, max_replicas=6) == expected


@pytest.mark.parametrize("desired", range(1, 7))
def test_replica_change_toward_moves_as_far_as_one_interval_allows(desired: int) -> None:
    for target in range(1, 7):
        moved = next_desired_replicas(desired, replica_change_toward(desired, target), 6)
        assert (moved - desired) * (target - desired) >= 0  # never the wrong way
        assert moved == target or abs(moved - desired) == max(1, math.floor(desired * 0.5 + 0.5))


def _gauges(lifecycle: list[int], desired: tuple[float, float] = (3.0, 1.0)) -> ReplicaGauges:
    """Three strong slots and two cheap ones; the stopped and provisioning ones idle."""
    return ReplicaGauges(
        pool=np.array([0, 0, 0, 1, 1]),
        healthy=np.array([True, False, True, True, True]),
        kv_usage=np.array([0.2, 0.8, 0.0, 0.5, 0.0]),
        kv_usage_mean=np.array([0.1, 0.5, 0.0, 0.4, 0.0]),
        waiting=np.array([3.0, 5.0, 0.0, 1.0, 0.0]),
        running=np.array([64.0, 128.0, 0.0, 10.0, 0.0]),
        max_num_seqs=np.array([256.0, 256.0, 256.0, 100.0, 100.0]),
        lifecycle=np.array(lifecycle),
        pool_desired=np.array(desired),
    )


def test_stopped_and_provisioning_slots_do_not_count_in_the_load_features() -> None:
    S, P, D, X = (ReplicaLifecycle.SERVING, ReplicaLifecycle.PROVISIONING,
                  ReplicaLifecycle.DRAINING, ReplicaLifecycle.STOPPED)  # fmt: skip
    fixed = ObservationContract(slo_names=("a",))
    with_idle_slots = FleetSignalTracker(fixed, 30.0).update(_gauges([S, D, P, S, X]), 300, 60)
    only_active = ReplicaGauges(
        **{
            k: v[[0, 1, 3]]
            for k, v in vars(_gauges([S, D, P, S, X])).items()
            if k not in ("lifecycle", "pool_desired")
        }
    )
    assert with_idle_slots == FleetSignalTracker(fixed, 30.0).update(only_active, 300, 60)
    elastic = ObservationContract(slo_names=("a",), max_replicas=(6, 3))
    pools = FleetSignalTracker(elastic, 30.0).update(_gauges([S, D, P, S, X]), 300, 60).pools
    assert pools["strong"]["replicas_serving"] == pytest.approx(1 / 6)
    assert pools["strong"]["replicas_draining"] == pytest.approx(1 / 6)
    assert pools["strong"]["replicas_provisioning"] == pytest.approx(1 / 6)
    assert pools["strong"]["replicas_desired"] == pytest.approx(3 / 6)
    assert pools["cheap"]["replicas_serving"] == pytest.approx(1 / 3)
    assert pools["cheap"]["replicas_desired"] == pytest.approx(1 / 3)
    assert pools["strong"]["healthy_fraction"] == 0.5  # of the serving and draining ones
    with pytest.raises(ValueError, match="lifecycle"):
        FleetSignalTracker(elastic, 30.0).update(only_active, 300, 60)


def test_lifecycle_codes_are_the_simulators() -> None:
    for state in ReplicaState:
        assert ReplicaLifecycle[state.name] == state.value


# ------------------------------------------------------------------------------------------------
# The elastic environment


def test_scaling_up_serves_only_after_the_provisioning_delay() -> None:
    env = LLMFleetEnv("slow-ramp", elastic=True, **SHORT)
    env.reset(seed=2)
    start = env.sim.now
    _, _, _, _, info = env.step(_scale(env, strong_replicas_change=0.5))
    assert info["replicas"]["strong"] == {
        "desired": 3,
        "provisioning": 1,
        "serving": 2,
        "draining": 0,
    }
    serving_at = None
    while serving_at is None:
        _, _, _, _, info = env.step(_scale(env))
        if info["replicas"]["strong"]["serving"] == 3:
            serving_at = info["time_s"]
    nominal = env.setup.config.pools[0].nominal_provisioning_s()
    assert 0.5 * nominal < serving_at - start < 2.0 * nominal + env.control_interval_s
    assert info["replicas"]["strong"]["provisioning"] == 0


def test_elastic_cost_counts_idle_provisioned_replicas() -> None:
    def cost(elastic: bool, change: float = 0.0) -> float:
        env = LLMFleetEnv("slow-ramp", elastic=elastic, **SHORT)  # low load, no interruptions
        env.reset(seed=0)
        hold = env.action_contract.encode(env.knob_values)
        for step in range(12):
            action = _scale(env, strong_replicas_change=change if step < 4 else 0.0)
            info = env.step(action if elastic else hold)[4]
        return info["serving_cost"]

    # All pools on A100s: (strong replicas + 1 cheap) / 2 reference replicas, busy or idle.
    assert cost(True) == pytest.approx(1.5)
    assert cost(True, 0.5) == pytest.approx(3.5)  # 2 -> 3 -> 5 -> 6 replicas, then held
    assert cost(False) < 1.5  # a fixed fleet pays for busy time: not for the idle cheap replica


def test_elastic_env_passes_the_checkers_and_is_made_by_its_id() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(envs.scenario_env_id("spot-interruptions"), **SHORT)
    assert env.unwrapped.elastic
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(LLMFleetEnv("short-flash-crowd", elastic=True, **SHORT), warn=True)


def test_same_seed_gives_the_same_elastic_trajectory() -> None:
    def rollout(seed: int) -> tuple[np.ndarray, list[float]]:
        env = LLMFleetEnv("spot-interruptions", elastic=True, **SHORT)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        observations, rewards = [obs], []
        for _ in range(10):
            obs, reward, _, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            observations.append(obs)
            rewards.append(reward)
        return np.array(observations), rewards

    (obs_a, rew_a), (obs_b, rew_b), (_, rew_c) = rollout(5), rollout(5), rollout(6)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert rew_a == rew_b and rew_a != rew_c


def test_scenarios_carry_their_episode_length() -> None:
    assert LLMFleetEnv("elastic-diurnal").max_steps == 24 * 120
    assert LLMFleetEnv("slow-ramp").max_steps == 4 * 120
    assert LLMFleetEnv("steady").max_steps == 2 * 120
    assert LLMFleetEnv("elastic-diurnal", episode_hours=1).max_steps == 120
    mix = LLMFleetEnv(["steady", "slow-ramp"], warmup_s=0.0)
    lengths = {mix.reset(seed=s)[1]["scenario"]: mix.max_steps for s in range(6)}
    assert lengths == {"steady": 240, "slow-ramp": 480}


def test_elastic_scenarios_are_apart_and_their_load_moves() -> None:
    assert all(SCENARIOS[name].elastic for name in ELASTIC_SCENARIOS)
    ramp = Ramp(start_s=100.0, duration_s=1000.0, final_multiplier=3.0)
    np.testing.assert_allclose(ramp.multiplier(np.array([0.0, 600.0, 5000.0])), [1.0, 2.0, 3.0])
    setup = SCENARIOS["slow-ramp"].build(np.random.default_rng(0), 600.0)
    assert 2.7 < setup.parameters["ramp_final_multiplier"] < 3.8
    assert [p.max_replicas for p in setup.config.pools] == [6, 3]
    crowd = SCENARIOS["short-flash-crowd"].build(np.random.default_rng(0), 600.0)
    assert (
        crowd.parameters["flashcrowd_duration_s"] < crowd.config.pools[0].nominal_provisioning_s()
    )


def test_a_short_flash_crowd_ends_before_new_replicas_serve() -> None:
    for seed in range(3):
        env = LLMFleetEnv("short-flash-crowd", elastic=True, episode_hours=1.0, warmup_s=60.0)
        env.reset(seed=seed)
        start = env.setup.parameters["flashcrowd_start_s"]
        end = start + env.setup.parameters["flashcrowd_duration_s"]
        while env.sim.now < start:  # hold until the crowd has begun, then scale up at once
            env.step(_scale(env))
        info = env.step(_scale(env, strong_replicas_change=0.5))[4]
        assert info["replicas"]["strong"]["provisioning"] == 1
        serving_during_crowd = [info["replicas"]["strong"]["serving"]]
        while env.sim.now + env.control_interval_s <= end:
            info = env.step(_scale(env, strong_replicas_change=0.5))[4]
            serving_during_crowd.append(info["replicas"]["strong"]["serving"])
        assert serving_during_crowd == [2] * len(serving_during_crowd)
        assert info["replicas"]["strong"]["desired"] > 2


# ------------------------------------------------------------------------------------------------
# Baselines that scale


@pytest.mark.parametrize("cls", [HorizontalPodAutoscaler, BudgetAutoscaler])
def test_scaling_baselines_refuse_a_fixed_contract(cls: type) -> None:
    context = control_context(LLMFleetEnv("steady"))
    with pytest.raises(ValueError, match="strong_replicas_change.*elastic"):
        cls(context)


def test_other_baselines_leave_the_replicas_alone() -> None:
    context = elastic_context()
    action = StaticController(context, {"cheap_tier_share": 0.4}).act(
        np.zeros(context.observation.size)
    )
    knobs = context.action.decode(action)
    assert knobs["strong_replicas_change"] == 0.0 and knobs["cheap_replicas_change"] == 0.0
    assert knobs["cheap_tier_share"] == pytest.approx(0.4)


def test_hpa_scales_up_under_a_slow_ramp_and_down_afterwards() -> None:
    env = LLMFleetEnv("slow-ramp", elastic=True, warmup_s=120.0)
    hpa = HorizontalPodAutoscaler(control_context(env), HpaParams(target=0.3, scale_down_window=20))
    obs, _ = env.reset(seed=1)
    desired = []
    for _ in range(env.max_steps):
        obs, *_, info = env.step(hpa.act(obs))
        desired.append(info["replicas"]["strong"]["desired"])
    assert min(desired[:20]) <= 2 and max(desired[-60:]) >= 4  # the ramp ends at ~1.6x nominal
    env.sim.workload.rate_scale = 0.2  # the load falls back
    for _ in range(60):
        obs, *_, info = env.step(hpa.act(obs))
    assert info["replicas"]["strong"]["desired"] <= 2
    assert info["replicas"]["cheap"]["desired"] == 1  # no traffic reaches the cheap tier


def test_hpa_follows_the_kubernetes_rule_and_its_scale_down_window() -> None:
    context = elastic_context()
    hpa = HorizontalPodAutoscaler(context, HpaParams(target=0.3, scale_down_window=10))

    def strong_target(desired: int, kv: float) -> int:
        obs = _budget_obs(
            context,
            **{
                "pool.strong.kv_usage_mean": kv,
                "pool.strong.replicas_desired": desired / 6,
                "pool.strong.replicas_serving": 2 / 6,
            },
        )
        change = context.action.decode(hpa.act(obs))["strong_replicas_change"]
        return next_desired_replicas(desired, change, 6)

    assert strong_target(2, 0.32) == 2  # within the 10% tolerance
    assert strong_target(2, 0.6) == 3  # ceil(2 * 0.6 / 0.3) = 4, at most +50% per interval
    assert strong_target(3, 0.6) == 4
    # Idle now: the highest recommendation of the last 10 intervals (4) holds the count.
    assert [strong_target(4, 0.0) for _ in range(9)] == [4] * 9
    assert strong_target(4, 0.0) == 2  # the window has forgotten them: toward 1, -50% at most


def _budget_obs(context: ControlContext, **features: float) -> np.ndarray:
    names = context.observation.feature_names
    obs = np.zeros(len(names), dtype=np.float32)
    calm = {"pool.strong.replicas_desired": 2 / 6, "pool.strong.replicas_serving": 2 / 6}
    for name, value in (calm | features).items():
        obs[names.index(name)] = value
    return obs


def test_budget_autoscaler_scales_up_on_a_page_and_down_when_calm() -> None:
    context = elastic_context()
    controller = BudgetAutoscaler(context, BudgetAutoscalerParams(hold=3))
    burn = {"slo.ttft.alert": 1.0, "slo.ttft.log_burn_rate.30m": math.log2(1 + 20)}
    paging = _budget_obs(context, **burn)
    up = context.action.decode(controller.act(paging))["strong_replicas_change"]
    assert next_desired_replicas(2, up, 6) == 3
    provisioning = _budget_obs(context, **burn, **{"pool.strong.replicas_provisioning": 1 / 6})
    assert context.action.decode(controller.act(provisioning))["strong_replicas_change"] == 0.0
    calm = [context.action.decode(controller.act(_budget_obs(context))) for _ in range(3)]
    assert [next_desired_replicas(2, k["strong_replicas_change"], 6) for k in calm] == [2, 2, 1]
    assert all(k["cheap_replicas_change"] == 0.0 for k in calm)
    burning = _budget_obs(context, **{"slo.quality.log_burn_rate.30m": 2.0})  # 3x: not calm
    controller.reset()
    for _ in range(5):
        assert context.action.decode(controller.act(burning))["strong_replicas_change"] == 0.0


def test_scaling_baselines_are_tuned_and_benchmarked_on_elastic_scenarios_only() -> None:
    with pytest.raises(ValueError, match="elastic scenario"):
        tune("hpa", "steady")
    result = tune("hpa", "spot-interruptions", (1000,), 0.05, 60.0, max_candidates=1)
    assert result.episode_hours == pytest.approx(0.05) and len(result.candidates) == 1
    with pytest.raises(ValueError, match="hpa cannot govern steady"):
        plan_runs(BenchConfig(resolve_controllers(["hpa"]), ("steady",), (0,)))
    runs, _, _ = plan_runs(
        BenchConfig(resolve_controllers(["hpa", "static"]), ("slow-ramp",), (0,))
    )
    assert all(run.env_kwargs["elastic"] for run in runs)
    assert "hpa" not in [c.name for c in resolve_controllers(None)]


def test_the_elastic_benchmark_brings_the_autoscalers_and_its_own_episode_lengths() -> None:
    scenarios = expand_scenarios(["elastic"])
    assert scenarios == list(ELASTIC_SCENARIOS)
    names = [c.name for c in resolve_controllers(None, scenarios=scenarios)]
    assert {"hpa", "budget-autoscaler", "static"} <= set(names)
    assert "ppo-standard" not in names  # a fixed-fleet policy cannot scale pools
    assert "ppo-elastic" in names and "ppo-elastic" not in [c.name for c in resolve_controllers()]
    runs, _, _ = plan_runs(BenchConfig(resolve_controllers(["hpa"]), tuple(scenarios), (0,)))
    lengths = {r.scenario: LLMFleetEnv(r.scenario, **r.env_kwargs).max_steps for r in runs}
    assert lengths["elastic-diurnal"] == 24 * 120 and lengths["slow-ramp"] == 4 * 120


def test_elastic_runs_trace_serving_and_desired_replicas() -> None:
    spec = resolve_controllers(["hpa"])[0]
    run = RunSpec(spec, "short-flash-crowd", 0, {"target": 0.05}, 0.25, 60.0, record_trace=True)
    trace = run_episode(run).trace
    assert trace["pool_names"] == ["strong", "cheap"]
    desired = np.asarray(trace["replicas_desired"])
    assert desired.shape == (30, 2) and desired[:, 0].max() > 2  # scaled up at 5 % KV usage


def test_the_elastic_report_sets_the_policy_against_each_autoscaler(tmp_path) -> None:
    from eval.bench import run_bench
    from eval.report import write_report

    config = BenchConfig(
        resolve_controllers(["ppo-elastic", "hpa", "budget-autoscaler"]),
        ("short-flash-crowd",),
        (0, 1),
        episode_hours=0.1,
        warmup_s=60.0,
        bootstrap_reps=200,
    )
    report = write_report(run_bench(config, use_ray=False), tmp_path)
    document = json.loads((tmp_path / "results.json").read_text())
    rows = document["analysis"]["autoscaling"]["ppo-elastic"]["short-flash-crowd"]
    assert set(rows) == {"hpa", "budget-autoscaler"}
    stats = document["analysis"]["scenarios"]["short-flash-crowd"]["controllers"]
    for autoscaler, row in rows.items():
        assert row["policy_spent"] == stats["ppo-elastic"]["budget_spent_total"]["point"]
        assert row["baseline_cost"] == stats[autoscaler]["cost_gpu_hours"]["point"]
        assert row["spent_difference"]["low"] <= row["spent_difference"]["high"]
    text = report.read_text()
    assert "## Autoscaling: ppo-elastic" in text and "replicas_short-flash-crowd.png" in text
    assert (tmp_path / "replicas_short-flash-crowd.png").stat().st_size > 0
