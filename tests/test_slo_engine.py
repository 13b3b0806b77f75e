"""The error-budget engine: SLI classification, burn rates, budgets, alerts, phases, state."""

from __future__ import annotations

import re

import numpy as np
import pytest

from slo.engine import AlertLevel, BudgetEngine, PolicyState
from slo.events import Outcome, Reason, empty_events
from slo.sli import EventBatch, SLIClassifier
from slo.spec import SpecError, default_spec, load_spec
from slo.synthetic import synthetic_events


def make_spec(slos: list[dict], **engine) -> object:
    """A spec from SLO dicts (``name``, ``objective``, ``llm`` and optional extra keys)."""
    items = []
    for slo in slos:
        item = {k: v for k, v in slo.items() if k != "llm"}
        item["sli"] = {"llm": slo["llm"]}
        items.append(item)
    engine.setdefault("models", {"strong": 0, "fast": 1})
    return load_spec(
        {"version": "prometheus/v1", "service": "llm", "slos": items, "budgetpilot": engine}
    )


TTFT_SLO = {"name": "ttft", "objective": 0.99, "llm": {"kind": "ttft", "threshold_s": 1.0}}


def served(n: int, t_end: float | np.ndarray, **fields) -> np.ndarray:
    """``n`` served requests finishing at ``t_end``; other fields as given."""
    events = empty_events(n)
    values = {
        "t_end": t_end,
        "outcome": Outcome.SERVED,
        "reason": Reason.STOP,
        "tier": 0,
        "intended_tier": 0,
        "replica": 0,
        "output_tokens": 11,
        "ttft_s": 0.5,
        "e2e_s": 1.5,
        "itl_max_s": 0.05,
    }
    values.update(fields)
    for name, value in values.items():
        events[name] = value
    return events


def ttft_events(good: int, bad: int, t_end: float) -> np.ndarray:
    return np.concatenate([served(good, t_end, ttft_s=0.5), served(bad, t_end, ttft_s=2.0)])


# --------------------------------------------------------------------------------------------
# Classification of each SLI kind
# --------------------------------------------------------------------------------------------


def classify(llm: dict, events: np.ndarray, **slo_fields) -> tuple[list, list]:
    spec = make_spec([{"name": "x", "objective": 0.9, "llm": llm, **slo_fields}])
    good, counted = SLIClassifier(spec.slos[0], spec).classify(EventBatch(events))
    return np.asarray(good).astype(int).tolist(), np.asarray(counted).astype(int).tolist()


def mixed_requests() -> np.ndarray:
    """Six requests covering the outcomes and the fields the SLIs look at."""
    events = served(6, 1.0)
    events["outcome"] = [
        Outcome.SERVED,
        Outcome.SERVED,
        Outcome.SERVED,
        Outcome.REJECTED,
        Outcome.ABORTED,
        Outcome.FAILED,
    ]
    events["reason"] = [
        Reason.STOP,
        Reason.LENGTH,
        Reason.STOP,
        Reason.ADMISSION,
        Reason.TIMEOUT,
        Reason.REPLICA_FAILURE,
    ]
    events["ttft_s"] = [0.5, 1.0, 1.2, np.nan, 0.8, np.nan]
    events["e2e_s"] = [2.0, 4.0, 30.0, np.nan, 5.0, np.nan]
    events["output_tokens"] = [11, 41, 1, 0, 10, 0]
    events["itl_max_s"] = [0.05, 0.2, np.nan, np.nan, 0.08, np.nan]
    events["tier"] = [0, 1, 0, -1, 1, -1]
    events["intended_tier"] = [0, 0, 0, 1, 1, 0]
    events["tenant"] = [0, 1, 2, 0, 1, 2]
    events["quality_loss"] = [0.0, 0.2, 0.05, 0.0, 0.0, 0.0]
    events["truncated"] = [False, False, True, False, False, False]
    events["preemptions"] = [0, 3, 0, 0, 0, 0]
    hist = np.zeros((6, 20), dtype=np.uint32)
    hist[0, 3] = 10  # 10 gaps in (0.05, 0.075]
    hist[1, 3], hist[1, 6] = 30, 10  # 10 gaps in (0.15, 0.2]
    hist[4, 7] = 9  # 9 gaps in (0.2, 0.3]
    events["itl_hist"] = hist
    return events


