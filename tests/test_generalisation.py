"""The ingredients of a policy that generalises: domain randomisation, the action rate limit the
policy carries, and the smoothness and overload reward terms (issue 16)."""

import numpy as np
import pytest

from envs.action_filter import ActionRateLimit
from envs.contract import ActionContract, elastic_knobs
from envs.domain import DomainRandomisation
from envs.fleet_env import LLMFleetEnv

SHORT = {"episode_hours": 0.1, "warmup_s": 60.0}
WIDE = {
    "load_scale": [0.7, 1.6],
    "prompt_scale": [0.5, 3.0],
    "output_scale": [0.5, 3.0],
    "tenant_concentration": 20.0,
    "failure_rate_per_hour": [0.0, 0.5],
}


def _flipping_actions(env: LLMFleetEnv, steps: int) -> list[np.ndarray]:
    """Every knob between the ends of its range from one step to the next (what the policy did
    on held-out traffic)."""
    ends = np.ones(env.action_space.shape, dtype=np.float32)
    return [ends * (-1.0) ** i for i in range(steps)]


def _rollout(env: LLMFleetEnv, seed: int, actions: list[np.ndarray]) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    steps = [(obs, 0.0, info)]
    for action in actions:
        obs, reward, _, _, info = env.step(action)
        steps.append((obs, reward, info))
    return steps


def _in_force(env: LLMFleetEnv, info: dict) -> np.ndarray:
    return env.action_contract.encode(info["knobs"]).astype(np.float64)


def test_the_rate_limit_moves_settings_by_max_step_integers_by_a_level_replicas_freely():
    rate_limit = ActionRateLimit(max_step=0.1)
    contract = ActionContract(knobs=elastic_knobs(("strong", "cheap")))
    limits = rate_limit.step_limits(contract)
    in_force = np.zeros(len(contract.knobs))
    in_force[3] = -1.0  # shed_priority_below at 0
    proposed = np.array([1.0, -1.0, 0.05, 1.0, -0.3, 2.0, 0.1, 0.8, -0.6])
    out = rate_limit.apply(proposed, in_force, limits)
    # The integer knob goes up one level (0 -> 1), not two; the replica changes pass; 2.0 is
    # clipped to [-1, 1] first, then limited.
    np.testing.assert_allclose(out, [0.1, -0.1, 0.05, 0.0, -0.1, 0.1, 0.1, 0.8, -0.6])
    np.testing.assert_allclose(rate_limit.apply(out, in_force, limits), out)  # idempotent


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_step": 0.0}, r"max_step must be in \(0, 2\]"),
        ({"max_step": 3.0}, r"max_step must be in \(0, 2\]"),
        ({}, "max_step is missing"),
        ({"max_step": 0.1, "ema": 0.5}, r"unknown field\(s\) \['ema'\]"),
    ],
)
def test_a_bad_rate_limit_is_refused_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActionRateLimit.from_mapping(data)


def test_the_environment_applies_the_rate_limit_from_the_knobs_it_shows() -> None:
    env = LLMFleetEnv("steady", action_filter={"max_step": 0.1}, **SHORT)
    limits = env.action_filter.step_limits(env.action_contract)
    features = env.action_filter.in_force_features(env.observation_contract, env.action_contract)
    steps = _rollout(env, 0, _flipping_actions(env, 12))
    for (_, _, info0), (obs1, _, info1) in zip(steps, steps[1:], strict=False):
        before, after = _in_force(env, info0), _in_force(env, info1)
        np.testing.assert_allclose(obs1[features], after, atol=1e-6)  # what the graph reads
        assert np.all(np.abs(after - before) <= limits + 1e-5)
    moved = np.abs(_in_force(env, steps[-1][2]) - _in_force(env, steps[0][2]))
    assert moved.max() > 0.05  # it does move, slowly
    free = _rollout(LLMFleetEnv("steady", **SHORT), 0, _flipping_actions(env, 2))
    assert np.abs(_in_force(env, free[1][2]) - _in_force(env, free[0][2])).max() > 1.0


