"""The held-out headline: policies judged through the sidecar's guardrails, baselines tuned
fairly (over the policy's training scenarios) and strictly (per scenario), the grid's cells."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.base import Controller
from agents.tuning import control_context, pool_tuning
from envs.fleet_env import LLMFleetEnv
from eval.bench import (
    TUNED_DIR,
    ZOO_DIR,
    BenchConfig,
    BenchResult,
    ControllerSpec,
    RunResult,
    RunSpec,
    plan_runs,
    resolve_controllers,
    run_episode,
    tuned_params_path,
)
from eval.headline import EXAMPLE_FLEETS, cells_not_run, judge, render_grid
from eval.policy_controller import SidecarGuardedController
from eval.report import PRIMARY, Analysis, analyse, results_document
from policies.runtime import read_manifest
from policies.sidecar.config import GuardrailSettings
from slo import default_spec

FAST = {"episode_hours": 0.05, "warmup_s": 60.0}
SLO_NAMES = [s.name for s in default_spec().engine_slos]
KNOBS = ("cheap_tier_share", "admission_limit")
POLICY = ControllerSpec("ppo", "ppo.onnx")
SIDECAR = ControllerSpec("ppo@sidecar", "ppo.onnx", variant="sidecar")


class Proposals(Controller):
    """Proposes the given actions in turn (the guardrails under test are the real ones)."""

    def __init__(self, context, actions) -> None:
        super().__init__(context)
        self.actions = [np.asarray(a, dtype=np.float64) for a in actions]
        self.step = 0

    def reset(self) -> None:
        self.step = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        action = self.actions[self.step % len(self.actions)]
        self.step += 1
        return action


@pytest.fixture(scope="module")
def context():
    return control_context(LLMFleetEnv("steady", **FAST))


def _guarded(context, actions, settings=None) -> SidecarGuardedController:
    return SidecarGuardedController(Proposals(context, actions), settings)


def _guarded_steps(context, actions, settings=None) -> np.ndarray:
    guarded = _guarded(context, actions, settings)
    observation = np.zeros(len(context.observation.feature_names), dtype=np.float32)
    return np.array([guarded.act(observation) for _ in range(len(actions))])


@pytest.mark.parametrize("max_step", [0.1, 0.25])
def test_sidecar_variant_moves_a_flipping_policy_at_most_max_step_per_interval(
    context, max_step
) -> None:
    n = len(context.action.names)
    flips = [np.full(n, (-1.0) ** i) for i in range(8)]
    steps = _guarded_steps(context, flips, GuardrailSettings(max_step=max_step))
    continuous = [i for i, k in enumerate(context.action.knobs) if not k.integer]
    changes = np.abs(np.diff(steps[:, continuous], axis=0))
    assert changes.max() <= 2 * max_step + 1e-5  # max_step is a fraction of the [-1, 1] range
    assert changes.max() > 0  # it does move
    raw_change = np.abs(np.diff(np.array(flips), axis=0)).mean()
    assert np.abs(np.diff(steps, axis=0)).mean() < raw_change


def test_sidecar_variant_holds_within_hysteresis_and_on_an_unusable_action(context) -> None:
    n = len(context.action.names)
    guarded = _guarded(context, [np.zeros(n)])
    start = guarded.knobs_to_action(guarded.in_force)  # neutral knobs, as the sidecar starts
    nudged = _guarded_steps(context, [start + 0.01, np.full(n, np.nan), np.full(n, 5.0)])
    # A nudge within the band (2 x 0.02 of the unit range) and unusable actions change nothing.
    np.testing.assert_allclose(nudged, np.tile(start, (3, 1)), atol=1e-6)


def test_the_benchmark_runs_the_zoo_policy_through_the_sidecar_guardrails() -> None:
    raw, guarded = resolve_controllers(["ppo-standard", "ppo-standard@sidecar"])
    assert guarded.variant == "sidecar" and guarded.base_name == "ppo-standard"
    results = [run_episode(RunSpec(c, "flash-crowd", 0, None, **FAST)) for c in (raw, guarded)]
    smoothness = [r.metrics["action_smoothness"] for r in results]
    assert smoothness[1] <= smoothness[0]
    assert set(results[1].metrics["knob_mean"]) == set(results[1].metrics["action_mean"])


def test_default_controllers_add_sidecar_and_fair_variants_where_they_can_govern() -> None:
    names = [c.name for c in resolve_controllers()]
    assert "ppo-standard@sidecar" in names and "pid@fair" in names
    assert "vllm-defaults@fair" not in names
    elastic = [c.name for c in resolve_controllers(scenarios=["slow-ramp"])]
    assert not [n for n in elastic if n.endswith("@fair")]  # tuned on the fixed fleet


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("vllm-defaults@fair", "no @fair variant"),
        ("pid@sidecar", "unknown controller 'pid@sidecar'"),
        ("ppo-standard@fair", "unknown controller 'ppo-standard@fair'"),
    ],
)
def test_unknown_variants_are_refused_by_name(name, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_controllers([name])


def test_fair_baselines_take_one_parameter_set_on_every_scenario() -> None:
    config = BenchConfig(resolve_controllers(["pid", "pid@fair"]), ("steady", "mixed"), (0,))
    _, params, _ = plan_runs(config)
    fair = json.loads(tuned_params_path("pid", "fair").read_text())["best_params"]
    assert params["pid@fair"] == {"steady": fair, "mixed": fair}
    for scenario in ("steady", "mixed"):  # strict: tuned on each scenario itself
        strict = json.loads(tuned_params_path("pid", scenario).read_text())["best_params"]
        assert params["pid"][scenario] == strict


def _tuning(scenario: str, returns: list[float]) -> dict:
    return {
        "baseline": "pid",
        "scenario": scenario,
        "fleet": None,
        "observation_contract": None,
        "seeds": [1000],
        "episode_hours": 1.0,
        "warmup_s": 600.0,
        "best_params": {},
        "candidates": [{"params": {"kp": i}, "mean_return": r} for i, r in enumerate(returns)],
    }


def test_pooled_tuning_keeps_the_best_candidate_on_average_not_on_one_scenario() -> None:
    pooled = pool_tuning([_tuning("steady", [-1.0, -2.0]), _tuning("diurnal", [-9.0, -3.0])], "x")
    assert pooled["best_params"] == {"kp": 1} and pooled["scenario"] == "x"
    assert pooled["candidates"][0]["by_scenario"] == {"steady": -1.0, "diurnal": -9.0}
    with pytest.raises(ValueError, match="diurnal scored other candidates"):
        pool_tuning([_tuning("steady", [-1.0, -2.0]), _tuning("diurnal", [-1.0])], "x")


@pytest.mark.parametrize("baseline", ["static", "reactive", "sre-policy", "pid"])
def test_committed_fair_parameters_pool_the_policys_training_scenarios(baseline) -> None:
    scenarios = read_manifest(ZOO_DIR / "ppo-standard.onnx").provenance.scenarios
    per_scenario = [json.loads(tuned_params_path(baseline, s).read_text()) for s in scenarios]
    committed = json.loads((TUNED_DIR / baseline / "fair.json").read_text())
    assert committed["scenarios"] == list(scenarios)
    assert min(committed["seeds"]) >= 1000
    assert committed == json.loads(json.dumps(pool_tuning(per_scenario, "fair")))


def _metrics(spent: float, cost: float, exhaustions: int = 0, knob: float = 0.0) -> dict:
    # The SLO of index 0 carries all the budget spent; knob: the cheap-tier share held.
    return {
        PRIMARY: spent,
        "budget_spent": {n: spent if i == 0 else 0.0 for i, n in enumerate(SLO_NAMES)},
        "attainment": dict.fromkeys(SLO_NAMES, 0.99),
        "cost_gpu_hours": cost,
        "goodput_rps": 10.0,
        "page_alerts": 0,
        "exhaustions": exhaustions,
        "action_smoothness": 0.01,
        "action_mean": {"cheap_tier_share": knob, "admission_limit": 0.0},
        "knob_mean": {"cheap_tier_share": 0.4 * (knob + 1), "admission_limit": 1.0},
    }


def _result(
    spent: dict[str, float],
    exhausted: tuple[str, ...] = (),
    fair: bool = True,
    scenario: str = "mixed",
):
    """Synthetic runs on ``scenario`` (the held-out ``mixed``): spent per controller, 1 GPU-h
    each."""
    controllers = [POLICY, SIDECAR, ControllerSpec("vllm-defaults"), ControllerSpec("pid")]
    controllers += [ControllerSpec("pid@fair", variant="fair")] if fair else []
    config = BenchConfig(tuple(controllers), (scenario,), tuple(range(6)), bootstrap_reps=500)
    runs = [
        RunResult(
            c.name,
            scenario,
            seed,
            _metrics(spent[c.name] + 0.01 * seed, 1.0, int(c.name in exhausted), c.is_policy),
        )
        for c in controllers
        for seed in config.seeds
    ]
    return BenchResult(config, runs)


def test_the_cell_is_judged_on_the_sidecar_controller_fair_and_strict() -> None:
    # The sidecar variant beats the fair pid but not pid tuned on mixed itself; the raw policy
    # would beat both, and must not be what is judged.
    spent = {"ppo": 0.1, "ppo@sidecar": 1.0, "vllm-defaults": 3.0, "pid": 0.5, "pid@fair": 1.5}
    result = _result(spent, exhausted=("ppo@sidecar",))
    headline = judge(result, Analysis(result))["ppo@sidecar"]
    assert headline["policy"] == "ppo" and headline["judged_as_deployed"]
    (cell,) = headline["cells"]
    assert cell["fair"]["best_baseline"] == "pid@fair" and cell["fair"]["pass"]
    assert cell["strict"]["best_baseline"] == "pid" and not cell["strict"]["pass"]
    assert headline["pass_fraction_fair"] == 1.0 and headline["pass_fraction_strict"] == 0.0
    why = cell["strict"]["why"]
    assert SLO_NAMES[0] in why and "held cheap_tier_share at 0.8" in why and "pid's 0.4" in why
    assert cell["fair"]["why"] is None
    assert (
        not cell["strict"]["exhaustions"]["ok"] and not headline["exhaustion_free_where_a_rival_is"]
    )


def test_without_fair_rivals_the_fair_fraction_is_unknown_not_zero() -> None:
    spent = {"ppo": 0.1, "ppo@sidecar": 0.2, "vllm-defaults": 3.0, "pid": 0.5}
    result = _result(spent, fair=False)
    headline = judge(result, Analysis(result))["ppo@sidecar"]
    assert headline["pass_fraction_fair"] is None and headline["pass_fraction_strict"] == 1.0
    document = results_document(result, analyse(result))
    text = render_grid(document)
    assert "**fair** unknown (no cell judged)" in text and "**strict** 1.00" in text
    assert "no rival benchmarked" in text


def test_no_held_out_scenario_no_headline() -> None:
    spent = {"ppo": 0.1, "ppo@sidecar": 0.2, "vllm-defaults": 3.0, "pid": 0.5, "pid@fair": 1.0}
    result = _result(spent, scenario="steady")
    assert judge(result, Analysis(result)) == {}


def test_results_json_carries_the_headline_and_the_report_says_which_reading_is_which() -> None:
    spent = {"ppo": 0.1, "ppo@sidecar": 1.0, "vllm-defaults": 3.0, "pid": 0.5, "pid@fair": 1.5}
    document = results_document(_result(spent), analyse(_result(spent)))
    assert document["headline"]["ppo@sidecar"]["pass_fraction_strict"] == 0.0
    text = render_grid(document)
    assert "## Held-out grid: ppo@sidecar" in text and "through the sidecar's default" in text
    assert "*Fair*: each baseline with one parameter set" in text and "*Strict*" in text
    assert "fail: spent" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "fleet", "reason"),
    [
        ("ppo-standard-v2", "single-tier.yaml", "observation contract"),
        ("ppo-standard", "fleet-64.yaml", "outside its envelope"),
    ],
)
def test_cells_a_policy_cannot_govern_are_listed_with_the_reason(policy, fleet, reason) -> None:
    fleet = next(f for f in EXAMPLE_FLEETS if f.endswith(fleet))
    config = BenchConfig(
        resolve_controllers([policy, "pid"]), ("steady", "mixed"), (0,), grid_fleets=(fleet,)
    )
    (cell,) = cells_not_run(config)  # held-out scenarios only, policies only
    assert cell["scenario"] == "mixed" and cell["fleet"] == fleet
    assert reason in cell["reason"]
