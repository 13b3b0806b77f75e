"""The benchmark: per-run metrics from the info stream, the run matrix, the report, the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.bench import (
    BenchConfig,
    BenchEnv,
    BenchResult,
    ControllerSpec,
    EpisodeRecorder,
    LatencyJudge,
    RunResult,
    RunSpec,
    execute,
    plan_runs,
    resolve_controllers,
    run_bench,
    run_episode,
)
from eval.cli import app
from eval.report import PRIMARY, analyse, results_document
from slo import default_spec
from slo.events import Outcome, empty_events

FAST = {"episode_hours": 0.05, "warmup_s": 60.0}
SPEC = default_spec()
SLOS = SPEC.engine_slos


def _tiny_policy(directory):
    """A tiny untrained PPO actor exported to the zoo format (contracts of the default env)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from envs.fleet_env import LLMFleetEnv
    from policies.export import export_checkpoint

    run = {
        "preset": "test",
        "seed": 0,
        "scenarios": ["steady"],
        "env_kwargs": FAST,
        "timesteps": 0,
        "metrics": {},
        "commit": None,
    }
    venv = VecNormalize(DummyVecEnv([lambda: LLMFleetEnv("steady", **FAST)]))
    model = PPO("MlpPolicy", venv, n_steps=64, seed=0, policy_kwargs={"net_arch": [8]})
    with torch.no_grad():  # a fresh head acts ~0: scale it so the policy moves knobs
        model.policy.action_net.weight.mul_(50.0)
    checkpoint = directory / "checkpoint"
    checkpoint.mkdir()
    model.save(checkpoint / "model.zip")
    venv.save(str(checkpoint / "vecnormalize.pkl"))
    (checkpoint / "run.json").write_text(json.dumps(run))
    return export_checkpoint(checkpoint, directory / "tiny.onnx").onnx_path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> BenchConfig:
    """A tiny policy and two baselines on one training and one held-out scenario, 2 seeds."""
    directory = tmp_path_factory.mktemp("bench")
    policy = _tiny_policy(directory)
    return BenchConfig(
        controllers=resolve_controllers([str(policy), "vllm-defaults", "static"]),
        scenarios=("steady", "mixed"),
        seeds=(0, 1),
        tuned_dir=directory / "tuned",  # empty: static falls back to its defaults, with a warning
        bootstrap_reps=300,
        **FAST,
    )


@pytest.fixture(scope="module")
def tiny_result(tiny_config) -> BenchResult:
    return run_bench(tiny_config, use_ray=False)


def _document(result: BenchResult) -> dict:
    document = results_document(result, analyse(result))
    del document["timing"]  # wall time: the only part allowed to differ
    return document


def test_every_run_is_measured_consistently(tiny_result) -> None:
    assert len(tiny_result.runs) == 3 * 2 * 2
    for run in tiny_result.runs:
        m = run.metrics
        assert m["steps"] == round(FAST["episode_hours"] * 3600 / 30)
        assert m["budget_spent_total"] == pytest.approx(sum(m["budget_spent"].values()))
        assert all(v >= 0 for v in m["budget_spent"].values())
        assert 0 <= m["goodput_rps"] <= m["served_rps"] and m["cost_gpu_hours"] > 0
        assert all(a is None or 0 <= a <= 1 for a in m["attainment"].values())
        if run.controller in ("vllm-defaults", "static"):
            assert m["action_smoothness"] == 0.0  # fixed knobs never move
    moving = [r for r in tiny_result.runs if r.controller == "tiny"]
    assert any(r.metrics["action_smoothness"] > 0 for r in moving)


def test_budget_spent_is_the_episode_burn_rate_times_its_share_of_the_period(tiny_result) -> None:
    """From the attainment: spent = (1 - good/total) / (1 - objective) x episode / period."""
    episode_s = FAST["episode_hours"] * 3600
    for run in tiny_result.runs:
        for slo in SLOS:
            attained = run.metrics["attainment"][slo.name]
            burn = 0.0 if attained is None else (1 - attained) / (1 - slo.objective)
            expected = burn * episode_s / SPEC.period_of(slo)
            assert run.metrics["budget_spent"][slo.name] == pytest.approx(expected, abs=1e-12)


def test_traces_end_where_the_metrics_do(tiny_result) -> None:
    traced = [r for r in tiny_result.runs if r.trace is not None]
    assert {(r.controller, r.scenario, r.seed) for r in traced} == {
        (c, s, 0) for c in ("tiny", "vllm-defaults", "static") for s in ("steady", "mixed")
    }
    for run in traced:
        trace = run.trace
        assert len(trace["hours"]) == run.metrics["steps"]
        assert trace["hours"][-1] == pytest.approx(FAST["episode_hours"])
        assert trace["gpu_hours"][-1] == pytest.approx(run.metrics["cost_gpu_hours"])
        assert trace["budget_spent_total"][-1] == pytest.approx(run.metrics[PRIMARY])
        assert np.asarray(trace["window_burn_rate"]).shape == (len(trace["hours"]), len(SLOS))