def test_the_smoothness_term_charges_the_mean_change_of_the_knobs_in_force() -> None:
    env = LLMFleetEnv("steady", reward={"smoothness": 2.0}, **SHORT)
    steps = _rollout(env, 1, _flipping_actions(env, 4) + [np.ones(7, np.float32)] * 2)
    for (_, _, before), (_, reward, info) in zip(steps, steps[1:], strict=False):
        change = np.mean(np.abs(_in_force(env, info) - _in_force(env, before)))
        assert info["reward_components"]["smoothness"] == pytest.approx(2.0 * change, abs=1e-6)
        assert reward == pytest.approx(-sum(info["reward_components"].values()))
    costs = [s[2]["reward_components"]["smoothness"] for s in steps[1:]]
    assert min(costs[1:4]) > 1.0 and costs[-1] == 0.0  # flipping is charged, holding is free
    plain = _rollout(LLMFleetEnv("steady", **SHORT), 1, _flipping_actions(env, 2))
    assert plain[-1][2]["reward_components"]["smoothness"] == 0.0  # off by default


@pytest.mark.parametrize(
    ("overload_load", "factor"), [(1e-3, 3.0), (100.0, 1.0)], ids=["overloaded", "not-overloaded"]
)
def test_overload_weights_scale_the_costs_of_their_kinds_in_overloaded_steps(
    overload_load: float, factor: float
) -> None:
    weights = {"ttft": 3.0, "quality": 0.5}
    reward = {"overload_weights": weights, "overload_load": overload_load}
    actions = [np.ones(7, np.float32)] * 6  # the cheap tier's largest share spends quality
    plain = _rollout(LLMFleetEnv("steady", **SHORT), 2, actions)
    weighted = _rollout(LLMFleetEnv("steady", reward=reward, **SHORT), 2, actions)
    quality = 0.5 if factor != 1.0 else 1.0
    for (_, _, a), (_, _, b) in zip(plain[1:], weighted[1:], strict=True):
        ca, cb = a["reward_components"], b["reward_components"]
        assert cb["burn/ttft-1s"] == pytest.approx(factor * ca["burn/ttft-1s"])
        assert cb["burn/quality-intended-tier"] == pytest.approx(
            quality * ca["burn/quality-intended-tier"]
        )
        assert cb["burn/itl-100ms"] == pytest.approx(ca["burn/itl-100ms"])
    assert sum(s[2]["reward_components"]["burn/quality-intended-tier"] for s in plain[1:]) > 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"overload_weights": {"latency": 2.0}}, r"unknown SLI kind\(s\) \['latency'\]"),
        ({"smoothnes": 1.0}, r"unknown field\(s\) \['smoothnes'\]"),
        ({"smoothness": -1.0}, "must be >= 0"),
    ],
)
def test_a_bad_reward_is_refused_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLMFleetEnv("steady", reward=data, **SHORT)


def test_randomisation_is_drawn_from_the_environment_seed() -> None:
    def draw(seed: int) -> tuple:
        env = LLMFleetEnv("steady", randomisation=WIDE, **SHORT)
        obs, reward, info = _rollout(env, seed, [np.zeros(7, np.float32)] * 3)[-1]
        return obs, reward, info["scenario_parameters"]

    first, again, other = draw(5), draw(5), draw(6)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1] and first[2] == again[2]
    assert first[2] != other[2]


def test_randomisation_draws_within_its_ranges_and_acts_on_the_traffic() -> None:
    env = LLMFleetEnv("steady", randomisation=WIDE, **SHORT)
    base = LLMFleetEnv("steady", **SHORT)
    for seed in range(8):
        env.reset(seed=seed)
        base.reset(seed=seed)
        p = env.setup.parameters
        assert 0.7 <= p["randomised.load_scale"] <= 1.6
        assert 0.5 <= p["randomised.prompt_scale"] <= 3.0
        assert 0.0 <= p["randomised.failure_rate_per_hour"] <= 0.5
        shares = [p[f"randomised.share.{t}"] for t in ("premium", "standard", "batch")]
        assert sum(shares) == pytest.approx(1.0)
        rate = env.setup.workload.mean_rate / (env.setup.parameters["load"] * 15.2)
        assert rate == pytest.approx(p["randomised.load_scale"])
        mtbf = {pool.mtbf_s for pool in env.setup.config.pools}
        assert mtbf == {3600.0 / p["randomised.failure_rate_per_hour"]}
    lengths = env.setup.workload.lengths
    np.testing.assert_allclose(
        lengths.prompt_quantiles,
        np.maximum(base.fleet.lengths.prompt_quantiles * p["randomised.prompt_scale"], 1.0),
    )


