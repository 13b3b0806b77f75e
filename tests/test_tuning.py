import json

import pytest
from typer.testing import CliRunner

from agents.baselines import (
    ReactiveParams,
    ReactiveThresholds,
    StaticController,
    VllmDefaults,
    make_controller,
)
from agents.tuning import (
    TUNING_SEED_OFFSET,
    candidate_params,
    control_context,
    evaluate,
    load_tuned_params,
    tune,
    tuning_seeds,
)
from envs.fleet_env import LLMFleetEnv
from eval.cli import app

FAST = {"episode_hours": 0.05, "warmup_s": 60.0}
SEEDS = (1000, 1001)
NEUTRAL_STATIC = {
    "cheap_tier_share": 0.0,
    "offload_fraction": 0.0,
    "admission_limit": 3.0,
    "shed_priority_below": 0.0,
}


@pytest.fixture(scope="module")
def static_result():
    """The static grid from its start up to and including the neutral setting."""
    index = candidate_params("static").index(NEUTRAL_STATIC)
    return tune("static", "flash-crowd", SEEDS, max_candidates=index + 1, **FAST)


def test_tuning_seeds_stay_apart_from_evaluation_seeds() -> None:
    assert tuning_seeds(3) == (1000, 1001, 1002)
    assert min(tuning_seeds(1)) >= TUNING_SEED_OFFSET
    with pytest.raises(ValueError, match=">= 1"):
        tuning_seeds(0)


def test_tune_returns_the_argmax_of_its_scores(static_result) -> None:
    means = [score.mean_return for _, score in static_result.candidates]
    assert len(set(means)) > 1  # the knobs matter on a flash crowd, or the search is vacuous
    assert static_result.best_score.mean_return == max(means)
    assert static_result.best_params == static_result.candidates[means.index(max(means))][0]
    assert all(len(score.returns) == len(SEEDS) for _, score in static_result.candidates)


def test_best_static_setting_is_no_worse_than_vllm_defaults(static_result) -> None:
    defaults = tune("vllm-defaults", "flash-crowd", SEEDS, **FAST)
    assert [params for params, _ in defaults.candidates] == [{}]
    neutral = next(s for p, s in static_result.candidates if p == NEUTRAL_STATIC)
    assert neutral.returns == pytest.approx(defaults.best_score.returns)
    assert static_result.best_score.mean_return >= defaults.best_score.mean_return


def test_same_seeds_give_the_same_result() -> None:
    first = tune("reactive", "flash-crowd", (1000,), max_candidates=2, **FAST)
    second = tune("reactive", "flash-crowd", (1000,), max_candidates=2, **FAST)
    assert first.to_dict() == second.to_dict()


def test_evaluate_scores_one_episode_per_seed() -> None:
    score = evaluate(lambda ctx: VllmDefaults(ctx), "steady", (1000, 1001), **FAST)
    assert len(score.returns) == 2 and score.returns[0] != score.returns[1]
    assert score.mean_return == pytest.approx(sum(score.returns) / 2)
    assert all(r < 0 for r in score.returns)  # costs only: serving is never free


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tune("nope", "steady", (1000,), **FAST), "unknown baseline 'nope'"),
        (lambda: tune("static", "nope", (1000,), **FAST), "unknown scenario 'nope'"),
        (lambda: candidate_params("pidd"), "known: vllm-defaults"),
    ],
)
def test_bad_names_raise_clear_errors(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_make_controller_rebuilds_tuned_params(static_result) -> None:
    context = control_context(LLMFleetEnv("steady", **FAST))
    reactive = make_controller("reactive", context, {"kv_high": 0.85, "burn_high": 6.0})
    assert isinstance(reactive, ReactiveThresholds)
    assert reactive.params == ReactiveParams(kv_high=0.85, burn_high=6.0)
    static = make_controller("static", context, static_result.best_params)
    assert isinstance(static, StaticController)
    assert static.values["admission_limit"] == static_result.best_params["admission_limit"]
    with pytest.raises(ValueError, match="unknown parameter.*kv_hi"):
        make_controller("reactive", context, {"kv_hi": 0.9})
    with pytest.raises(ValueError, match="no parameters"):
        make_controller("vllm-defaults", context, {"kv_high": 0.9})


def test_cli_json_prints_the_result_and_writes_it(tmp_path) -> None:
    out = tmp_path / "tuned.json"
    args = ["tune", "reactive", "--scenario", "steady", "--seeds", "1", "--episode-hours", "0.05",
            "--warmup-s", "60", "--max-candidates", "2", "--json", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert {
        "baseline",
        "scenario",
        "seeds",
        "best_params",
        "best_mean_return",
        "candidates",
    } <= set(printed)
    assert printed["seeds"] == [1000] and len(printed["candidates"]) == 2
    assert load_tuned_params(out) == ("reactive", "steady", printed["best_params"])


def test_cli_unknown_baseline_exits_with_an_error() -> None:
    result = CliRunner().invoke(app, ["tune", "nope", "--scenario", "steady"])
    assert result.exit_code == 2
    assert "unknown baseline 'nope'" in result.output