def test_the_same_seeds_give_identical_results(tiny_config, tiny_result) -> None:
    again = run_bench(tiny_config, use_ray=False)
    assert _document(again) == _document(tiny_result)


def test_ray_gives_the_serial_results(tiny_config, tiny_result) -> None:
    config = replace(tiny_config, scenarios=("mixed",))
    runs, _, _ = plan_runs(config)
    parallel = execute(runs, use_ray=True, num_cpus=2)
    serial = [r for r in tiny_result.runs if r.scenario == "mixed"]
    assert [(r.controller, r.seed, r.metrics, r.trace) for r in parallel] == [
        (r.controller, r.seed, r.metrics, r.trace) for r in serial
    ]


def test_missing_tuned_parameters_fall_back_to_defaults_with_a_warning(tiny_result) -> None:
    assert tiny_result.tuned_params == {"static": {"steady": None, "mixed": None}}
    assert any("static on mixed: no tuned parameters" in w for w in tiny_result.warnings)


def test_tuned_parameters_are_loaded(tmp_path) -> None:
    params = {"cheap_tier_share": 0.4, "offload_fraction": 0.0, "admission_limit": 1.5}
    path = tmp_path / "static" / "steady.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"baseline": "static", "scenario": "steady", "best_params": params}))
    config = BenchConfig(
        resolve_controllers(["static"]), ("steady",), (0,), tuned_dir=tmp_path, **FAST
    )
    runs, used, warnings = plan_runs(config)
    assert runs[0].params == params and used == {"static": {"steady": params}} and not warnings
    path.write_text(json.dumps({"baseline": "pid", "scenario": "steady", "best_params": {}}))
    with pytest.raises(ValueError, match="holds pid tuned on steady"):
        plan_runs(config)


def test_report_files_and_numbers(tiny_config, tiny_result, tmp_path) -> None:
    from eval.report import write_report

    report = write_report(tiny_result, tmp_path)
    text = report.read_text()
    document = json.loads((tmp_path / "results.json").read_text())
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "profiles.png",
        "cost_vs_budget.png",
        *(f"{kind}_{s}.png" for kind in ("burn", "budget", "knobs") for s in ("steady", "mixed")),
    }
    assert len(document["runs"]) == 12 and len(document["traces"]) == 6
    headline = document["analysis"]["headline"]["tiny"]["best_baseline"]
    row = headline["scenarios"]["mixed"]
    assert row["best_baseline"] == document["analysis"]["scenarios"]["mixed"]["best_baseline"]
    assert row["pass"] == (
        row["spent_difference"]["high"] < 0 and row["cost_difference"]["low"] <= 0
    )
    assert headline["pass"] == (headline["passed"] / headline["total"] >= 0.7)
    headings = ("## What this run can show", "## Headline: tiny", "## Aggregates", "## Method")
    for heading in (*headings, "### mixed (held-out)"):
        assert heading in text
    assert "static on mixed: no tuned parameters" in text


def _metrics(spent: float, cost: float) -> dict:
    names = [s.name for s in SLOS]
    return {
        PRIMARY: spent,
        "budget_spent": dict.fromkeys(names, spent / len(names)),
        "attainment": dict.fromkeys(names, 0.99),
        "cost_gpu_hours": cost,
        "goodput_rps": 10.0,
        "page_alerts": 0,
        "exhaustions": 0,
        "action_smoothness": 0.0,
    }


