"""Workloads: arrival processes, fitted lengths, trace replay, tenants and difficulty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.paths import reference_data_dir
from envs.sim.workload import (
    ARRIVAL_DTYPE,
    LENGTH_MODELS,
    LENGTHS_PATH,
    MMPP,
    Diurnal,
    FlashCrowd,
    GammaBursty,
    MixedWorkload,
    Poisson,
    RateCurve,
    TraceReplay,
    Workload,
    make_workload,
)

TRACES = reference_data_dir() / "traces"
needs_traces = pytest.mark.skipif(
    not TRACES.is_dir(), reason=f"Azure traces not found at {TRACES} (set BUDGETPILOT_DATA)"
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def in_chunks(process, generator, t_end: float, chunk: float) -> np.ndarray:
    edges = np.arange(0.0, t_end + chunk / 2, chunk)
    return np.concatenate(
        [process.arrivals(generator, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )


# --- lengths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prompt_mean", "output_mean"), [("azure-conv", 1155, 211), ("azure-code", 2048, 28)]
)
def test_length_models_reproduce_the_trace_facts(name, prompt_mean, output_mean) -> None:
    prompt, output = LENGTH_MODELS[name].sample(rng(), 400_000)
    facts = json.loads(LENGTHS_PATH.read_text())[name]["trace_facts"]
    assert prompt.dtype == output.dtype == np.int32 and prompt.min() >= 1 and output.min() >= 1
    assert prompt.mean() == pytest.approx(prompt_mean, rel=0.02)
    assert output.mean() == pytest.approx(output_mean, rel=0.03)
    assert np.quantile(prompt, 0.99) == pytest.approx(facts["prompt_p99"], rel=0.03)
    assert np.quantile(output, 0.99) == pytest.approx(facts["output_p99"], rel=0.03)


def test_conv_lengths_match_the_readme_tail() -> None:
    prompt, output = LENGTH_MODELS["azure-conv"].sample(rng(), 400_000)
    assert np.quantile(prompt, 0.99) == pytest.approx(4100, rel=0.03)
    assert np.quantile(output, 0.99) == pytest.approx(600, rel=0.03)


# --- arrival processes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "process",
    [Poisson(50.0), GammaBursty(50.0, cv=4.0), MMPP([20.0, 80.0], mean_dwell_s=5.0)],
    ids=["poisson", "gamma", "mmpp"],
)
def test_long_run_rate_matches_the_mean_rate(process) -> None:
    times = process.arrivals(rng(), 0.0, 4000.0)
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 4000.0
    assert len(times) / 4000.0 == pytest.approx(process.mean_rate, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_gaps_have_the_requested_cv_across_call_boundaries(cv: float) -> None:
    # Many short calls: a process that restarted at every call would distort the gaps.
    times = in_chunks(GammaBursty(20.0, cv=cv), rng(1), 2000.0, chunk=0.1)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


@pytest.mark.parametrize(
    "make", [lambda: Poisson(30.0), lambda: MMPP([10.0, 50.0], 2.0)], ids=["poisson", "mmpp"]
)
def test_two_half_intervals_continue_the_same_process(make) -> None:
    whole = [len(make().arrivals(rng(s), 0.0, 200.0)) for s in range(30)]
    halves = [len(in_chunks(make(), rng(100 + s), 200.0, chunk=100.0)) for s in range(30)]
    assert np.mean(halves) == pytest.approx(np.mean(whole), rel=0.05)
    assert np.std(halves) == pytest.approx(np.std(whole), rel=0.5)


def test_same_seed_same_requests() -> None:
    a = make_workload("bursty", 40.0, tenants=3).generate(rng(7), 0.0, 100.0)
    b = make_workload("bursty", 40.0, tenants=3).generate(rng(7), 0.0, 100.0)
    c = make_workload("bursty", 40.0, tenants=3).generate(rng(8), 0.0, 100.0)
    assert a.dtype == ARRIVAL_DTYPE and np.array_equal(a, b) and not np.array_equal(a, c)


def test_flash_crowd_raises_the_rate_inside_its_window() -> None:
    process = Poisson(20.0, [FlashCrowd(start_s=100.0, duration_s=50.0, multiplier=5.0)])
    times = in_chunks(process, rng(), 300.0, chunk=7.0)
    inside = np.count_nonzero((times >= 100) & (times < 150)) / 50.0
    outside = np.count_nonzero((times < 100) | (times >= 150)) / 250.0
    assert outside == pytest.approx(20.0, rel=0.1)
    assert inside == pytest.approx(100.0, rel=0.1)


def test_diurnal_modulation_follows_the_sine() -> None:
    process = Poisson(50.0, [Diurnal(period_s=400.0, amplitude=0.8)])
    times = process.arrivals(rng(), 0.0, 4000.0)
    phase = (times % 400.0) / 400.0
    peak = np.count_nonzero((phase > 0.15) & (phase < 0.35))  # sin near +1
    trough = np.count_nonzero((phase > 0.65) & (phase < 0.85))  # sin near -1
    assert peak / trough > 4.0
    assert len(times) / 4000.0 == pytest.approx(50.0, rel=0.05)


# A measured curve: blocks of 60 s at these rates (mean 15), one of them silent.
CURVE_RATES = [5.0, 20.0, 0.0, 35.0]


@pytest.mark.parametrize("start_s", [0.0, 90.0])
def test_rate_curve_arrivals_follow_the_curve_and_repeat(start_s: float) -> None:
    """Three cycles drawn in 7-second calls (block edges fall inside calls): each block's count
    within 4 Poisson standard deviations of its rate x 60 s (so ~4% at 35 requests/s, while a
    neighbouring block's rate is off by 15 standard deviations or more), the silent block
    empty, the time before ``start_s`` the curve's last blocks."""
    process = Poisson(30.0, [RateCurve(60.0, CURVE_RATES, start_s=start_s)])
    times = in_chunks(process, rng(3), 720.0, chunk=7.0)
    # Whole blocks in [0, 720): the one before start_s (if any) is the cycle's last block.
    k = np.arange(-(start_s // 60.0), (720.0 - start_s) // 60.0 + 1)
    counts = np.histogram(times, bins=start_s + 60.0 * k)[0]
    blocks = k[:-1].astype(int) % 4
    expected = 60.0 * 30.0 * np.array(CURVE_RATES)[blocks] / 15.0
    assert np.all(np.abs(counts - expected) <= 4 * np.sqrt(expected)), (counts, expected)
    assert counts[blocks == 2].sum() == 0
    assert len(times) / 720.0 == pytest.approx(30.0, rel=0.05)


def test_rate_curve_same_seed_same_arrivals() -> None:
    def draw(seed: int) -> np.ndarray:
        curve = RateCurve(60.0, CURVE_RATES)
        return make_workload("bursty", 15.0, cv=2.0, rate_curve=curve).generate(
            rng(seed), 0.0, 300.0
        )

    a, b, c = draw(7), draw(7), draw(8)
    assert len(a) > 1000 and np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, [1.0, 2.0]), "step_s must be finite and > 0"),
        ((60.0, [1.0]), "at least two rates"),
        ((60.0, [1.0, -1.0]), "finite, >= 0 and not all 0"),
        ((60.0, [1.0, float("inf")]), "finite, >= 0 and not all 0"),
        ((60.0, [0.0, 0.0]), "finite, >= 0 and not all 0"),
    ],
)
def test_bad_rate_curves_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateCurve(*args)