@pytest.mark.parametrize(
    ("llm", "slo_fields", "good", "counted"),
    [
        ({"kind": "ttft", "threshold_s": 1.0}, {}, [1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 1, 0]),
        ({"kind": "e2e", "threshold_s": 5.0}, {}, [1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 1, 0]),
        (
            {"kind": "itl", "threshold_s": 0.1, "per": "token"},
            {},
            [10, 30, 0, 0, 0, 0],
            [10, 40, 0, 0, 9, 0],
        ),
        (
            {"kind": "itl", "threshold_s": 0.1, "per": "request"},
            {},
            [1, 0, 0, 0, 1, 0],
            [1, 1, 0, 0, 1, 0],
        ),
        # e2e per output token: 2/11, 4/41, 30/1, 5/10
        (
            {"kind": "normalized_latency", "threshold_s": 0.2},
            {},
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 1, 0],
        ),
        # (e2e - ttft) / (output - 1): 0.15, 0.075, -, 0.467
        ({"kind": "streaming", "pace_s": 0.15}, {}, [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0]),
        ({"kind": "availability"}, {}, [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]),
        (
            {"kind": "availability", "bad_outcomes": ["aborted"]},
            {},
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 1, 0],
        ),
        ({"kind": "quality", "mode": "tier"}, {}, [1, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]),
        (
            {"kind": "quality", "mode": "loss", "max_loss": 0.1},
            {},
            [1, 0, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ),
        ({"kind": "context"}, {}, [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]),
        (
            {"kind": "context", "length_cut": False, "max_preemptions": 3},
            {},
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ),
        (
            {"kind": "context", "truncation": False, "max_preemptions": None},
            {},
            [1, 0, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ),
        (
            {"kind": "ttft", "threshold_s": 1.0},
            {"selectors": {"tenant": [1, 2]}},
            [0, 1, 0, 0, 1, 0],
            [0, 1, 1, 0, 1, 0],
        ),
        (
            {"kind": "ttft", "threshold_s": 1.0},
            {"selectors": {"model": "fast"}},
            [0, 1, 0, 0, 1, 0],
            [0, 1, 0, 0, 1, 0],
        ),
        (
            {"kind": "availability"},
            {"selectors": {"intended_tier": 0}},
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 1],
        ),
        (
            {"kind": "ttft", "threshold_s": 1.0},
            {"selectors": {"tier": [0, 1], "model": "strong"}},
            [1, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
        ),
    ],
)
def test_each_sli_kind_classifies_requests(llm, slo_fields, good, counted):
    assert classify(llm, mixed_requests(), **slo_fields) == (good, counted)


def test_latency_is_compared_in_float64_like_the_engine_histograms():
    # float32(0.1) > 0.1: vLLM's bucket le="0.1" does not hold it, so neither may the SLI.
    events = served(1, 1.0, ttft_s=np.float32(0.1))
    assert classify({"kind": "ttft", "threshold_s": 0.1}, events) == ([0], [1])


# --------------------------------------------------------------------------------------------
# Burn rates and windows
# --------------------------------------------------------------------------------------------


def test_burn_rates_on_a_hand_computed_case():
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    engine.ingest_events(
        np.concatenate([ttft_events(100, 3, 20.0), served(2, 20.0, ttft_s=np.nan)])
    )
    engine.advance_to(30.0)
    expected = (3 / 103) / (1 - 0.99)
    np.testing.assert_allclose(engine.burn_rates(), expected, rtol=1e-12)
    engine.ingest_events(ttft_events(0, 10, 320.0))
    engine.advance_to(330.0)
    burn = engine.burn_rates()[0]
    np.testing.assert_allclose(burn[0], 1.0 / 0.01, rtol=1e-12)  # 5m: (30, 330] holds only the 10
    np.testing.assert_allclose(burn[2], (13 / 113) / 0.01, rtol=1e-12)  # 1h holds everything
    good, total = engine.window_counts()
    assert total[0].tolist() == [10, 113, 113, 113, 113, 113, 113]
    assert good[0].tolist() == [0, 100, 100, 100, 100, 100, 100]


@pytest.mark.parametrize(("now", "counted"), [(570.0, 1), (585.0, 0), (600.0, 0), (299.0, 1)])
def test_window_edges_are_whole_buckets_ending_with_now(now, counted):
    # The 5-minute window at `now` is the 10 buckets of 30 s ending with the bucket holding now.
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    engine.ingest_events(ttft_events(0, 1, 300.0))  # bucket (270, 300]
    engine.advance_to(now)
    assert engine.window_counts()[1][0, 0] == counted


E2E_SLO = {"name": "e2e", "objective": 0.99, "llm": {"kind": "e2e", "threshold_s": 1.0}}


def test_cumulative_counts_difference_is_what_happened_in_between():
    engine = BudgetEngine(make_spec([TTFT_SLO, E2E_SLO]))
    engine.ingest_events(ttft_events(10, 2, 20.0))  # e2e 1.5 s: all bad for the e2e SLO
    good0, total0 = engine.cumulative_counts()
    engine.ingest_events(ttft_events(5, 1, 4 * 86400.0))  # beyond every window
    good1, total1 = engine.cumulative_counts()
    # Per SLO, in slo_names order: ttft, then e2e.
    assert good0.tolist() == [10, 0] and total0.tolist() == [12, 12]
    assert (good1 - good0).tolist() == [5, 0] and (total1 - total0).tolist() == [6, 6]


def test_a_window_without_events_burns_nothing():
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    engine.ingest_events(ttft_events(0, 5, 10.0))
    engine.advance_to(4 * 86400.0)  # past the longest window
    assert np.all(engine.burn_rates() == 0.0)