@pytest.mark.parametrize(
    ("extra_cost", "passes", "eligible", "eligible_passes"),
    [
        (lambda seed: -0.7, True, "pid", True),  # cheaper than every baseline: all eligible
        (lambda seed: -0.25, True, "vllm-defaults", False),  # only vllm-defaults is no dearer
        (lambda seed: 0.001 + 0.05 * (-1) ** seed, True, "pid", True),  # dearer within noise
        (lambda seed: 0.01, False, "pid", False),  # dearer on every seed
    ],
)
def test_headline_beats_the_lowest_spending_baseline_at_no_higher_cost(
    extra_cost, passes, eligible, eligible_passes
) -> None:
    """Synthetic scores: on every seed the policy spends 0.5 less than the best baseline (pid,
    1 GPU-h), which itself spends less than vllm-defaults (0.5 GPU-h)."""
    policy = ControllerSpec("ppo", "ppo.onnx")
    config = BenchConfig(
        controllers=(policy, ControllerSpec("vllm-defaults"), ControllerSpec("pid")),
        scenarios=("mixed",),
        seeds=tuple(range(6)),
        bootstrap_reps=500,
    )
    spent = {"ppo": 1.0, "pid": 1.5, "vllm-defaults": 3.0}
    cost = {"pid": lambda seed: 1.0, "vllm-defaults": lambda seed: 0.5}
    cost["ppo"] = lambda seed: 1.0 + extra_cost(seed)
    runs = [
        RunResult(c, "mixed", seed, _metrics(spent[c] + 0.1 * seed, cost[c](seed)))
        for c in spent
        for seed in config.seeds
    ]
    headline = analyse(BenchResult(config, runs))["headline"]["ppo"]
    verdict = headline["best_baseline"]
    row = verdict["scenarios"]["mixed"]
    assert row["best_baseline"] == "pid" and row["spends_less"]
    assert row["spent_difference"]["point"] == pytest.approx(-0.5)
    assert row["pass"] == passes and verdict["pass"] == passes
    # The variant: the lowest-spending baseline among those no dearer than the policy.
    variant = headline["cost_eligible_baseline"]["scenarios"]["mixed"]
    assert variant["best_baseline"] == eligible and variant["pass"] == eligible_passes


def test_latency_judge_counts_requests_within_every_per_request_latency_slo() -> None:
    events = empty_events(4)
    events["outcome"] = [Outcome.SERVED, Outcome.SERVED, Outcome.SERVED, Outcome.REJECTED]
    events["ttft_s"] = [0.5, 2.0, 0.5, np.nan]  # the second misses TTFT 1 s
    events["output_tokens"] = [10, 10, 10, 0]
    events["e2e_s"] = [1.0, 3.0, 5.0, np.nan]  # the third: 0.5 s per token, misses 0.2 s
    assert LatencyJudge(SPEC).good_requests(events) == (1, 3)


def test_pages_and_exhaustions_are_counted_at_their_onsets() -> None:
    env = BenchEnv("steady", **FAST)
    _, info = env.reset(seed=0)
    start = {**info, "alerts": dict.fromkeys(env.slo_names, "none")}
    start["budget_remaining"] = dict.fromkeys(env.slo_names, 0.5)
    recorder = EpisodeRecorder(env, start)
    slo = env.slo_names[0]
    for alert, remaining in [("page", 0.1), ("page", -0.1), ("none", -0.2), ("page", 0.3)]:
        step = {
            **info,
            "alerts": {**start["alerts"], slo: alert},
            "budget_remaining": {**start["budget_remaining"], slo: remaining},
        }
        recorder.record(np.zeros(7), 0.0, step)
    metrics = recorder.metrics()
    assert metrics["page_alerts"] == 2 and metrics["page_alert_steps"] == 3
    assert metrics["exhaustions"] == 1
    assert metrics["budget_remaining_drop"][slo] == pytest.approx(0.5 - 0.3)


def test_run_episode_measures_one_seed_deterministically() -> None:
    run = RunSpec(ControllerSpec("reactive"), "flash-crowd", 3, None, **FAST)
    assert run_episode(run) == run_episode(run)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "nope"], "unknown controller 'nope'"),
        (["--policies", "missing.onnx"], "missing.onnx: ONNX file not found"),
        (["--scenarios", "nope"], "unknown scenario 'nope'"),
        (["--seeds", "1001"], "evaluation seeds must be in"),
    ],
)
def test_cli_refuses_bad_input_clearly(args, message, tmp_path) -> None:
    result = CliRunner().invoke(app, ["bench", "--no-ray", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_writes_the_report_and_says_where(tmp_path) -> None:
    args = ["bench", "--policies", "vllm-defaults", "--scenarios", "steady", "--seeds", "1"]
    args += ["--episode-hours", "0.05", "--warmup-s", "60", "--no-ray", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'report.md'}" in result.output
    text = (tmp_path / "report.md").read_text()
    assert "No held-out scenario was benchmarked" in text
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["scenario"] == "steady"


def test_a_policy_benchmarked_alone_gets_its_report(tiny_config, tiny_result, tmp_path) -> None:
    from eval.report import write_report

    (policy,) = [c for c in tiny_config.controllers if c.policy_path is not None]
    alone = BenchResult(
        replace(tiny_config, controllers=(policy,)),
        [r for r in tiny_result.runs if r.controller == policy.name],
    )
    text = write_report(alone, tmp_path).read_text()
    assert "No baseline was benchmarked, so the headline test" in text
    assert "1 cells run (0 with a rival to judge against)" in text
    assert "### mixed (held-out)" in text and (tmp_path / "cost_vs_budget.png").exists()
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["analysis"]["scenarios"]["mixed"]["best_baseline"] is None