def test_rate_scale_changes_the_rate_from_the_next_call() -> None:
    workload = make_workload("poisson", 100.0)
    g = rng()
    base = len(workload.generate(g, 0.0, 50.0))
    workload.rate_scale = 2.0
    doubled = len(workload.generate(g, 50.0, 100.0))
    workload.rate_scale = 0.0
    assert len(workload.generate(g, 100.0, 150.0)) == 0
    assert doubled / base == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError, match="rate_scale"):
        workload.rate_scale = -1.0


# --- workloads ----------------------------------------------------------------------------------


def test_tenant_shares_and_difficulty_distribution() -> None:
    workload = make_workload("poisson", 1000.0, tenant_shares=[0.6, 0.3, 0.1], difficulty=(2, 6))
    requests = workload.generate(rng(), 0.0, 100.0)
    shares = np.bincount(requests["tenant"], minlength=3) / len(requests)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.01)
    d = requests["difficulty"]
    assert d.min() >= 0 and d.max() <= 1 and d.mean() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("chunk", [7.0, 60.0, 600.0])
def test_a_tenant_curve_moves_its_share_of_the_traffic(chunk: float) -> None:
    """Shares 2:1, the second tenant's curve 1 then 5 in 60-s blocks (multipliers 1/3 and 5/3):
    its share is 1/7 then 5/11 of a steady 30 requests/s, whether calls cut blocks (7 s), tile
    them (60 s) or span ten (600 s). Each block's count within 4 binomial standard deviations
    (1,800 arrivals a block: 59 and 85 requests, 23% and 10%); the plain shares (1/3) are off
    by 340 and 220."""
    curves = [None, RateCurve(60.0, [1.0, 5.0])]
    workload = make_workload("poisson", 30.0, tenant_shares=[2.0, 1.0], tenant_curves=curves)
    g, edges = rng(2), np.arange(0.0, 600.0 + chunk / 2, chunk)
    requests = np.concatenate(
        [workload.generate(g, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )
    block = (requests["t_arrival"] // 60.0).astype(int)
    for parity, share in ((0, 1 / 7), (1, 5 / 11)):
        for b in range(parity, 10, 2):
            n = np.count_nonzero(block == b)
            mine = np.count_nonzero((block == b) & (requests["tenant"] == 1))
            assert abs(mine - n * share) < 4 * np.sqrt(n * share * (1 - share)), (b, mine, n)


def test_tenants_keep_their_shares_where_every_curve_is_silent() -> None:
    curves = [RateCurve(60.0, [0.0, 1.0]), RateCurve(60.0, [0.0, 1.0])]
    workload = make_workload("poisson", 50.0, tenant_shares=[3.0, 1.0], tenant_curves=curves)
    requests = workload.generate(rng(), 0.0, 60.0)
    assert np.count_nonzero(requests["tenant"] == 0) / len(requests) == pytest.approx(
        0.75, abs=0.05
    )


def test_tenant_curves_change_only_whose_requests_are_whose() -> None:
    """Same seed with and without a tenant curve: the same times, lengths and difficulty (the
    tenant draw uses the same random numbers), only the tenants differ."""
    curves = [RateCurve(60.0, [1.0, 9.0]), None]
    plain = make_workload("poisson", 40.0, tenant_shares=[1.0, 1.0]).generate(rng(), 0.0, 120.0)
    curved = make_workload(
        "poisson", 40.0, tenant_shares=[1.0, 1.0], tenant_curves=curves
    ).generate(rng(), 0.0, 120.0)
    for field in ("t_arrival", "prompt_tokens", "output_tokens", "difficulty"):
        assert np.array_equal(plain[field], curved[field]), field
    assert not np.array_equal(plain["tenant"], curved["tenant"])


def test_mixed_workload_merges_tenants_in_time_order() -> None:
    quiet = make_workload("poisson", 10.0)
    noisy = make_workload("flash-crowd", 10.0, flash_start_s=0.0, flash_multiplier=10.0)
    mixed = MixedWorkload([(3, quiet), (7, noisy)])
    requests = mixed.generate(rng(), 0.0, 60.0)
    assert np.all(np.diff(requests["t_arrival"]) >= 0)
    counts = {t: np.count_nonzero(requests["tenant"] == t) for t in (3, 7)}
    assert set(np.unique(requests["tenant"])) == {3, 7} and counts[7] > 5 * counts[3]
    assert mixed.mean_rate == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "zipf", "rate": 1.0}, "unknown workload 'zipf'; known: poisson"),
        ({"name": "poisson", "rate": None}, "needs rate > 0"),
        ({"name": "trace"}, "needs trace=PATH"),
        ({"name": "poisson", "rate": 1.0, "lengths": "x"}, "unknown length model 'x'"),
        ({"name": "poisson", "rate": 1.0, "tenants": 2, "tenant_shares": [1, 2, 3]}, "3 entries"),
        (
            {"name": "trace", "trace": "t.csv", "rate_curve": RateCurve(1.0, [1.0, 2.0])},
            "replays a trace's own rate: no rate_curve",
        ),
        (
            {"name": "trace", "trace": "t.csv", "tenant_curves": [RateCurve(1.0, [1.0, 2.0])]},
            "replays a trace's own rate: no tenant_curves",
        ),
        (
            {"name": "poisson", "rate": 1.0, "tenants": 2, "tenant_curves": [None]},
            "tenant_curves has 1 entries for 2 tenants",
        ),
    ],
)
def test_make_workload_errors_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_workload(**kwargs)


