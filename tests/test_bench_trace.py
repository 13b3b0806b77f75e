"""``bench --trace``: controllers judged on a user's own trace replayed on a fleet, at the load
the trace carries or at a stated one, in a scenario no suite, training set or group contains;
bad traces refused naming file and row, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.paths import EXAMPLE_FLEETS_DIR
from envs.scenario_names import HELD_OUT_SCENARIO_NAMES, SCENARIO_NAMES
from envs.scenarios import (
    REFERENCE_FLEET,
    TRAINING_SCENARIOS,
    TraceTraffic,
    get_scenario,
)
from envs.sim.capacity import CACHE_ENV
from envs.sim.workload import TraceReplay
from eval.bench import (
    DEFAULT_SCENARIOS,
    SCENARIO_GROUPS,
    resolve_controllers,
    select_scenarios,
    user_trace_scenario,
)
from eval.cli import app
from eval.report import scenario_group

runner = CliRunner()
COLUMNS = ("ts_ms", "input_len", "output_len")
SINGLE_TIER = str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One capacity cache for the module: each fleet and trace is measured once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def capacity_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(shared_cache))
    return shared_cache


def write_trace(path: Path, requests: int = 600, gap_ms: float = 200.0) -> Path:
    """A trace in milliseconds with the columns :data:`COLUMNS`: Poisson arrivals (5 req/s at
    the default gap), log-normal lengths."""
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(gap_ms, requests))
    prompts = rng.lognormal(6.0, 0.8, requests).astype(int) + 1
    outputs = rng.lognormal(5.0, 0.6, requests).astype(int) + 1
    rows = "".join(f"{t:.1f},{p},{o}\n" for t, p, o in zip(times, prompts, outputs, strict=True))
    path.write_text(",".join(COLUMNS) + "\n" + rows)
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("traces") / "mine.csv")


def traffic(trace: Path, load: float | None = None) -> TraceTraffic:
    return TraceTraffic(str(trace), COLUMNS, 0.001, load)


def test_trace_scenario_is_in_no_suite_training_set_or_group(trace):
    name = user_trace_scenario(traffic(trace))
    assert name == "trace-mine" and get_scenario(name).user_trace
    for suite in (SCENARIO_NAMES, HELD_OUT_SCENARIO_NAMES, TRAINING_SCENARIOS, DEFAULT_SCENARIOS):
        assert name not in suite
    assert all(name not in scenarios for scenarios in SCENARIO_GROUPS.values())
    assert name not in select_scenarios(None)[0]
    assert scenario_group(name) == "user_trace"


@pytest.mark.parametrize("load", [None, 0.5])
def test_trace_replays_at_the_load_it_carries_or_the_one_stated(trace, load):
    own_rate = TraceReplay(trace, 0.001, columns=COLUMNS).mean_rate
    replayed = traffic(trace, load)
    setup = replayed(np.random.default_rng(0), 600.0, REFERENCE_FLEET)
    capacity = replayed.capacity_rps(REFERENCE_FLEET)
    # Measured for the trace's lengths (shorter than Azure conversations): not the fleet's 15.2.
    assert capacity != pytest.approx(REFERENCE_FLEET.capacity_rps, rel=0.05)
    expected = own_rate if load is None else load * capacity
    assert setup.workload.mean_rate == pytest.approx(expected)
    assert setup.parameters["load"] == pytest.approx(expected / capacity)


def test_each_seed_replays_its_own_stretch_of_the_trace(trace):
    replayed = traffic(trace)
    first = [
        replayed(np.random.default_rng(seed), 0.0, REFERENCE_FLEET).workload.generate(
            np.random.default_rng(0), 0.0, 10.0
        )
        for seed in (0, 1)
    ]
    assert first[0]["prompt_tokens"].tolist() != first[1]["prompt_tokens"].tolist()
    lengths = TraceReplay(trace, columns=COLUMNS).prompt_tokens
    assert set(first[0]["prompt_tokens"].tolist()) <= set(lengths.tolist())


def test_a_reference_fleet_policy_may_govern_the_trace_on_its_fleet(trace):
    name = user_trace_scenario(traffic(trace))
    (policy,) = resolve_controllers(["ppo-standard"])
    assert policy.unfit_reason(name) is None


def test_bench_on_a_fleet_file_with_a_trace_judges_controllers_on_it(tmp_path, trace):
    out = tmp_path / "report"
    args = ["bench", "--fleet", SINGLE_TIER, "--trace", str(trace), "--load", "0.8"]
    args += ["--trace-columns", ",".join(COLUMNS), "--time-scale", "0.001"]
    args += ["--policies", "static,vllm-defaults", "--seeds", "2", "--episode-hours", "0.1"]
    args += ["--no-ray", "--no-tune", "--bootstrap-reps", "200", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["scenarios"] == ["trace-mine"]
    assert document["config"]["trace"]["load"] == 0.8
    assert list(document["analysis"]["groups"]) == ["user_trace"]
    runs = document["runs"]
    assert {(r["controller"], r["seed"]) for r in runs} == {
        (c, s) for c in ("static", "vllm-defaults") for s in (0, 1)
    }
    assert all(r["served_rps"] > 0 for r in runs)
    # Two seeds replay two stretches of the trace: the runs are not copies of each other.
    static = [r["served_rps"] for r in runs if r["controller"] == "static"]
    assert static[0] != static[1]
    report = (out / "report.md").read_text()
    assert "trace-mine (user-trace)" in report and "at load 0.80 (the load asked for)" in report
    assert "static on trace-mine: not tuned on this fleet" in report


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ts,input_len,output_len\n0,1,1\n", "missing column 'ts_ms'"),
        ("ts_ms,input_len,output_len\n0,10,5\n5,ten,5\n", "row 2 (line 3), column 'input_len'"),
        ("ts_ms,input_len,output_len\n0,10,5\nnoon,10,5\n", "row 2 (line 3), column 'ts_ms'"),
        ("ts_ms,input_len,output_len\n0,10,5\n9,10\n", "row 2 (line 3), column 'output_len'"),
    ],
)
def test_bad_trace_is_refused_naming_file_and_row_and_nothing_is_written(
    tmp_path, monkeypatch, text, message
):
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    out = tmp_path / "report"
    args = ["bench", "--trace", str(bad), "--trace-columns", ",".join(COLUMNS)]
    result = runner.invoke(app, [*args, "--policies", "static", "--no-ray", "--out", str(out)])
    assert result.exit_code == 2
    assert str(bad) in result.stderr and message in result.stderr
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--load", "0.8"], "--load sets the load of --trace"),
        (["--trace", "{trace}", "--trace-columns", "ts_ms,input_len"], "--trace-columns"),
        (["--trace", "{trace}", "--load", "0"], "must be above 0, got 0"),
        (["--trace", "{trace}", "--time-scale", "-1"], "must be above 0, got -1"),
    ],
)
def test_bench_trace_options_that_do_not_fit_are_refused(tmp_path, trace, options, message):
    out = tmp_path / "report"
    options = [o.format(trace=trace) for o in options]
    result = runner.invoke(app, ["bench", *options, "--no-ray", "--out", str(out)])
    assert result.exit_code == 2 and message in result.stderr
    assert not out.exists()


def test_replay_starts_at_the_fraction_of_the_trace_asked_for(trace):
    whole = TraceReplay(trace, 0.001, columns=COLUMNS)
    half = TraceReplay(trace, 0.001, columns=COLUMNS, start=0.5)
    first = np.searchsorted(whole.times, 0.5 * whole.cycle_s)
    _, prompts, _ = half.replay(np.random.default_rng(0), 0.0, 1e-9 + whole.times[first + 3])
    assert prompts[:3].tolist() == whole.prompt_tokens[first : first + 3].tolist()
    with pytest.raises(ValueError, match="start must be in"):
        TraceReplay(trace, columns=COLUMNS, start=1.0)
