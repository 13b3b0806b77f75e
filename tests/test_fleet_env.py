import math
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from agents.base import ControlContext
from agents.baselines import BASELINES
from agents.tuning import applies_to
from envs.fleet_env import LLMFleetEnv
from envs.paths import reference_data_dir
from envs.scenario_names import ELASTIC_SCENARIO_NAMES, HELD_OUT_SCENARIO_NAMES, SCENARIO_NAMES
from envs.scenarios import (
    ELASTIC_SCENARIOS,
    HELD_OUT_SCENARIOS,
    SCENARIOS,
    TRAINING_SCENARIOS,
    env_kwargs_for,
)

SHORT = {"episode_hours": 0.1, "warmup_s": 120.0}
HAS_DATA = (reference_data_dir() / "traces").is_dir()


def _scenario_params(names=SCENARIO_NAMES):
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                SCENARIOS[name].needs_data and not HAS_DATA,
                reason=f"scenario {name} replays a trace from ../shared/data, which is absent",
            ),
        )
        for name in names
    ]


def test_scenario_names_match_the_suite() -> None:
    assert tuple(SCENARIOS) == SCENARIO_NAMES
    assert HELD_OUT_SCENARIOS == HELD_OUT_SCENARIO_NAMES
    assert ELASTIC_SCENARIOS == ELASTIC_SCENARIO_NAMES
    assert set(TRAINING_SCENARIOS).isdisjoint(HELD_OUT_SCENARIO_NAMES + ELASTIC_SCENARIO_NAMES)


@pytest.mark.parametrize("scenario", _scenario_params())
def test_gymnasium_and_sb3_env_checkers_pass(scenario: str) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(envs.scenario_env_id(scenario), **SHORT)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(LLMFleetEnv(scenario=scenario, **SHORT), warn=True)


def _rollout(env: gym.Env, seed: int, steps: int = 8) -> tuple[list, list]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        obs, reward, _, _, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        observations.append(obs)
        rewards.append(reward)
    return observations, rewards


def test_same_seed_gives_the_same_trajectory() -> None:
    first = _rollout(LLMFleetEnv("flash-crowd", **SHORT), seed=3)
    second = _rollout(LLMFleetEnv("flash-crowd", **SHORT), seed=3)
    other = _rollout(LLMFleetEnv("flash-crowd", **SHORT), seed=4)
    np.testing.assert_array_equal(np.array(first[0]), np.array(second[0]))
    assert first[1] == second[1]
    assert first[1] != other[1]


def test_env_pickles_mid_episode_and_continues_identically() -> None:
    env = LLMFleetEnv("steady", **SHORT)
    env.reset(seed=1)
    env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    a, b = env.step(action), clone.step(action)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_episode_truncates_after_its_hours_and_reward_is_the_sum_of_components() -> None:
    env = LLMFleetEnv("steady", **SHORT)
    env.reset(seed=0)
    for step in range(env.max_steps):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated
        assert reward == pytest.approx(-sum(info["reward_components"].values()))
        assert truncated == (step == env.max_steps - 1)
    assert set(info["step_burn_rates"]) == set(env.slo_names)


def test_routing_to_the_cheap_tier_spends_quality_budget() -> None:
    def quality_burn(share: float) -> float:
        env = LLMFleetEnv("steady", **SHORT)
        env.reset(seed=5)
        values = {**env.knob_values, "cheap_tier_share": share}
        action = env.action_contract.encode(values)
        burns = [env.step(action)[4]["step_burn_rates"] for _ in range(6)]
        name = next(n for n, k in env.slo_kinds.items() if k == "quality")
        return float(np.mean([b[name] for b in burns]))

    assert quality_burn(0.0) == 0.0
    assert quality_burn(0.5) > 1.0


def test_initial_budget_spent_is_drawn_in_range() -> None:
    env = LLMFleetEnv("steady", initial_budget_spent=(0.5, 0.5), **SHORT)
    _, info = env.reset(seed=0)
    remaining = np.array(list(info["budget_remaining"].values()))
    assert np.all(remaining < 0.55) and np.all(remaining > 0.3)