def test_workload_needs_lengths_unless_replaying() -> None:
    with pytest.raises(ValueError, match="TraceReplay"):
        Workload(Poisson(1.0), None)


# --- trace replay -------------------------------------------------------------------------------

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(header + body)
    return path


def test_replay_returns_the_trace_and_loops(tmp_path: Path) -> None:
    path = write(tmp_path, "0.0,100,10\n1.0,200,20\n3.0,300,30\n")
    workload = Workload(TraceReplay(path, time_scale=2.0))  # cycle = (3 + 1.5 mean gap) * 2 = 9 s
    first = workload.generate(rng(), 0.0, 9.0)
    np.testing.assert_allclose(first["t_arrival"], [0.0, 2.0, 6.0])
    np.testing.assert_array_equal(first["prompt_tokens"], [100, 200, 300])
    np.testing.assert_array_equal(first["output_tokens"], [10, 20, 30])
    second = workload.generate(rng(), 9.0, 16.0)
    np.testing.assert_allclose(second["t_arrival"], [9.0, 11.0, 15.0])


def test_replay_without_loop_stops(tmp_path: Path) -> None:
    replay = TraceReplay(write(tmp_path, "0,1,1\n1,1,1\n"), loop=False)
    assert len(replay.arrivals(rng(), 0.0, 10.0)) == 2
    assert len(replay.arrivals(rng(), 10.0, 100.0)) == 0


