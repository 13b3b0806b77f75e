"""Coverage: how much of each window and period holds data, and what it withholds.

A sidecar started without saved state has seen seconds of a 30-day period: its burn rates are
estimates from what it saw, its alerts wait until both windows of a condition hold enough data,
and its period budget is warming up. The simulator's engine (history covered, fed events) is
untouched by all this: the environment's numbers do not move.
"""

from __future__ import annotations

import numpy as np
import pytest

from slo.engine import BudgetEngine
from slo.spec import default_spec
from slo.synthetic import synthetic_events

SPEC = default_spec()


def tracked(**kwargs) -> BudgetEngine:
    """An engine that has seen nothing before its first measurement (a fresh sidecar)."""
    return BudgetEngine(SPEC, history_covered=False, **kwargs)


def feed_counts(
    engine: BudgetEngine, times: np.ndarray, bad_ratio: float, measured: np.ndarray | None = None
) -> None:
    """100 events per step with ``bad_ratio`` bad, for every SLO (fairness: one tenant each)."""
    n = len(engine.slos)
    tenants = [np.ones(engine.slos[s.slo_index].sli.llm.max_tenants) for s in engine._fairness]
    for t in times:
        good = np.full(n, 100.0 * (1.0 - bad_ratio))
        engine.ingest_counts(t, good, np.full(n, 100.0), tenants, tenants, measured=measured)


def test_the_event_feed_is_fully_covered_and_alerts_as_before():
    engine = BudgetEngine(SPEC)
    events = synthetic_events(np.random.default_rng(0), 3000, 0.0, 600.0, slowdown=4.0)
    engine.ingest_events(events)
    engine.set_budget_spent(0.3, assumed_total_events=1e6)
    snapshot = engine.snapshot()
    assert np.all(snapshot.window_coverage == 1.0) and np.all(snapshot.period_coverage == 1.0)
    assert not snapshot.no_data.any() and not snapshot.warming_up.any()
    assert snapshot.page.any()  # ten minutes of a slow fleet page at once, as before


def test_a_cold_start_raises_no_alert_and_shows_the_budget_warming_up():
    """Before: 20 s after a start without state, budgets of -1.7 and ticket alerts."""
    engine = tracked()
    start = 1.765e9
    feed_counts(engine, start + np.arange(0.0, 21.0), bad_ratio=0.5)
    snapshot = engine.snapshot()
    assert snapshot.burn_rates[0, 0] > 14.4  # what was seen burns fast...
    assert not snapshot.page.any() and not snapshot.ticket.any()  # ...but proves nothing yet
    np.testing.assert_allclose(snapshot.window_coverage[:, 0], 20.0 / 300.0)
    assert snapshot.warming_up.all()
    assert set(snapshot.budget_states()) == {"warming_up"}
    assert snapshot.to_dict()["budget_states"][0] == "warming_up"


def test_alerts_fire_once_both_windows_of_a_condition_hold_enough_data():
    engine = tracked()
    start = 1.765e9
    feed_counts(engine, start + np.arange(30.0, 3600.0 * 0.95, 30.0), bad_ratio=0.5)
    coverage = engine.window_coverage()
    windows = engine.windows
    assert coverage[0, windows.index("1h")] >= 0.9 > coverage[0, windows.index("6h")]
    page, ticket = engine.alerts()
    assert page[engine.slo_names.index("ttft-1s")]  # 1h and 5m are covered
    assert not ticket.any()  # 6h, 1d, 3d are not: no ticket condition holds
    assert engine.snapshot().warming_up.all()  # a 30-day period is still warming up


def test_an_slo_never_measured_has_no_data():
    engine = tracked()
    measured = np.ones(len(engine.slos), dtype=bool)
    measured[1] = False
    feed_counts(engine, 1.765e9 + np.arange(0.0, 600.0, 30.0), 0.5, measured)
    snapshot = engine.snapshot()
    assert snapshot.no_data[1] and not snapshot.no_data[0]
    assert np.all(snapshot.window_coverage[1] == 0.0)
    assert snapshot.budget_states()[1] == "no_data"
    assert snapshot.alert_levels[1] == 0


def test_a_gap_in_measurements_uncovers_the_windows_it_spans():
    engine = BudgetEngine(SPEC)  # history covered: only gaps after the first measurement count
    measured = np.ones(len(engine.slos), dtype=bool)
    feed_counts(engine, np.arange(30.0, 3601.0, 30.0), 0.5, measured)
    assert engine.alerts()[0][0]
    measured[0] = False
    feed_counts(engine, np.arange(3630.0, 3601.0 + 600.0, 30.0), 0.5, measured)
    coverage = engine.window_coverage()
    assert coverage[0, 0] == 0.0 and coverage[1, 0] == 1.0
    assert engine.snapshot().no_data[0]
    assert not engine.alerts()[0][0] and engine.alerts()[0][1]


def test_a_prior_covers_the_history_it_models():
    engine = tracked()
    feed_counts(engine, 1.765e9 + np.arange(0.0, 60.0, 30.0), 0.0)
    assert engine.snapshot().warming_up.all()
    engine.set_budget_spent(0.2, assumed_total_events=1e6)
    assert not engine.snapshot().warming_up.any()