def test_batches_split_shuffled_or_whole_give_the_same_counts():
    spec = default_spec()
    events = synthetic_events(np.random.default_rng(3), 40000, 0.0, 900.0)
    whole, pieces, shuffled = BudgetEngine(spec), BudgetEngine(spec), BudgetEngine(spec)
    whole.ingest_events(events)
    for start in range(0, len(events), 777):
        pieces.ingest_events(events[start : start + 777])
    shuffled.ingest_events(np.random.default_rng(4).permutation(events))
    for engine in (whole, pieces, shuffled):
        engine.advance_to(900.0)
    request_slos = [i for i, d in enumerate(whole.dimensions) if d != "fairness"]
    for engine in (pieces, shuffled):
        np.testing.assert_array_equal(
            engine.burn_rates()[request_slos], whole.burn_rates()[request_slos]
        )
    np.testing.assert_array_equal(pieces.burn_rates(), whole.burn_rates())  # in order: slices too


def test_events_older_than_the_ring_still_count_in_the_budget():
    spec = make_spec([TTFT_SLO], windows=["5m", "30m", "1h", "2h", "6h", "1d", "3d"])
    engine = BudgetEngine(spec)
    engine.advance_to(5 * 86400.0)
    engine.ingest_events(ttft_events(0, 4, 86400.0))  # 4 days late: beyond the 3-day ring
    assert engine.period_counts()[1][0] == 4
    assert engine.window_counts()[1][0].tolist() == [0] * 7  # too old for every window


# --------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------


def ratio_stream(engine: BudgetEngine, segments: list[tuple[float, float, float]]) -> None:
    """Feed 1000 events per 30-s bucket with the error ratio of each (start, end, ratio)."""
    for start, end, ratio in segments:
        for t in np.arange(start + 30.0, end + 1e-9, 30.0):
            bad = round(1000 * ratio)
            engine.ingest_counts(t, np.array([1000.0 - bad]), np.array([1000.0]))


PAGE_ONLY = {"page": [{"long": "1h", "short": "5m", "burn_rate": 14.4}], "ticket": []}


@pytest.mark.parametrize(
    ("long_ratio", "short_ratio", "pages"),
    [
        (0.30, 0.30, True),  # both windows burn at 30x
        (0.30, 0.00, False),  # 1h at 27.5x, 5m at 0x: the fire is out
        (0.00, 0.50, False),  # 5m at 50x, 1h at 4.2x: a blip
        (0.00, 0.00, False),
    ],
)
def test_page_fires_only_when_both_windows_exceed(long_ratio, short_ratio, pages):
    engine = BudgetEngine(make_spec([TTFT_SLO], alert_windows=PAGE_ONLY))
    ratio_stream(engine, [(0.0, 3300.0, long_ratio), (3300.0, 3600.0, short_ratio)])
    page, ticket = engine.alerts()
    assert page[0] == pages and not ticket[0]
    assert engine.alert_states()[0] == (AlertLevel.PAGE if pages else AlertLevel.NONE)


@pytest.mark.parametrize(
    ("segments", "long_burn", "short_burn"),
    [
        ([(0.0, 3600.0, 0.5)], 2.0, 2.0),
        ([(0.0, 3300.0, 0.49), (3300.0, 3600.0, 0.61)], 2.0, 2.44),  # 1h exactly at it
        ([(0.0, 3300.0, 0.6), (3300.0, 3600.0, 0.5)], 2.3667, 2.0),  # 5m exactly at it
    ],
)
def test_a_burn_rate_equal_to_the_threshold_in_either_window_does_not_fire(
    segments, long_burn, short_burn
):
    slo = {**TTFT_SLO, "objective": 0.75}  # budget 0.25 exactly: ratio 0.5 burns at exactly 2
    windows = {"page": [{"long": "1h", "short": "5m", "burn_rate": 2.0}], "ticket": []}
    engine = BudgetEngine(make_spec([slo], alert_windows=windows))
    ratio_stream(engine, segments)
    burn = dict(zip(engine.windows, engine.burn_rates()[0].tolist(), strict=True))
    assert burn["1h"] == pytest.approx(long_burn, abs=1e-4)
    assert burn["5m"] == pytest.approx(short_burn, abs=1e-4)
    assert 2.0 in (burn["1h"], burn["5m"])  # exactly, not within rounding
    assert not engine.alerts()[0][0]


def test_a_ticket_fires_for_the_slo_that_burns_only():
    engine = BudgetEngine(make_spec([TTFT_SLO, {**TTFT_SLO, "name": "ttft-b"}]))
    total = np.array([1000.0, 1000.0])
    for t in np.arange(30.0, 86400.0 + 1e-9, 30.0):
        engine.ingest_counts(t, np.array([960.0, 1000.0]), total)  # 4% bad: a ticket's burn
    assert engine.alert_states().tolist() == [AlertLevel.TICKET, AlertLevel.NONE]


@pytest.mark.parametrize(
    ("ratio", "level"),
    [(0.20, AlertLevel.PAGE), (0.04, AlertLevel.TICKET), (0.005, AlertLevel.NONE)],
)
def test_sre_workbook_conditions_choose_page_ticket_or_nothing(ratio, level):
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    ratio_stream(engine, [(0.0, 86400.0, ratio)])
    assert engine.alert_states()[0] == level


