"""Baselines tuned on demand by the benchmark: tuned with progress the first time, read from
the cache (keyed by the fleet's contract, the trace and the budget) afterwards, never silently
untuned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agents import tuning
from agents.tuning import candidate_params, tune
from envs.paths import EXAMPLE_FLEETS_DIR
from envs.scenarios import TraceTraffic, register_trace_scenario
from envs.sim.capacity import CACHE_ENV
from eval.bench import (
    BenchConfig,
    candidates_on_ray,
    fleet_contract,
    plan_runs,
    ray_session,
    resolve_controllers,
    user_trace_scenario,
)
from eval.cli import app
from eval.on_demand import TuningBudget, tuning_cache_path

SINGLE_TIER = str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")
BUDGET = TuningBudget(seeds=1, episode_hours=0.05, warmup_s=60.0)


@pytest.fixture(scope="module")
def capacities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One capacity cache for the module: the fleet is measured once."""
    return tmp_path_factory.mktemp("capacity")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, capacities: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test tunes into its own cache folder, sharing the module's capacities."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "capacity").symlink_to(capacities)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def tunings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (baseline, scenario) pairs actually tuned (not read from the cache)."""
    tuned: list[tuple[str, str]] = []
    real = tuning.tune

    def counting(baseline: str, scenario: str, *args, **kwargs):
        tuned.append((baseline, scenario))
        return real(baseline, scenario, *args, **kwargs)

    monkeypatch.setattr("eval.on_demand.tune", counting)
    return tuned


def _config(**kwargs) -> BenchConfig:
    return BenchConfig(
        resolve_controllers(["pid", "vllm-defaults"]),
        ("steady",),
        seeds=(0,),
        episode_hours=0.05,
        warmup_s=60.0,
        tuned_dir=None,
        fleet=SINGLE_TIER,
        **kwargs,
    )


def test_untuned_baselines_are_tuned_once_with_progress_then_read_from_the_cache(tunings):
    ticks: list[tuple[str, int, int]] = []
    runs, params, warnings = plan_runs(_config(tuning=BUDGET), lambda *t: ticks.append(t))
    assert tunings == [("pid", "steady")]  # vllm-defaults has nothing to tune
    path = tuning_cache_path("pid", "steady", fleet_contract("steady", SINGLE_TIER), BUDGET)
    saved = json.loads(path.read_text())
    assert saved["fleet"] == SINGLE_TIER and saved["seeds"] == [1000]
    assert params["pid"]["steady"] == saved["best_params"] == runs[0].params
    assert ticks[-1] == ("tuning pid on steady", len(saved["candidates"]), len(saved["candidates"]))
    assert (
        len(warnings) == 1 and "tuned now on this fleet" in warnings[0] and str(path) in warnings[0]
    )
    _, again, warnings = plan_runs(_config(tuning=BUDGET))
    assert tunings == [("pid", "steady")] and again == params
    assert "read from" in warnings[0]


def test_without_tuning_the_defaults_are_said(tunings):
    _, params, warnings = plan_runs(_config())
    assert tunings == [] and params["pid"]["steady"] is None
    assert "not tuned on this fleet, default parameters" in warnings[0]


def test_the_cache_key_follows_the_budget_and_the_traces_content(tmp_path):
    contract = fleet_contract("steady", None)
    paths = {tuning_cache_path("pid", "steady", contract, b) for b in (BUDGET, TuningBudget())}
    assert len(paths) == 2
    trace = tmp_path / "mine.csv"
    keys = []
    for text in ("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,5\n1,20,5\n", "...\n0,10,5\n"):
        trace.write_text(text.replace("...", "TIMESTAMP,ContextTokens,GeneratedTokens"))
        # Registered without measuring the fleet's capacity for it (the key does not need it).
        name = register_trace_scenario(TraceTraffic(str(trace)))
        keys.append(tuning_cache_path("pid", name, contract, BUDGET))
    assert keys[0] != keys[1]