def test_a_prior_covers_its_share_of_the_period_as_it_ages_out():
    """Coverage of the period (cut at the engine's start, time 0): the measured share plus the
    prior's weight, which falls from 1 linearly to 0 over one period after it is set; never
    more than 1."""
    engine = tracked()
    period = engine.periods[0]
    others = len(engine.slos) - 1
    feed_counts(engine, np.arange(30.0, 3630.0, 30.0), 0.0)  # data from t = 30 s
    engine.set_budget_spent({engine.slo_names[0]: 0.2}, assumed_total_events=1)
    measured = 1.0 - 30.0 / period
    np.testing.assert_allclose(engine.period_coverage(), [1.0] + [measured] * others, rtol=1e-12)
    # Half a period without data: the prior is half aged out.
    nothing = np.zeros(len(engine.slos), dtype=bool)
    feed_counts(engine, [3600.0 + period / 2], 0.0, measured=nothing)
    expected = [measured] + [measured - 0.5] * others
    np.testing.assert_allclose(engine.period_coverage(), expected, rtol=1e-9)
    # A period and a half after the prior, a measurement: the prior has aged out and the
    # gap has left the period.
    feed_counts(engine, [3600.0 + 1.5 * period], 0.0)
    np.testing.assert_array_equal(engine.period_coverage(), 1.0)


@pytest.mark.parametrize("saved_with_coverage", [True, False])
def test_coverage_survives_a_restart_and_an_older_state_has_no_data(saved_with_coverage):
    engine = tracked()
    feed_counts(engine, 1.765e9 + np.arange(0.0, 900.0, 30.0), 0.1)
    state = engine.state_dict()
    if not saved_with_coverage:
        for key in ("fine_gap", "coarse_gap", "covered_from", "phase_start_gap"):
            del state[key]
    restored = tracked()
    restored.load_state_dict(state)
    if saved_with_coverage:
        np.testing.assert_array_equal(restored.window_coverage(), engine.window_coverage())
    else:
        assert restored.snapshot().no_data.all()
        # Its coverage starts again at the next measurement, as a fresh sidecar's does.
        fresh = tracked()
        first_slo_missed = np.arange(len(SPEC.engine_slos)) != 0
        for target in (restored, fresh):
            feed_counts(target, 1.765e9 + np.arange(900.0, 1800.0, 30.0), 0.1)
            feed_counts(target, [1.765e9 + 1800.0], 0.1, measured=first_slo_missed)
            feed_counts(target, 1.765e9 + np.arange(1830.0, 2400.0, 30.0), 0.1)
        np.testing.assert_array_equal(restored.window_coverage(), fresh.window_coverage())
        np.testing.assert_array_equal(restored.period_coverage(), fresh.period_coverage())
        assert 0.0 < restored.period_coverage()[0] < restored.period_coverage()[1] < 1.0


@pytest.mark.parametrize("min_coverage", [-0.1, 1.5])
def test_min_coverage_is_checked(min_coverage):
    with pytest.raises(ValueError, match="min_coverage"):
        BudgetEngine(SPEC, min_coverage=min_coverage)


def test_an_alert_fires_when_coverage_equals_min_coverage():
    engine = BudgetEngine(SPEC, min_coverage=1.0)  # the event feed covers every window fully
    assert BudgetEngine(SPEC, min_coverage=0.0).min_coverage == 0.0
    engine.ingest_events(synthetic_events(np.random.default_rng(0), 3000, 0.0, 600.0, slowdown=4.0))
    assert engine.snapshot().page.any()


def test_gaps_in_one_slo_lower_its_window_coverage_by_their_length():
    engine = tracked()
    start = 1.765e9 - 1.765e9 % engine.resolution
    measured = np.arange(len(engine.slos)) != 0
    gaps = [(1200.0, 1800.0), (3600.0, 4200.0)]  # SLO 0 not measured, seconds after the start
    for t in np.arange(10.0, 4201.0, 10.0):
        missed = any(lo < t <= hi for lo, hi in gaps)
        feed_counts(engine, np.array([start + t]), 0.0, measured=measured if missed else None)
    seconds = np.asarray(engine.window_seconds)[:2]
    before = np.clip(seconds - 4190.0, 0.0, None)  # windows reaching back before the start
    in_window = sum(np.clip(hi - np.maximum(lo, 4200.0 - seconds[0]), 0, None) for lo, hi in gaps)
    missing = np.stack([in_window, np.zeros_like(in_window)]) + before
    expected = np.clip(1.0 - missing / seconds, 0.0, 1.0)
    np.testing.assert_allclose(engine.window_coverage()[:2], expected)


def test_the_cost_of_a_gap_is_bounded_by_the_rings_not_by_its_length():
    """A clock set far ahead (here by 300,000 years) records the gap within the rings' span:
    spread over every fine bucket it spans, it would need terabytes."""
    engine = tracked()
    measured = np.arange(len(engine.slos)) != 0
    feed_counts(engine, np.array([1000.0]), bad_ratio=0.0)
    feed_counts(engine, np.array([1e13]), 0.0, measured=measured)
    # No data in the period, to within its resolution (one coarse bucket at its start).
    assert engine.period_coverage()[0] <= engine.period_resolution / engine.periods[0]


def test_a_gap_uncovers_a_window_of_a_sidecar_with_older_data():
    """Data from long before the window does not make up for a gap within it."""
    engine = tracked()
    measured = np.ones(len(engine.slos), dtype=bool)
    feed_counts(engine, 1.765e9 + np.arange(30.0, 3630.0, 30.0), 0.0, measured)
    measured[0] = False
    feed_counts(engine, 1.765e9 + np.arange(3630.0, 3750.0, 30.0), 0.0, measured)
    coverage = engine.window_coverage()
    assert coverage[0, 0] == pytest.approx(1.0 - 120.0 / 300.0) and coverage[1, 0] == 1.0