@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
def test_render_modes(mode: str) -> None:
    env = LLMFleetEnv("steady", render_mode=mode, **SHORT)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    if mode == "ansi":
        assert "budget" in frame and "knobs" in frame
    else:
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


def test_a_scenario_list_draws_one_per_reset_from_the_seed() -> None:
    mix = ["steady", "flash-crowd", "noisy-tenant"]
    env = LLMFleetEnv(mix, **SHORT)
    drawn = [env.reset(seed=seed)[1]["scenario"] for seed in range(12)]
    assert set(drawn) == set(mix)
    assert drawn == [env.reset(seed=seed)[1]["scenario"] for seed in range(12)]
    single = LLMFleetEnv("steady", **SHORT)
    assert env.observation_space == single.observation_space


def test_make_vec_runs() -> None:
    vec = gym.make_vec(envs.ENV_ID, num_envs=2, vectorization_mode="sync", **SHORT)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, *vec.single_observation_space.shape)
    obs, reward, *_ = vec.step(vec.action_space.sample())
    assert reward.shape == (2,)
    vec.close()


def _baseline_scenario_pairs():
    """Every baseline with every scenario it applies to (autoscalers: elastic ones only)."""
    return [
        pytest.param(baseline, *p.values, marks=p.marks, id=f"{baseline}-{p.values[0]}")
        for baseline in sorted(BASELINES)
        for p in _scenario_params()
        if applies_to(baseline, p.values[0])
    ]


@pytest.mark.parametrize("baseline, scenario", _baseline_scenario_pairs())
def test_every_baseline_runs_every_scenario(baseline: str, scenario: str) -> None:
    env = LLMFleetEnv(scenario, episode_hours=0.05, warmup_s=60.0, **env_kwargs_for(scenario))
    context = ControlContext(env.observation_contract, env.action_contract, env.slo_kinds)
    controller = BASELINES[baseline](context)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(controller.act(obs))
        assert np.isfinite(reward) and env.observation_space.contains(obs)
        done = terminated or truncated


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scenario": "nope"}, "unknown scenario"),
        ({"render_mode": "human"}, "render_mode"),
        ({"initial_budget_spent": (0.8, 0.2)}, "initial_budget_spent"),
        ({"control_interval_s": 0}, "control_interval_s"),
        ({"scenario": []}, "non-empty list"),
        ({"scenario": ["steady", "nope"]}, "unknown scenario"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LLMFleetEnv(**kwargs)


def test_perf_env_prints_its_figures_for_each_fleet_size() -> None:
    import json

    from typer.testing import CliRunner

    from eval.cli import app

    args = ["perf", "env", "--steps", "20", "--rounds", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["env_steps_per_s"] > 0 and figures["sim_steps_per_s"] > 0
    assert figures["overhead_vs_sim"] == pytest.approx(
        figures["sim_steps_per_s"] / figures["env_steps_per_s"] - 1.0
    )
    # Timings are the benchmark's to judge, not a test's: only that each figure is measured.
    for n in (3, 16, 64):
        assert figures[f"env_steps_per_s_{n}_replicas"] > 0
        assert math.isfinite(figures[f"overhead_vs_sim_{n}_replicas"])
        assert figures[f"overhead_vs_sim_{n}_replicas"] > -1.0
    assert figures["reset_ms"] > 0 and 0 < figures["reset_share"] < 1


@pytest.mark.parametrize("replicas", [3, 16, 64])
def test_scaled_fleets_keep_the_load_per_replica(replicas: int) -> None:
    from agents.perf import scaled_fleet
    from envs.scenarios import get_scenario

    steady = get_scenario("steady")
    reference = steady.build(np.random.default_rng(0), 600.0)
    scaled = scaled_fleet(steady, replicas).build(np.random.default_rng(0), 600.0)
    counts = [pool.replicas for pool in scaled.config.pools]
    assert sum(counts) == pytest.approx(replicas, abs=1)
    per_replica = [
        w.mean_rate / sum(p.replicas for p in s.config.pools)
        for w, s in ((reference.workload, reference), (scaled.workload, scaled))
    ]
    assert per_replica[1] == pytest.approx(per_replica[0], rel=0.1)