def test_disabled_alerts_never_fire():
    slo = {**TTFT_SLO, "alerting": {"name": "Ttft", "page_alert": {"disable": True}}}
    engine = BudgetEngine(make_spec([slo]))
    ratio_stream(engine, [(0.0, 86400.0, 0.5)])
    page, ticket = engine.alerts()
    assert not page[0] and ticket[0]


def test_windows_scale_to_a_one_day_period():
    slo = {**TTFT_SLO, "period": "1d"}  # 1h -> 2 min, 5m -> 10 s -> one 30-s bucket
    engine = BudgetEngine(make_spec([slo], alert_windows=PAGE_ONLY))
    assert engine.window_seconds[0, :3].tolist() == [30.0, 60.0, 120.0]
    ratio_stream(engine, [(0.0, 3600.0, 0.0), (3600.0, 3720.0, 0.3)])
    assert engine.alerts()[0][0]  # two bad minutes page a 1-day SLO, as an hour pages a 30-day one
    month = BudgetEngine(make_spec([TTFT_SLO], alert_windows=PAGE_ONLY))
    ratio_stream(month, [(0.0, 3600.0, 0.0), (3600.0, 3720.0, 0.3)])
    assert not month.alerts()[0][0]


# --------------------------------------------------------------------------------------------
# Budget remaining, policy states, phases, priors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "remaining", "state"),
    [
        (0, 1.0, PolicyState.OK),
        (5, 0.5, PolicyState.OK),
        (8, 0.2, PolicyState.AT_RISK),
        (12, -0.2, PolicyState.EXHAUSTED),
    ],
)
def test_budget_remaining_and_policy_state(bad, remaining, state):
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    engine.ingest_events(ttft_events(1000 - bad, bad, 100.0))
    np.testing.assert_allclose(engine.budget_remaining(), [remaining], atol=1e-12)
    assert engine.policy_states()[0] == state
    assert engine.dimension_states() == {"ttft": state}


def test_a_single_bad_request_spends_its_share_of_the_budget():
    engine = BudgetEngine(make_spec([{**TTFT_SLO, "objective": 0.75}]))
    engine.ingest_events(ttft_events(0, 1, 100.0))
    assert np.all(engine.error_ratios()[0] == 1.0)
    assert engine.budget_remaining()[0] == 1.0 - 1.0 / 0.25
    assert engine.policy_states()[0] == PolicyState.EXHAUSTED


@pytest.mark.parametrize(("bad", "state"), [(3, PolicyState.OK), (4, PolicyState.EXHAUSTED)])
def test_a_budget_exactly_at_a_policy_threshold(bad, state):
    """Objective 0.75 makes the arithmetic exact: 3 bad of 16 leave exactly ``at_risk_below``
    (0.25), which is not below it; 4 bad leave exactly ``exhausted_at`` (0): exhausted."""
    engine = BudgetEngine(make_spec([{**TTFT_SLO, "objective": 0.75}]))
    engine.ingest_events(ttft_events(16 - bad, bad, 100.0))
    assert engine.budget_remaining()[0] == {3: 0.25, 4: 0.0}[bad]
    assert engine.policy_states()[0] == state


def test_budget_forgets_events_older_than_the_period():
    slo = {**TTFT_SLO, "period": "1d"}
    engine = BudgetEngine(make_spec([slo]))
    engine.ingest_events(ttft_events(0, 5, 100.0))
    engine.advance_to(86400.0)
    assert engine.period_counts()[1][0] == 5
    engine.advance_to(86400.0 + 3600.0)
    assert engine.period_counts()[1][0] == 0
    assert engine.budget_remaining()[0] == 1.0


def test_dimension_state_is_the_worst_of_its_slos():
    slos = [
        TTFT_SLO,
        {**TTFT_SLO, "name": "ttft-strict", "llm": {"kind": "ttft", "threshold_s": 0.5}},
    ]
    engine = BudgetEngine(make_spec(slos))
    engine.ingest_events(
        np.concatenate([served(988, 10.0, ttft_s=0.2), served(12, 10.0, ttft_s=0.75)])
    )
    assert engine.policy_states().tolist() == [PolicyState.OK, PolicyState.EXHAUSTED]
    assert engine.dimension_states() == {"ttft": PolicyState.EXHAUSTED}


def test_phases_give_a_rollout_its_own_budget_and_keep_history():
    engine = BudgetEngine(make_spec([TTFT_SLO]), phase="v1")
    engine.ingest_events(ttft_events(990, 6, 600.0))
    engine.advance_to(1200.0)
    before = engine.budget_remaining()[0]
    burn = engine.burn_rates().copy()
    record = engine.start_phase("v2")
    assert (record.name, record.start, record.end) == ("v1", 0.0, 1200.0)
    assert record.budget_spent[0] == pytest.approx(1.0 - before)
    assert (record.good[0], record.total[0]) == (990, 996)
    assert engine.budget_remaining()[0] == 1.0  # a fresh budget
    np.testing.assert_array_equal(engine.burn_rates(), burn)  # the service did not change
    engine.ingest_events(ttft_events(98, 2, 1500.0))
    np.testing.assert_allclose(engine.budget_remaining(), [1 - (2 / 100) / 0.01], rtol=1e-9)
    engine.start_phase("v3", t=1800.0)
    assert [p.name for p in engine.phase_history] == ["v1", "v2"]
    assert (engine.phase_history[1].good[0], engine.phase_history[1].total[0]) == (98, 100)
    assert engine.phase == "v3" and engine.snapshot().phase == "v3"