def test_replay_parses_azure_date_times(tmp_path: Path) -> None:
    path = write(tmp_path, "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,3,1\n")
    np.testing.assert_allclose(TraceReplay(path).times, [0.0, 4.314579], rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        ("0,1,1\n", "TIMESTAMP,ContextTokens\n", "missing column 'GeneratedTokens'"),
        ("0,1,1\nyesterday,1,1\n", HEADER, r"row 2 \(line 3\), column 'TIMESTAMP': not a time"),
        ("0,1,1\n1,1,1\n2,-5,1\n", HEADER, r"row 3 \(line 4\), column 'ContextTokens': negative"),
        ("0,1,1\n1,1,x\n", HEADER, r"row 2 \(line 3\), column 'GeneratedTokens': not an integer"),
        ("0,1,1\n5,1,1\n4,1,1\n", HEADER, r"row 3 \(line 4\), column 'TIMESTAMP': time earlier"),
        ("0,1,1\n1,1\n", HEADER, r"row 2 \(line 3\), column 'GeneratedTokens': missing value"),
        ("", HEADER, "no requests"),
    ],
)
def test_bad_traces_name_file_row_and_column(tmp_path, body, header, message) -> None:
    path = write(tmp_path, body, header)
    with pytest.raises(ValueError, match=message) as error:
        TraceReplay(path)
    assert str(path) in str(error.value)


def test_missing_trace_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        TraceReplay(tmp_path / "nope.csv")


@pytest.mark.needs_data
@needs_traces
@pytest.mark.parametrize(("name", "native_rate"), [("azure-conv", 5.53), ("azure-code", 2.57)])
def test_azure_replays_native_and_rescaled(name: str, native_rate: float) -> None:
    native = make_workload(name)
    assert native.mean_rate == pytest.approx(native_rate, rel=0.01)
    rescaled = make_workload(name, rate=20.0)
    requests = rescaled.generate(rng(), 0.0, 3600.0)
    assert len(requests) / 3600.0 == pytest.approx(20.0, rel=0.02)