def test_no_randomisation_leaves_the_episodes_as_they_were() -> None:
    actions = [np.zeros(7, np.float32)] * 3
    plain = _rollout(LLMFleetEnv("diurnal", **SHORT), 3, actions)
    neutral = _rollout(LLMFleetEnv("diurnal", randomisation={}, **SHORT), 3, actions)
    np.testing.assert_array_equal(plain[-1][0], neutral[-1][0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"load_scale": [1.5, 0.4]}, "load_scale"),
        ({"prompt_scale": [0.0, 2.0]}, "prompt_scale"),
        ({"failure_rate_per_hour": [-1.0, 0.0]}, "failure_rate_per_hour"),
        ({"tenant_concentration": 0.0}, "tenant_concentration"),
        ({"load": [0.4, 1.5]}, "load"),
    ],
)
def test_a_bad_randomisation_is_refused_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DomainRandomisation.from_mapping(data)


def _ablation_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("variant", "kept"),
    [
        ("baseline", set()),
        ("smoothness", {"action_filter", "reward.smoothness"}),
        ("randomisation", {"randomisation"}),
        ("reward", {"reward.overload_weights", "reward.overload_load"}),
        (
            "all",
            {
                "randomisation",
                "action_filter",
                "reward.smoothness",
                "reward.overload_weights",
                "reward.overload_load",
            },
        ),
    ],
)
def test_each_ablation_variant_keeps_only_its_ingredients_of_the_recipe(
    variant: str, kept: set
) -> None:
    from training.config import load_preset

    ablation = _ablation_module()
    recipe = load_preset("standard-v3")
    preset = ablation.variant_preset(recipe, variant, timesteps=4096)
    kwargs = preset.env_kwargs.as_kwargs()
    recipe_kwargs = recipe.env_kwargs.as_kwargs()
    # The contract and the fleets define the environment, not an ingredient: every variant
    # keeps the recipe's.
    shared = ("contract", "fleet", "fleets")
    assert {k: kwargs.get(k) for k in shared} == {k: recipe_kwargs.get(k) for k in shared}
    found = {k for k in kwargs if k not in ("reward", *shared)}
    found |= {f"reward.{k}" for k in kwargs.get("reward", {})}
    assert found == kept
    for name in kept:
        top, _, sub = name.partition(".")
        mine, theirs = kwargs[top], recipe_kwargs[top]
        assert (mine[sub] == theirs[sub]) if sub else (mine == theirs)
    assert preset.timesteps == 4096 and preset.scenarios == recipe.scenarios
    assert preset.ppo == recipe.ppo


def test_the_guard_hands_over_out_of_distribution_and_back_after_calm_steps() -> None:
    from agents.tuning import control_context
    from eval.bench import BenchEnv, RunSpec, resolve_controllers, run_episode

    (spec,) = resolve_controllers(["ppo-standard+guard"])
    env = BenchEnv("steady", contract=spec.contract_version, **SHORT)
    guard = spec.build(control_context(env), None)
    obs, _ = env.reset(seed=0)
    assert not guard.out_of_distribution(obs)
    np.testing.assert_allclose(guard.act(obs), guard.policy.act(obs))
    names = env.observation_contract.feature_names
    knob, load = names.index("knob.admission_limit"), names.index("fleet.load_per_capacity")
    far_knob, far_load = obs.copy(), obs.copy()
    far_knob[knob] = guard.mean[knob] + 3 * guard.z_max * guard.std[knob]
    far_load[load] = guard.mean[load] + 1.01 * guard.z_max * guard.std[load]
    assert not guard.out_of_distribution(far_knob)  # the knobs are the controllers' own doing
    guard.act(far_load)
    assert guard.in_control is guard.fallback
    for _ in range(guard.calm_steps - 1):
        guard.act(obs)
        assert guard.in_control is guard.fallback
    guard.act(obs)
    assert guard.in_control is guard.policy and guard.handovers == 2
    result = run_episode(RunSpec(spec, "steady", 0, **SHORT))
    assert result.controller == "ppo-standard+guard" and result.metrics["steps"] == 12
    fleet = "examples/fleets/single-tier.yaml"
    assert "fallback is tuned for the fixed reference fleet" in spec.unfit_reason("steady", fleet)