def test_bench_cli_tunes_what_it_lacks_and_reports_it(tmp_path, tunings):
    out = tmp_path / "report"
    args = ["bench", "--fleet", SINGLE_TIER, "--policies", "pid", "--scenarios", "steady"]
    args += ["--seeds", "1", "--episode-hours", "0.05", "--warmup-s", "60", "--quick"]
    result = CliRunner().invoke(app, [*args, "--no-ray", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert tunings == [("pid", "steady")]
    document = json.loads((out / "results.json").read_text())
    assert document["tuned_params"]["pid"]["steady"] is not None
    # --quick tunes a spread of each grid, and says so.
    assert (
        "pid on steady: quick-tuned now on this fleet (8 of 12 candidates"
        in (out / "report.md").read_text()
    )


@pytest.mark.parametrize(("baseline", "spread"), [("static", 8), ("pid", 5), ("sre-policy", 16)])
def test_a_quick_spread_spans_the_grid(baseline, spread):
    grid = candidate_params(baseline)
    picked = candidate_params(baseline, spread=spread)
    assert len(picked) == min(spread, len(grid)) and picked[0] == grid[0]
    assert picked[-1] == grid[-1] and all(p in grid for p in picked)
    # Every parameter the grid varies takes more than one value among the picks.
    for name in grid[0]:
        if len({p[name] for p in grid}) > 1:
            assert len({p[name] for p in picked}) > 1, name


def test_quick_tuning_is_cached_apart_and_reported_as_quick_tuned(tunings):
    quick = TuningBudget(seeds=1, episode_hours=0.05, warmup_s=60.0, candidates=3)
    contract = fleet_contract("steady", SINGLE_TIER)
    assert tuning_cache_path("pid", "steady", contract, quick) != tuning_cache_path(
        "pid", "steady", contract, BUDGET
    )
    _, params, warnings = plan_runs(_config(tuning=quick))
    saved = json.loads(tuning_cache_path("pid", "steady", contract, quick).read_text())
    grid = candidate_params("pid")
    assert [c["params"] for c in saved["candidates"]] == [grid[0], grid[6], grid[11]]
    assert params["pid"]["steady"] == saved["best_params"]
    assert "pid on steady: quick-tuned now on this fleet (3 of 12 candidates" in warnings[0]
    _, _, warnings = plan_runs(_config(tuning=quick))
    assert tunings == [("pid", "steady")] and "quick-tuned on this fleet earlier" in warnings[0]


@pytest.mark.slow
def test_tuning_on_ray_gives_the_serial_result(tmp_path):
    # On a user's trace: Ray's workers learn its scenario from the candidates they run.
    rng = np.random.default_rng(3)
    rows = "".join(
        f"{t:.3f},{p},{o}\n"
        for t, p, o in zip(
            np.cumsum(rng.exponential(0.3, 400)),
            rng.integers(50, 900, 400),
            rng.integers(5, 300, 400),
            strict=True,
        )
    )
    trace = tmp_path / "mine.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    traffic = TraceTraffic(str(trace))
    scenario = user_trace_scenario(traffic, SINGLE_TIER)
    kwargs = {"episode_hours": 0.05, "warmup_s": 60.0, "fleet": SINGLE_TIER, "spread": 3}
    serial = tune("static", scenario, (1000, 1001), **kwargs)
    ticks: list[tuple[int, int]] = []
    with ray_session(num_cpus=2):
        parallel = tune(
            "static",
            scenario,
            (1000, 1001),
            progress=lambda *t: ticks.append(t),
            map_candidates=candidates_on_ray(traffic),
            **kwargs,
        )
    assert parallel.to_dict() == serial.to_dict()
    assert len({c[1].mean_return for c in serial.candidates}) > 1  # the comparison is not vacuous
    assert ticks[-1] == (6, 6)