def test_set_budget_spent_starts_an_episode_with_part_of_the_budget_gone():
    engine = BudgetEngine(make_spec([TTFT_SLO, {**TTFT_SLO, "name": "other"}]), start_time=3600.0)
    engine.set_budget_spent({"ttft": 0.4}, assumed_total_events=10000)
    np.testing.assert_allclose(engine.budget_remaining(), [0.6, 1.0], atol=1e-12)
    engine.ingest_events(ttft_events(9990, 10, 3700.0))  # 10 bad: 10 % of this budget's events
    weight = 1.0 - 100.0 / (30 * 86400.0)  # the prior ages out over one period
    bad = 0.4 * 0.01 * 10000 * weight + 10
    expected = 1.0 - bad / ((10000 * weight + 10000) * (1 - 0.99))
    assert engine.budget_remaining()[0] == pytest.approx(expected, rel=1e-9)
    engine.advance_to(3600.0 + 15 * 86400.0)  # half a period later, half the prior is left
    weight = 0.5
    bad = 0.4 * 0.01 * 10000 * weight + 10
    expected = 1.0 - bad / ((10000 * weight + 10000) * (1 - 0.99))
    assert engine.budget_remaining()[0] == pytest.approx(expected, rel=1e-9)
    # A period and a half after it was set, the prior weighs nothing (not less than nothing).
    engine.advance_to(3600.0 + 45 * 86400.0)
    engine.ingest_events(ttft_events(95, 5, 3600.0 + 45 * 86400.0))
    expected = 1.0 - (5 / 100) / (1 - 0.99)
    assert engine.budget_remaining()[0] == pytest.approx(expected, rel=1e-9)


