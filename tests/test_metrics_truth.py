"""The metrics feed never reports a budget it cannot see (realistic pages, damaged).

Pages are the fixtures of ``tests/fixtures/metrics`` (vLLM v1 with and without
``inter_token_latency_seconds``, in Prometheus and OpenMetrics text, SGLang, llama.cpp, TGI);
successive scrapes grow every counter and histogram of a page by one factor, so that the error
ratio of every SLO is the page's own and any fault that distorts it shows.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.sidecar.parse import SeriesSelection, read_page
from slo.engine import BudgetEngine
from slo.metrics import MetricsFeed, normalise_nan
from slo.spec import load_spec
from tests.metric_pages import fixture, grown, selects, value_of, with_value, without

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"

SPEC = load_spec(
    {
        "version": "prometheus/v1",
        "service": "llm",
        "slos": [
            {"name": "ttft", "objective": 0.99, "sli": {"llm": {"kind": "ttft", "threshold_s": 1}}},
            {
                "name": "itl",
                "objective": 0.99,
                "sli": {"llm": {"kind": "itl", "threshold_s": 0.1, "per": "token"}},
            },
            {"name": "e2e", "objective": 0.9, "sli": {"llm": {"kind": "e2e", "threshold_s": 10}}},
        ],
    }
)


def bucket(name: str, le: str) -> str:
    return f"{name}_bucket@{le}"


VLLM = fixture("vllm-v1.txt")


def fed(scrapes: list[tuple[float, dict[str, str]]], engine: BudgetEngine | None = None):
    """A feed of SPEC (or ``engine``) after ``scrapes``; the reports and snapshots of each."""
    feed = MetricsFeed(engine or BudgetEngine(SPEC), "vllm")
    reports, snapshots = [], []
    for t, pages in scrapes:
        reports.append(feed.update(t, pages))
        snapshots.append(feed.engine.snapshot())
    return feed, reports, snapshots


def series(factors: list[float], **faults: str) -> list[tuple[float, dict[str, str]]]:
    """Scrapes of two replicas every 30 s at growing traffic; ``faults`` maps a scrape index
    (``s<i>``) to the damaged page of replica ``a`` at that scrape."""
    out = []
    for i, factor in enumerate(factors):
        pages = {"a": grown(VLLM, factor), "b": grown(VLLM, factor)}
        if f"s{i}" in faults:
            pages["a"] = faults[f"s{i}"]
        out.append((30.0 * i, pages))
    return out


# --------------------------------------------------------------------------------------------
# The fixtures are readable and give what the mappings say
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mapping"),
    [
        ("vllm-v1.txt", "vllm"),
        ("vllm-v1-openmetrics.txt", "vllm"),
        ("vllm-v1-tpot.txt", "vllm-legacy"),
        ("sglang.txt", "sglang"),
    ],
)
def test_fixture_pages_feed_their_mapping_cleanly(name, mapping):
    page = fixture(name)
    spec = load_spec(
        {
            "version": "prometheus/v1",
            "service": "llm",
            "slos": SPEC.model_dump()["slos"][:2],
        }
    )
    reports, snapshots = [], []
    feed = MetricsFeed(BudgetEngine(spec), mapping)
    for i, factor in enumerate((1.0, 1.5, 2.0)):
        reports.append(feed.update(30.0 * i, {"a": grown(page, factor)}))
        snapshots.append(feed.engine.snapshot())
    assert all(r.clean for r in reports), reports
    burn = snapshots[-1].burn_rates
    assert np.all(burn > 0) and np.all(np.isfinite(burn))
    assert not snapshots[-1].no_data.any()


# --------------------------------------------------------------------------------------------
# Case 2: good and total of one series move together
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda page: without(page, bucket(TTFT, "1.0")),
        lambda page: with_value(page, bucket(TTFT, "1.0"), "NaN"),
        lambda page: without(page, f"{TTFT}_count"),
    ],
    ids=["threshold-bucket-missing", "threshold-bucket-nan", "count-missing"],
)
def test_a_series_missing_half_of_its_pair_waits_for_its_next_complete_scrape(damage):
    """Before: the total counted without the good events, a false page and a budget of -99,
    then a negative burn rate, reported clean."""
    factors = [1.0, 2.0, 3.0, 4.0]
    faulty = series(factors, s2=damage(grown(VLLM, 3.0)))
    _, reports, snapshots = fed(faulty)
    _, clean_reports, clean = fed(series(factors))
    assert not reports[2].clean and reports[2].incomplete
    missing = "_count" if f"{TTFT}_count" not in damage(VLLM) else "bucket le=1"
    for message in reports[2].incomplete:
        assert message.startswith(f"a/{TTFT}{{")
        assert message.endswith(
            f": no {missing} in this scrape (its events count at its next complete scrape)"
        )
    assert reports[3].clean
    for damaged, healthy in zip(snapshots, clean, strict=True):
        assert np.all(damaged.burn_rates >= 0) and np.all(damaged.budget_remaining <= 1)
        assert np.all(damaged.alert_levels <= healthy.alert_levels)
    # Nothing lost: after the next complete scrape, every count is the clean run's.
    np.testing.assert_allclose(snapshots[-1].burn_rates, clean[-1].burn_rates, rtol=1e-12)
    np.testing.assert_allclose(snapshots[-1].budget_remaining, clean[-1].budget_remaining)


# --------------------------------------------------------------------------------------------
# Case 3: inconsistent histograms are rejected for that scrape, and named
# --------------------------------------------------------------------------------------------


def test_a_bucket_above_count_is_rejected_and_named():
    page = grown(VLLM, 3.0)
    good = float(
        next(line for line in page.splitlines() if selects(line, bucket(TTFT, "1.0"))).rsplit(
            " ", 1
        )[1]
    )
    damaged = with_value(page, f"{TTFT}_count", repr(good - 5))
    _, reports, snapshots = fed(series([1.0, 2.0, 3.0, 4.0], s2=damaged))
    assert any("above _count" in r and r.startswith("a/") for r in reports[2].inconsistent)
    assert all(np.all(s.burn_rates >= 0) and np.all(s.budget_remaining <= 1) for s in snapshots)
    _, _, clean = fed(series([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(snapshots[-1].burn_rates, clean[-1].burn_rates, rtol=1e-12)


def test_buckets_decreasing_as_le_grows_are_rejected_and_named():
    page = grown(VLLM, 3.0)
    damaged = with_value(page, bucket(TTFT, "2.5"), "1.0")
    _, reports, _ = fed(series([1.0, 2.0, 3.0], s2=damaged))
    problem = reports[2].inconsistent
    assert len(problem) == 1 and "le=2.5" in problem[0] and TTFT in problem[0], problem


def test_more_good_than_total_events_between_two_scrapes_is_rejected():
    """Each page is consistent, the step between them is not (the bucket grew more than the
    count): that step is rejected and named, counting restarts from it."""
    before = grown(VLLM, 2.0)
    count = value_of(before, f"{TTFT}_count")
    lines = []
    for line in before.splitlines():  # every TTFT bucket from 1 s up, and the count: count + 1
        le = re.search(r'le="([^"]+)"', line)
        if line.startswith(TTFT) and ("_count" in line or (le and float(le[1]) >= 1.0)):
            line = f"{line.rsplit(' ', 1)[0]} {count + 1!r}"
        lines.append(line)
    after = "\n".join(lines) + "\n"
    scrapes = [(0.0, {"a": grown(VLLM, 1.0)}), (30.0, {"a": before}), (60.0, {"a": after})]
    _, reports, snapshots = fed(scrapes)
    assert any("since the last scrape" in r for r in reports[2].inconsistent), reports[2]
    assert np.all(snapshots[-1].burn_rates >= 0)


# --------------------------------------------------------------------------------------------
# Case 4: every NaN spelling is one non-finite series, not an unreadable page
# --------------------------------------------------------------------------------------------

NAN_SPELLINGS = ["NaN", "nan", "-nan", "+nan", "-nan(ind)", "nan(snan)", "NAN(0x7ff8)"]


@pytest.mark.parametrize("spelling", NAN_SPELLINGS)
def test_nan_spellings_cost_one_series_in_the_feed(spelling):
    damaged = with_value(grown(VLLM, 2.0), f"{ITL}_count", spelling)
    _, reports, snapshots = fed(series([1.0, 2.0], s1=damaged))
    assert not reports[1].unparsable
    assert reports[1].non_finite == [
        f'a/{ITL}_count{{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"}}'
    ]
    assert snapshots[-1].burn_rates[0, 0] > 0  # the page's other series counted


@pytest.mark.parametrize("spelling", NAN_SPELLINGS)
def test_nan_spellings_cost_one_series_in_the_sidecars_reader(spelling):
    selection = SeriesSelection.of([f"{ITL}_count", f"{TTFT}_count"], {})
    samples = read_page(with_value(VLLM, f"{ITL}_count", spelling), selection)
    values = {name: value for name, _, value in samples}
    assert math.isnan(values[f"{ITL}_count"]) and values[f"{TTFT}_count"] > 0


def test_nan_spellings_in_label_values_are_left_alone():
    line = 'm{reason="nan(ind) here"} 3'
    assert normalise_nan(line) == line
    assert normalise_nan('m{a="b"} -nan(ind)') == 'm{a="b"} NaN'


# --------------------------------------------------------------------------------------------
# Any damage, any order: the properties
# --------------------------------------------------------------------------------------------

FAULTS = ("drop_bucket", "drop_count", "nan", "above_count", "decreasing", "reset", "gap", "late")


def damage(page: str, fault: str, spelling: str) -> str | None:
    """A replica's page with one fault (None: the replica is missing from the scrape)."""
    match fault:
        case "drop_bucket":
            return without(page, bucket(ITL, "0.1"))
        case "drop_count":
            return without(page, f"{TTFT}_count")
        case "nan":
            return with_value(page, bucket(TTFT, "1.0"), spelling)
        case "above_count":
            count = value_of(page, f"{TTFT}_count")
            return with_value(page, bucket(TTFT, "1.0"), repr(count + 7))
        case "decreasing":
            return with_value(page, bucket(ITL, "0.15"), "0.0")
        case "reset":
            return grown(VLLM, 0.01)
        case "gap":
            return None
    return page