def test_the_ablation_table_reads_the_benchmark_and_says_what_it_cannot_show(tmp_path) -> None:
    import json

    def interval(point: float) -> dict:
        return {"point": point, "low": 0.9 * point, "high": 1.1 * point}

    document = {
        "headline": {
            "abl-all@sidecar": {
                "policy": "abl-all",
                "pass_fraction_fair": 2 / 3,
                "pass_fraction_strict": None,
                "exhaustion_free_where_a_rival_is": True,
                "cells": [{"scenario": "mixed", "fair": {"pass": False, "why": "spent more"}}],
            },
            "ppo-standard@sidecar": {"policy": "ppo-standard"},  # not a variant
        },
        "analysis": {
            "groups": {
                "held_out": {
                    "controllers": {
                        "abl-all@sidecar": {
                            "budget_spent_total": interval(0.05),
                            "cost_gpu_hours": interval(1.0),
                            "action_smoothness": interval(0.01),
                        },
                        "abl-all": {"action_smoothness": {"point": None}},
                    }
                }
            }
        },
        "timing": {"wall_time_s": 600.0},
        "config": {"seeds": [0, 1, 2], "episode_hours": 0.5},
    }
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(document))
    _ablation_module().main(["--report-only", "--out", str(tmp_path)])
    table = (tmp_path / "ablation.md").read_text()
    row = "| all | `abl-all@sidecar` | 0.67 | unknown | yes | 5.00 [4.50, 5.50] | 1.00 [0.90, 1.10]"
    assert row + " | no data | 0.010 [0.009, 0.011] |" in table
    assert "ppo-standard" not in table and "  - mixed (fair): spent more" in table
    assert "3 seeds of 0.5 h; benchmark 10 min" in table
    assert (tmp_path / "ablation.png").stat().st_size > 0


@pytest.mark.parametrize(("max_step", "moves"), [(0.02, False), (0.03, False), (0.05, True)])
def test_a_rate_limit_within_the_sidecar_hysteresis_band_never_moves_as_deployed(
    max_step: float, moves: bool
) -> None:
    from envs.contract import neutral_knob_values
    from policies.sidecar.config import GuardrailSettings
    from policies.sidecar.guardrails import Guardrails

    contract = ActionContract()
    guardrails = Guardrails(contract, GuardrailSettings())
    neutral = neutral_knob_values(contract.names)
    in_force = guardrails.final_clamp(neutral, neutral)[0]
    rate_limit = ActionRateLimit(max_step)
    for target in (-1.0, 1.0):  # every knob pushed one way, then the other
        proposal = rate_limit.apply(
            np.full(len(contract.names), target),
            contract.encode(in_force),
            rate_limit.step_limits(contract),
        )
        published, _ = guardrails.apply(guardrails.decode(proposal), in_force)
        continuous = [k.name for k in contract.knobs if not k.integer]
        changed = [k for k in continuous if published[k] != in_force[k]]
        assert bool(changed) is moves, changed


def test_randomisation_keeps_what_it_does_not_draw() -> None:
    from envs.scenarios import REFERENCE_FLEET, GovernedFleet

    pools = [p.model_copy(update={"mtbf_s": 7200.0}) for p in REFERENCE_FLEET.config.pools]
    fleet = GovernedFleet(REFERENCE_FLEET.config.model_copy(update={"pools": pools}), 15.2)
    drawn = DomainRandomisation(load_scale=(0.5, 1.5)).sample(np.random.default_rng(0), fleet)
    assert [p.mtbf_s for p in drawn.config.pools] == [7200.0, 7200.0]
    assert drawn.tenant_shares == pytest.approx(fleet.tenant_shares)
    np.testing.assert_array_equal(drawn.lengths.prompt_quantiles, fleet.lengths.prompt_quantiles)
    assert 0.5 * 15.2 <= drawn.capacity_rps <= 1.5 * 15.2