def test_set_budget_spent_scalar_and_per_slo_forms():
    engine = BudgetEngine(make_spec([TTFT_SLO, {**TTFT_SLO, "name": "other"}]))
    engine.set_budget_spent(0.25, assumed_total_events=[1000, 2000])
    np.testing.assert_allclose(engine.budget_remaining(), [0.75, 0.75])
    engine.set_budget_spent([0.0, 1.0], assumed_total_events=1000)
    np.testing.assert_allclose(engine.budget_remaining(), [1.0, 0.0], atol=1e-12)
    with pytest.raises(KeyError, match="unknown SLO"):
        engine.set_budget_spent({"nope": 0.1}, assumed_total_events=10)
    with pytest.raises(ValueError, match="one per SLO"):
        engine.set_budget_spent([0.1, 0.2, 0.3], assumed_total_events=10)
    engine.set_budget_spent(1.0, assumed_total_events=1)  # one event, and it was bad
    np.testing.assert_allclose(engine.budget_remaining(), [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(("fraction", "total"), [(-0.1, 1000), ([0.1, -0.1], 1000), (0.1, 0)])
def test_set_budget_spent_refuses_negative_fractions_and_empty_periods(fraction, total):
    engine = BudgetEngine(make_spec([TTFT_SLO, {**TTFT_SLO, "name": "other"}]))
    message = "^fractions must be >= 0 and assumed_total_events > 0$"
    with pytest.raises(ValueError, match=message):
        engine.set_budget_spent(fraction, assumed_total_events=total)
    np.testing.assert_array_equal(engine.budget_remaining(), [1.0, 1.0])  # nothing was set


# --------------------------------------------------------------------------------------------
# Fairness time slices
# --------------------------------------------------------------------------------------------


def fairness_spec(
    method: str = "gap", *, before: tuple = (), slo_fields: dict | None = None, **limits: float
) -> object:
    """A spec whose last SLO (after ``before``) is a fairness SLO of ``method`` (with
    ``slo_fields``)."""
    fairness = {
        **(slo_fields or {}),
        "name": "fair",
        "objective": 0.9,
        "llm": {
            "kind": "fairness",
            "base": {"kind": "ttft", "threshold_s": 1.0},
            "method": method,
            "max_gap": 0.05,
            "min_jain": 0.99,
            "slice": "5m",
            "min_requests": 20,
            **limits,
        },
    }
    return make_spec([*before, fairness])


def slice_events(t: float, attainment: dict[int, tuple[int, int]]) -> np.ndarray:
    """Per tenant (good, total) requests finishing at ``t``."""
    parts = []
    for tenant, (good, total) in attainment.items():
        parts.append(served(good, t, tenant=tenant, ttft_s=0.5))
        parts.append(served(total - good, t, tenant=tenant, ttft_s=3.0))
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("method", "attainment", "fair"),
    [
        ("gap", {0: (100, 100), 1: (96, 100)}, True),
        ("gap", {0: (100, 100), 1: (90, 100)}, False),
        ("gap", {0: (100, 100), 1: (50, 100), 2: (5, 10)}, False),
        ("gap", {0: (100, 100), 1: (90, 100), 2: (0, 10)}, False),
        ("gap", {0: (100, 100), 1: (0, 10)}, None),  # tenant 1 below min_requests: no verdict
        ("jain", {0: (100, 100), 1: (90, 100)}, True),  # J = 0.9986
        ("jain", {0: (100, 100), 1: (70, 100)}, False),  # J = 0.9689
    ],
)
def test_fairness_slices_are_judged_when_they_close(method, attainment, fair):
    engine = BudgetEngine(fairness_spec(method))
    engine.ingest_events(slice_events(150.0, attainment))
    assert engine.period_counts()[1][0] == 0  # the slice (0, 300] is still open
    engine.advance_to(300.0)
    good, total = engine.period_counts()
    if fair is None:
        assert total[0] == 0
    else:
        assert (good[0], total[0]) == (float(fair), 1.0)


@pytest.mark.parametrize(
    ("method", "attainment", "limits"),
    [
        # Exactly min_requests each, a gap of exactly max_gap (0.25 is exact in binary).
        ("gap", {0: (20, 20), 1: (15, 20)}, {"max_gap": 0.25}),
        ("jain", {0: (20, 20), 1: (0, 20)}, {"min_jain": 0.5}),  # J = 1 / 2 exactly
        ("jain", {0: (0, 20), 1: (0, 20)}, {}),  # all at zero: equal (the base SLO shows it)
    ],
)
def test_a_slice_exactly_at_the_fairness_limits_is_fair(method, attainment, limits):
    engine = BudgetEngine(fairness_spec(method, **limits))
    engine.ingest_events(slice_events(150.0, attainment))
    engine.advance_to(300.0)
    good, total = engine.period_counts()
    assert (good[0], total[0]) == (1.0, 1.0)


def test_consecutive_fairness_slices_are_judged_apart():
    engine = BudgetEngine(fairness_spec(before=(TTFT_SLO,)))
    engine.ingest_events(slice_events(150.0, {0: (100, 100), 1: (90, 100)}))
    engine.advance_to(300.0)  # (0, 300]: unfair
    engine.ingest_events(slice_events(450.0, {0: (100, 100), 1: (100, 100)}))
    assert engine.period_counts()[1][1] == 1.0  # (300, 600] is open until 600
    engine.advance_to(600.0)  # fair
    engine.ingest_events(slice_events(750.0, {0: (19, 19), 1: (0, 19)}))
    engine.advance_to(900.0)  # a fresh slice: 19 requests each are too few for a verdict
    good, total = engine.period_counts()
    assert (good[1], total[1]) == (1.0, 2.0)
    assert (good[0], total[0]) == (190 + 200 + 19, 200 + 200 + 38)  # the ttft SLO's requests


def test_fairness_slices_follow_an_engine_started_mid_period():
    engine = BudgetEngine(fairness_spec(), start_time=3600.0)
    engine.ingest_events(slice_events(3750.0, {0: (100, 100), 1: (90, 100)}))
    engine.advance_to(3900.0)  # the slice (3600, 3900] closes: unfair
    good, total = engine.period_counts()
    assert (good[0], total[0]) == (0.0, 1.0)


@pytest.mark.parametrize(("slice_s", "assumed"), [(300.0, 1e6), (420.0, 1_000_000)])
def test_a_fairness_prior_counts_the_slices_of_a_period(slice_s, assumed):
    """For a fairness SLO the prior's events are the period's slices (a fraction of one when
    the slice does not divide the period), whatever the assumed total of requests: one unfair
    slice then weighs one slice of the period."""
    engine = BudgetEngine(fairness_spec(slice=f"{slice_s:g}s"))
    engine.set_budget_spent(0.5, assumed_total_events=assumed)
    assert engine.budget_remaining()[0] == pytest.approx(0.5, rel=1e-12)
    engine.ingest_events(slice_events(100.0, {0: (50, 50), 1: (40, 50)}))
    engine.advance_to(slice_s)  # the slice closes: unfair
    slices = engine.periods[0] / slice_s
    weight = 1.0 - slice_s / engine.periods[0]
    bad = 0.5 * 0.1 * slices * weight + 1
    expected = 1.0 - bad / ((slices * weight + 1) * 0.1)
    assert engine.budget_remaining()[0] == pytest.approx(expected, rel=1e-12)


def test_fairness_error_ratio_is_the_share_of_unfair_slices():
    engine = BudgetEngine(fairness_spec())
    for k, unfair in enumerate([False, True, False, False, True, False]):
        engine.ingest_events(
            slice_events(300.0 * k + 100.0, {0: (50, 50), 1: (40 if unfair else 50, 50)})
        )
    engine.advance_to(1800.0)
    assert engine.window_counts()[1][0, 1] == 6  # six slices in the 30-minute window
    assert engine.error_ratios()[0, 1] == pytest.approx(2 / 6)
    assert engine.burn_rates()[0, 1] == pytest.approx((2 / 6) / 0.1)


# --------------------------------------------------------------------------------------------
# State and snapshot
# --------------------------------------------------------------------------------------------


def busy_engine() -> tuple[BudgetEngine, np.ndarray]:
    spec = default_spec()
    rng = np.random.default_rng(7)
    engine = BudgetEngine(spec)
    engine.ingest_events(synthetic_events(rng, 30000, 0.0, 1800.0, slowdown=2.0))
    engine.start_phase("rollout", 1900.0)
    engine.set_budget_spent(0.3, assumed_total_events=1e5)
    engine.ingest_events(synthetic_events(rng, 20000, 1900.0, 2950.0))
    return engine, synthetic_events(rng, 20000, 2950.0, 4000.0)


def assert_same_budgets(a: BudgetEngine, b: BudgetEngine) -> None:
    np.testing.assert_array_equal(a.burn_rates(), b.burn_rates())
    np.testing.assert_array_equal(a.budget_remaining(), b.budget_remaining())
    np.testing.assert_array_equal(a.alert_states(), b.alert_states())
    assert a.snapshot().to_dict() == b.snapshot().to_dict()


@pytest.mark.parametrize("via_file", [False, True])
def test_a_restored_engine_continues_identically(tmp_path, via_file):
    engine, later = busy_engine()
    restored = BudgetEngine(default_spec())
    if via_file:
        engine.save(tmp_path / "budget.npz")
        restored.load(tmp_path / "budget.npz")
    else:
        restored.load_state_dict(engine.state_dict())
    assert_same_budgets(engine, restored)
    assert restored.phase_history == engine.phase_history
    for target in (engine, restored):
        target.ingest_events(later)
        target.advance_to(4000.0)
    assert_same_budgets(engine, restored)


def test_a_state_only_loads_into_an_engine_of_the_same_spec():
    engine, _ = busy_engine()
    other = BudgetEngine(make_spec([TTFT_SLO]))
    with pytest.raises(ValueError, match="^the saved engine state belongs to a different spec$"):
        other.load_state_dict(engine.state_dict())


def _damaged_state(damage) -> dict:
    state = busy_engine()[0].state_dict()
    damage(state)
    return state


BAD_STATES = {
    "format": (lambda s: s.update(format=99), "^unsupported engine state format 99$"),
    "no format": (lambda s: s.pop("format"), "^unsupported engine state format None$"),
    # Not half loaded: the spec's fairness SLO has no saved slice.
    "fairness": (lambda s: s.update(fairness=[]), "shorter"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_a_damaged_state_is_refused_naming_what_is_wrong(case):
    damage, message = BAD_STATES[case]
    state = _damaged_state(damage)
    restored = BudgetEngine(default_spec())
    with pytest.raises(ValueError, match=message):
        restored.load_state_dict(state)


def test_a_state_file_with_pickled_objects_is_refused(tmp_path):
    """A state file is data: loading it never unpickles (which could run code)."""
    engine, _ = busy_engine()
    engine.save(tmp_path / "budget.npz")
    with np.load(tmp_path / "budget.npz") as data:
        arrays = dict(data)
    arrays["prior"] = np.array([{"not": "an array of numbers"}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(ValueError, match="allow_pickle"):
        BudgetEngine(default_spec()).load(tmp_path / "pickled.npz")


def test_the_spec_fingerprint_is_16_hex_digits_of_the_spec():
    """The form manifests and observation contracts carry (``spec_hash``, ``spec_digest``)."""
    fingerprint = BudgetEngine(default_spec()).spec_fingerprint()
    assert re.fullmatch("[0-9a-f]{16}", fingerprint)
    assert BudgetEngine(default_spec()).spec_fingerprint() == fingerprint
    assert BudgetEngine(make_spec([TTFT_SLO])).spec_fingerprint() != fingerprint


def test_snapshot_holds_everything_a_policy_observes():
    engine, _ = busy_engine()
    snapshot = engine.snapshot()
    n_slo, n_windows = len(engine.slo_names), len(engine.windows)
    assert snapshot.burn_rates.shape == (n_slo, n_windows) == snapshot.window_seconds.shape
    assert snapshot.windows == ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    assert snapshot.dimensions == engine.dimensions
    np.testing.assert_array_equal(snapshot.budget_remaining, engine.budget_remaining())
    np.testing.assert_array_equal(snapshot.alert_levels, engine.alert_states())
    assert snapshot.alert_levels.dtype == snapshot.policy_states.dtype == np.int8
    assert snapshot.slo_names == engine.slo_names
    np.testing.assert_array_equal(snapshot.objectives, engine.objectives)
    page, ticket = engine.alerts()
    np.testing.assert_array_equal(snapshot.page, page)
    np.testing.assert_array_equal(snapshot.ticket, ticket)
    np.testing.assert_array_equal(snapshot.window_coverage, engine.window_coverage())
    np.testing.assert_array_equal(snapshot.period_coverage, engine.period_coverage())
    assert snapshot.min_coverage == engine.min_coverage == 0.9
    as_dict = snapshot.to_dict()
    assert set(as_dict["dimension_states"].values()) <= {"ok", "at_risk", "exhausted"}
    assert as_dict["time"] == engine.now
    levels = {"none": AlertLevel.NONE, "ticket": AlertLevel.TICKET, "page": AlertLevel.PAGE}
    assert [levels[name] for name in as_dict["alert_levels"]] == snapshot.alert_levels.tolist()
    states = {"ok": PolicyState.OK, "at_risk": PolicyState.AT_RISK}
    states["exhausted"] = PolicyState.EXHAUSTED
    assert [states[name] for name in as_dict["policy_states"]] == snapshot.policy_states.tolist()
    # Every SLO of an engine fed events has data: its budget state is its policy state.
    assert as_dict["budget_states"] == as_dict["policy_states"]


def test_an_engine_needs_llm_slos():
    spec = load_spec(
        {
            "version": "prometheus/v1",
            "service": "x",
            "slos": [{"name": "a", "objective": 99, "sli": {"raw": {"error_ratio_query": "0"}}}],
        }
    )
    message = "^the spec has no SLO with an 'llm' SLI for the engine to compute$"
    with pytest.raises(SpecError, match=message):
        BudgetEngine(spec)


def test_a_fresh_engine_is_in_its_initial_phase():
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    assert engine.phase == "initial" and engine.snapshot().phase == "initial"


@pytest.mark.parametrize("bad_time", [np.nan, np.inf, -np.inf])
def test_bad_event_batches_are_refused_with_a_clear_error(bad_time):
    engine = BudgetEngine(make_spec([TTFT_SLO]))
    events = ttft_events(3, 0, 10.0)
    events["t_end"][1] = bad_time
    with pytest.raises(ValueError, match=r"non-finite t_end \(first rows \[1\]\)"):
        engine.ingest_events(events)
    events = ttft_events(9, 0, 10.0)
    events["t_end"][1:8] = bad_time
    with pytest.raises(ValueError, match=r"\(first rows \[1, 2, 3, 4, 5\]\)"):
        engine.ingest_events(events)
    with pytest.raises(TypeError, match="lack the fields"):
        engine.ingest_events(np.zeros(3, dtype=[("t_end", "f8")]))
    with pytest.raises(ValueError, match="cannot advance"):
        engine.advance_to(float("nan"))


def test_late_events_count_in_the_open_fairness_slice():
    engine = BudgetEngine(fairness_spec())
    engine.ingest_events(slice_events(100.0, {0: (50, 50), 1: (50, 50)}))
    engine.advance_to(400.0)  # slice (0, 300] judged fair, (300, 600] open
    engine.ingest_events(slice_events(200.0, {0: (50, 50), 1: (0, 50)}))  # late: joins (300, 600]
    engine.advance_to(600.0)
    good, total = engine.period_counts()
    assert (good[0], total[0]) == (1.0, 2.0)


# --------------------------------------------------------------------------------------------
# The metrics feed's input
# --------------------------------------------------------------------------------------------


def test_counts_of_fairness_slos_come_from_their_tenants_only():
    """``ingest_counts`` ignores the good/total entries of fairness SLOs: their counts are
    slices judged from the tenant counts."""
    engine = BudgetEngine(default_spec())
    n = len(engine.slos)
    good, total = np.arange(1.0, n + 1.0), np.arange(1.0, n + 1.0) * 10.0
    tenants = [np.ones(engine.slos[s.slo_index].sli.llm.max_tenants) for s in engine._fairness]
    engine.ingest_counts(30.0, good, total, tenants, tenants)
    request = np.array([d != "fairness" for d in engine.dimensions])
    counted_good, counted_total = engine.cumulative_counts()
    np.testing.assert_array_equal(counted_good, np.where(request, good, 0.0))
    np.testing.assert_array_equal(counted_total, np.where(request, total, 0.0))


def test_a_fairness_slo_judges_only_the_requests_its_selectors_choose():
    engine = BudgetEngine(fairness_spec(slo_fields={"selectors": {"model": "fast"}}))
    fast = slice_events(150.0, {0: (100, 100), 1: (100, 100)})
    fast["tier"] = fast["intended_tier"] = 1
    strong = slice_events(150.0, {0: (100, 100), 1: (0, 100)})  # unfair, on the other model
    engine.ingest_events(np.concatenate([fast, strong]))
    engine.advance_to(300.0)
    good, total = engine.period_counts()
    assert (good[0], total[0]) == (1.0, 1.0)


@pytest.mark.parametrize("given", [0, 2])
def test_tenant_counts_not_one_per_fairness_slo_are_refused_before_counting(given):
    engine = BudgetEngine(default_spec())
    n = len(engine.slos)
    tenants = [np.ones(10)] * given
    with pytest.raises(ValueError, match=f"tenant counts for 1 fairness SLOs, got {given} good"):
        engine.ingest_counts(30.0, np.ones(n), np.ones(n), tenants, tenants)
    assert engine.now == 0.0
    assert engine.cumulative_counts()[1].sum() == 0.0