REPORTED = {
    "drop_bucket": "incomplete",
    "drop_count": "incomplete",
    "nan": "non_finite",
    "above_count": "inconsistent",
    "decreasing": "inconsistent",
    "reset": "resets",
    "gap": "missing_endpoints",
    "late": "out_of_order",
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from((None, *FAULTS)), st.sampled_from(NAN_SPELLINGS)),
        min_size=3,
        max_size=8,
    )
)
def test_damaged_scrape_sequences_never_invent_budget_burn(faults):
    """Burn rates never negative, budgets never above 100 %, no alert the same traffic without
    the faults would not raise, every fault in the report."""
    faulty_feed = MetricsFeed(BudgetEngine(SPEC), "vllm")
    clean_feed = MetricsFeed(BudgetEngine(SPEC), "vllm")
    t, seen_reset = 0.0, False
    for i, (fault, spelling) in enumerate([(None, "NaN"), *faults]):
        factor = 1.0 + i
        pages = {"a": grown(VLLM, factor), "b": grown(VLLM, factor)}
        t_scrape = faulty_feed.engine.now - 15.0 if fault == "late" else t
        clean_feed.update(t_scrape, pages)
        damaged = damage(pages["a"], fault, spelling) if fault else pages["a"]
        scraped = {"b": pages["b"]} | ({} if damaged is None else {"a": damaged})
        report = faulty_feed.update(t_scrape, scraped)
        faulty, clean = faulty_feed.engine.snapshot(), clean_feed.engine.snapshot()
        assert np.all(faulty.burn_rates >= 0), (fault, faulty.burn_rates)
        assert np.all(faulty.budget_remaining <= 1.0)
        assert np.all(faulty.alert_levels <= clean.alert_levels), fault
        if fault is not None and not (fault == "reset" and seen_reset):
            assert getattr(report, REPORTED[fault]), (fault, report)
        # A replica restarted twice in a row, unseen in between, shows no drop the second time.
        seen_reset = fault == "reset" or (fault == "gap" and seen_reset)
        t += 30.0


# --------------------------------------------------------------------------------------------
# Case 1: a series the mapping names never appears
# --------------------------------------------------------------------------------------------


def test_an_slo_whose_series_never_appears_has_no_data():
    """Before: burn 0, budget 100 %, a clean report (an engine without the ITL histogram)."""
    page = without(without(VLLM, f"{ITL}_bucket"), f"{ITL}_count")
    _, reports, snapshots = fed([(30.0 * i, {"a": grown(page, 1.0 + i)}) for i in range(3)])
    assert all(r.no_data == [r.no_data[0]] and r.no_data[0].startswith("itl: ") for r in reports)
    assert snapshots[-1].no_data.tolist() == [False, True, False]
    assert snapshots[-1].budget_states()[1] == "no_data"
    assert snapshots[-1].to_dict()["budget_states"][1] == "no_data"
