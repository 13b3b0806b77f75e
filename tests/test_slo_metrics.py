"""The metrics feed and the exposition renderer: two feeds, one answer."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from slo.engine import BudgetEngine
from slo.events import TTFT_BUCKETS_S
from slo.exposition import ExpositionRenderer, render_exposition
from slo.metrics import (
    BUILTIN_MAPPINGS,
    MetricsFeed,
    _Histogram,
    _tenant_counts,
    engine_gap,
    load_mapping,
    metric_source,
    normalise_nan,
)
from slo.spec import load_spec
from slo.synthetic import synthetic_events

TTFT = "vllm:time_to_first_token_seconds"


def spec_of(slos: dict[str, dict], **slo_extra) -> object:
    items = [
        {"name": n, "objective": 0.99, "sli": {"llm": llm}, **slo_extra.get(n, {})}
        for n, llm in slos.items()
    ]
    return load_spec(
        {
            "version": "prometheus/v1",
            "service": "llm",
            "slos": items,
            "budgetpilot": {"models": {"strong": 0, "fast": 1}},
        }
    )


ALL_KINDS = spec_of(
    {
        "ttft": {"kind": "ttft", "threshold_s": 1.0},
        "ttft-strong": {"kind": "ttft", "threshold_s": 0.5},
        "e2e-fast": {"kind": "e2e", "threshold_s": 10.0},
        "ttft-tenant0": {"kind": "ttft", "threshold_s": 1.0},
        "itl-token": {"kind": "itl", "threshold_s": 0.05, "per": "token"},
        "itl-request": {"kind": "itl", "threshold_s": 0.2, "per": "request"},
        "normalized": {"kind": "normalized_latency", "threshold_s": 0.06},
        "availability": {"kind": "availability"},
        "aborts": {"kind": "availability", "bad_outcomes": ["aborted"]},
        "quality": {"kind": "quality", "mode": "loss", "max_loss": 0.1},
        "context": {"kind": "context", "max_preemptions": 0},
        "length-cuts": {"kind": "context", "truncation": False, "max_preemptions": None},
        "streaming": {"kind": "streaming", "pace_s": 0.05},
        "fair-gap": {
            "kind": "fairness",
            "base": {"kind": "ttft", "threshold_s": 1.0},
            "max_gap": 0.05,
            "min_requests": 20,
        },
        "fair-jain": {
            "kind": "fairness",
            "base": {"kind": "itl", "threshold_s": 0.05},
            "method": "jain",
            "min_jain": 0.999,
            "slice": "10m",
            "min_requests": 5,
        },
    },
    **{
        "ttft-strong": {"selectors": {"model": "strong"}},
        "e2e-fast": {"selectors": {"tier": 1}},
        "ttft-tenant0": {"selectors": {"tenant": 0}},
    },
)


def fleet_events(seconds: float, seed: int = 11) -> np.ndarray:
    """Traffic with a slow spell and one tenant served worse: every budget moves."""
    rng = np.random.default_rng(seed)
    parts = [
        synthetic_events(rng, 8000, 0.0, seconds / 2, n_replicas=2),
        synthetic_events(rng, 4000, seconds / 2, 0.75 * seconds, n_replicas=2, slowdown=2.5),
        synthetic_events(rng, 4000, 0.75 * seconds, seconds, n_replicas=2),
    ]
    events = np.concatenate(parts)
    slow_tenant = events["tenant"] == 3
    events["ttft_s"][slow_tenant] *= 1.6
    return events[np.argsort(events["t_end"], kind="stable")]


@pytest.mark.parametrize(("mapping", "seconds"), [("vllm", 3600.0), ("vllm-legacy", 1200.0)])
def test_rendered_metrics_fed_back_give_the_event_feeds_budgets(mapping, seconds):
    """Request events -> per-replica and router exposition text at each scrape -> MetricsFeed:
    the same burn rates, budgets and alerts as ingesting the events directly."""
    spec = ALL_KINDS
    direct = BudgetEngine(spec)
    feed = MetricsFeed(spec, mapping)
    if mapping == "vllm":
        kinds = {s.kind for s in feed.sources}
        assert kinds == {"histogram", "request_success", "sli_events", "tenant_sli_events"}
    replicas = {
        r: ExpositionRenderer(spec, mapping, labels={"engine": "0"}, budget_counters=False)
        for r in range(2)
    }
    router = ExpositionRenderer(spec, mapping, engine_metrics=False)

    def scrape() -> dict[str, str]:
        return {
            **{f"replica-{r}": rd.render() for r, rd in replicas.items()},
            "router": router.render(),
        }

    events = fleet_events(seconds)
    feed.update(0.0, scrape())
    for t in np.arange(60.0, seconds + 1.0, 60.0):
        batch = events[(events["t_end"] > t - 60.0) & (events["t_end"] <= t)]
        direct.ingest_events(batch)
        direct.advance_to(t)
        for r, renderer in replicas.items():
            renderer.add(batch[batch["replica"] == r])
        router.add(batch)
        report = feed.update(t, scrape())
        assert report.clean, report
        np.testing.assert_allclose(feed.engine.burn_rates(), direct.burn_rates(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            feed.engine.budget_remaining(), direct.budget_remaining(), rtol=0, atol=1e-9
        )
        np.testing.assert_array_equal(feed.engine.alert_states(), direct.alert_states())
    burning = direct.burn_rates()[:, -1] > 0
    assert burning.sum() >= len(spec.slos) - 1, direct.slo_names  # the comparison is not vacuous
    assert direct.period_counts()[1][direct.slo_names.index("fair-gap")] > 0


# --------------------------------------------------------------------------------------------
# Counter semantics of the feed, on hand-written scrapes
# --------------------------------------------------------------------------------------------

ONE_TTFT = spec_of({"ttft": {"kind": "ttft", "threshold_s": 1.0}})


def ttft_text(models: dict[str, tuple[float, float]], le: str = "1.0") -> str:
    """Exposition text of a TTFT histogram: per model (count <= 1 s, count)."""
    lines = [f"# TYPE {TTFT} histogram"]
    for model, (good, total) in models.items():
        lines += [
            f'{TTFT}_bucket{{le="{le}",model_name="{model}"}} {good}',
            f'{TTFT}_bucket{{le="+Inf",model_name="{model}"}} {total}',
            f'{TTFT}_count{{model_name="{model}"}} {total}',
            f'{TTFT}_sum{{model_name="{model}"}} 1.0',
        ]
    return "\n".join(lines) + "\n"


def counts(feed: MetricsFeed) -> tuple[float, float]:
    good, total = feed.engine.period_counts()
    return float(good[0]), float(total[0])


def test_first_scrape_is_a_baseline_then_increases_count():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (100, 120)}))
    assert counts(feed) == (0.0, 0.0)
    feed.update(30.0, ttft_text({"m": (150, 175)}))
    assert counts(feed) == (50.0, 55.0)
    np.testing.assert_allclose(feed.engine.burn_rates()[0, 0], (5 / 55) / 0.01)


def test_a_scrape_with_only_bad_events_counts_them():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (10, 10)}))
    report = feed.update(30.0, ttft_text({"m": (10, 15)}))  # le="1.0" did not move
    assert report.clean and counts(feed) == (0.0, 5.0)


def test_a_counter_that_drops_is_a_restart_from_zero():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (100, 120)}))
    feed.update(30.0, ttft_text({"m": (150, 175)}))
    report = feed.update(60.0, ttft_text({"m": (10, 12)}))
    assert counts(feed) == (60.0, 67.0)
    assert len(report.resets) == 1 and all("replica" not in r for r in report.resets)
    assert report.clean  # a restart is normal, not a problem


def test_missing_series_and_endpoints_are_skipped_and_reported():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (10, 10)}), "b": ttft_text({"m": (10, 10)})})
    report = feed.update(30.0, {"a": ttft_text({"m": (20, 20)}), "b": "# nothing yet\n"})
    assert counts(feed) == (10.0, 10.0)
    assert len(report.missing_series) == 1 and all(
        s.startswith("b/") for s in report.missing_series
    )
    report = feed.update(60.0, {"b": ttft_text({"m": (15, 16)})})
    assert report.missing_endpoints == ["a"]
    assert counts(feed) == (15.0, 16.0)  # b counted from its last value, not from zero
    assert not report.clean


def test_a_forgotten_endpoint_is_not_missing_and_comes_back_as_new():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (10, 10)}), "b": ttft_text({"m": (10, 10)})})
    feed.forget(["a"])
    report = feed.update(30.0, {"b": ttft_text({"m": (12, 12)})})
    assert report.clean and counts(feed) == (2.0, 2.0)
    feed.update(60.0, {"a": ttft_text({"m": (50, 60)}), "b": ttft_text({"m": (12, 12)})})
    assert counts(feed) == (2.0, 2.0)  # a's first page again is a baseline, not an increase


def test_nan_values_are_ignored_and_reported():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (10, 10)}))
    report = feed.update(30.0, ttft_text({"m": ("NaN", 12)}))
    assert report.non_finite == [f'default/{TTFT}_bucket{{le="1.0",model_name="m"}}']
    assert counts(feed) == (0.0, 0.0)  # good and total of the series wait together
    feed.update(60.0, ttft_text({"m": (13, 14)}))
    assert counts(feed) == (3.0, 4.0)  # both resume from their last complete scrape


def test_duplicate_series_keep_the_first_and_are_reported():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (0, 0)}))
    text = ttft_text({"m": (5, 6)}) + f'{TTFT}_count{{model_name="m"}} 600\n'
    report = feed.update(30.0, text)
    assert report.duplicates == [f'default/{TTFT}_count{{model_name="m"}}']
    assert counts(feed) == (5.0, 6.0)


def test_unparsable_scrapes_are_reported_not_raised():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (0, 0)}), "b": ttft_text({"m": (0, 0)})})
    report = feed.update(
        30.0, {"a": ttft_text({"m": (4, 5)}), "b": f"{TTFT}_count{{model_name=m}} 3\n"}
    )
    assert len(report.unparsable) == 1 and report.unparsable[0].startswith("b: ")
    assert counts(feed) == (4.0, 5.0)


def test_new_endpoints_start_as_a_baseline_new_series_from_zero():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (1, 1)})})
    feed.update(30.0, {"a": ttft_text({"m": (1, 1), "n": (3, 4)}), "b": ttft_text({"m": (50, 50)})})
    assert counts(feed) == (3.0, 4.0)  # the new model on a: counted; b's history: not ours
    feed.update(60.0, {"a": ttft_text({"m": (1, 1), "n": (3, 4)}), "b": ttft_text({"m": (52, 53)})})
    assert counts(feed) == (5.0, 7.0)


def test_a_threshold_that_is_not_a_bucket_of_the_engine_is_reported():
    feed = MetricsFeed(ONE_TTFT, "sglang")
    name = "sglang:time_to_first_token_seconds"
    feed.update(0.0, ttft_text({"m": (0, 0)}, le="0.9").replace(TTFT, name))
    report = feed.update(30.0, ttft_text({"m": (5, 6)}, le="0.9").replace(TTFT, name))
    assert report.inexact == [f"ttft: 1.0 is not a bucket boundary of {name}"]
    assert counts(feed) == (0.0, 0.0)


def test_parsed_samples_are_accepted():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(
        0.0,
        [
            (f"{TTFT}_bucket", {"le": "1.0", "model_name": "m"}, 0.0),
            (f"{TTFT}_count", {"model_name": "m"}, 0.0),
        ],
    )
    feed.update(
        30.0,
        [
            Sample(f"{TTFT}_bucket", {"le": "1.0", "model_name": "m"}, 7.0),
            Sample(f"{TTFT}_count", {"model_name": "m"}, 9.0),
        ],
    )
    assert counts(feed) == (7.0, 9.0)


def test_model_selectors_filter_the_model_label():
    spec = spec_of(
        {"fast": {"kind": "ttft", "threshold_s": 1.0}}, fast={"selectors": {"model": "fast"}}
    )
    feed = MetricsFeed(spec)
    feed.update(0.0, ttft_text({"strong": (0, 0), "fast": (0, 0)}))
    feed.update(30.0, ttft_text({"strong": (10, 10), "fast": (1, 4)}))
    assert counts(feed) == (1.0, 4.0)


def test_kv_cache_usage_is_read_per_endpoint():
    feed = MetricsFeed(ONE_TTFT, "vllm-legacy")
    gauge = "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    gauge += (
        'vllm:gpu_cache_usage_perc{engine="0"} 0.5\nvllm:gpu_cache_usage_perc{engine="1"} 0.7\n'
    )
    feed.update(0.0, {"a": gauge, "b": gauge.replace("0.5", "0.1")})
    assert feed.kv_cache_usage() == pytest.approx({"a": 0.6, "b": 0.4})
    feed.forget(["a"])  # a replica scaled away
    assert feed.kv_cache_usage() == pytest.approx({"b": 0.4})


def test_a_feed_can_drive_an_existing_engine():
    engine = BudgetEngine(ONE_TTFT)
    feed = MetricsFeed(engine)
    feed.update(0.0, ttft_text({"m": (0, 0)}))
    feed.update(30.0, ttft_text({"m": (1, 2)}))
    assert feed.engine is engine and engine.now == 30.0 and counts(feed) == (1.0, 2.0)


# --------------------------------------------------------------------------------------------
# Mappings and sources
# --------------------------------------------------------------------------------------------


def test_builtin_mappings_name_vllm_and_sglang_metrics():
    assert load_mapping("vllm").itl == "vllm:inter_token_latency_seconds"
    assert load_mapping("vllm-legacy").itl == "vllm:time_per_output_token_seconds"
    assert load_mapping("vllm-legacy").kv_cache_usage == "vllm:gpu_cache_usage_perc"
    assert load_mapping("sglang").ttft == "sglang:time_to_first_token_seconds"
    assert load_mapping("sglang-legacy").itl == "sglang:time_per_output_token_seconds"
    assert set(BUILTIN_MAPPINGS) == {
        "vllm", "vllm-legacy", "sglang", "sglang-legacy", "llamacpp", "tgi"
    }  # fmt: skip


def test_builtin_mappings_name_the_schedulers_gauges_and_counters():
    scheduler = {
        name: (m.waiting, m.running, m.preemptions, m.finished)
        for name, m in BUILTIN_MAPPINGS.items()
    }
    vllm = (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:num_preemptions_total",
        "vllm:request_success_total",
    )
    sglang = (
        "sglang:num_queue_reqs",
        "sglang:num_running_reqs",
        "sglang:num_retracted_requests_total",  # not the gauge sglang:num_retracted_reqs
        "sglang:num_requests_total",
    )
    assert scheduler == {
        "vllm": vllm,
        "vllm-legacy": vllm,
        "sglang": sglang,
        "sglang-legacy": sglang,
        "llamacpp": ("llamacpp:requests_deferred", "llamacpp:requests_processing", None, None),
        "tgi": ("tgi_queue_size", "tgi_batch_current_size", None, "tgi_request_success"),
    }
    older_sglang = load_mapping({"base": "sglang", "preemptions": None})
    assert older_sglang.preemptions is None and older_sglang.waiting == "sglang:num_queue_reqs"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ({"preemptions": 5}, "key 'preemptions': expected a non-empty string or null, got 5"),
        ({"waiting": ""}, "key 'waiting': expected a non-empty string or null"),
        ({"model_label": None}, "key 'model_label': expected a non-empty string, got None"),
        (
            {"ttft": "vllm:time_to_first_token_seconds_bucket"},
            "histogram is named by its base name ('vllm:time_to_first_token_seconds')",
        ),
        ({"e2e": "vllm:e2e_request_latency_seconds_count"}, "its base name ('vllm:e2e_request"),
        ({"itl": "vllm:inter_token_latency_seconds_sum"}, "its base name ('vllm:inter_token"),
        ({"base": "trtllm"}, "base 'trtllm' is not a built-in mapping (vllm, vllm-legacy"),
        ({"base": ["sglang"]}, "base ['sglang'] is not a built-in mapping"),
        ({"ttfb": "x", 3: "y"}, "unknown metric mapping keys: ['3', 'ttfb']"),
    ],
)
def test_bad_mappings_are_refused_naming_the_key(source, words):
    with pytest.raises(ValueError) as err:
        load_mapping(source)
    assert words in str(err.value)


def test_mappings_load_from_dicts_and_files(tmp_path):
    custom = load_mapping({"base": "sglang", "model_label": "model", "ttft": "my:ttft_seconds"})
    assert (custom.ttft, custom.model_label, custom.e2e) == (
        "my:ttft_seconds",
        "model",
        "sglang:e2e_request_latency_seconds",
    )
    path = tmp_path / "mapping.yaml"
    path.write_text("base: vllm\ntpot_request: null\n")
    assert load_mapping(path).tpot_request is None
    with pytest.raises(ValueError, match="unknown metric mapping keys"):
        load_mapping({"ttfb": "x"})
    with pytest.raises(ValueError, match="not a built-in"):
        load_mapping("trtllm")
    path.write_text("base: [vllm\n")
    with pytest.raises(ValueError, match=r"mapping.yaml: not valid YAML"):
        load_mapping(path)


@pytest.mark.parametrize(
    ("llm", "selectors", "mapping", "kind"),
    [
        ({"kind": "ttft", "threshold_s": 1.0}, {}, "vllm", "histogram"),
        ({"kind": "ttft", "threshold_s": 1.0}, {"model": "fast"}, "vllm", "histogram"),
        ({"kind": "ttft", "threshold_s": 1.0}, {"tenant": 1}, "vllm", "sli_events"),
        ({"kind": "ttft", "threshold_s": 1.0}, {"intended_tier": 0}, "vllm", "sli_events"),
        ({"kind": "itl", "threshold_s": 0.1}, {}, "sglang", "histogram"),
        ({"kind": "itl", "threshold_s": 0.1, "per": "request"}, {}, "vllm", "sli_events"),
        ({"kind": "streaming", "pace_s": 0.1}, {}, "vllm", "histogram"),
        ({"kind": "streaming", "pace_s": 0.1}, {}, "vllm-legacy", "sli_events"),
        (
            {"kind": "context", "truncation": False, "max_preemptions": None},
            {},
            "vllm",
            "request_success",
        ),
        (
            {"kind": "context", "truncation": False, "max_preemptions": None},
            {},
            "sglang",
            "sli_events",
        ),
        ({"kind": "context"}, {}, "vllm", "sli_events"),
        ({"kind": "availability"}, {}, "vllm", "sli_events"),
        (
            {"kind": "fairness", "base": {"kind": "ttft", "threshold_s": 1.0}},
            {},
            "vllm",
            "tenant_sli_events",
        ),
    ],
)
def test_metric_source_prefers_exact_engine_metrics(llm, selectors, mapping, kind):
    spec = spec_of({"x": llm}, x={"selectors": selectors})
    source = metric_source(spec.slos[0], spec, load_mapping(mapping))
    assert source.kind == kind
    assert source.exact_from_engine == (kind in ("histogram", "request_success"))


#: A mapping of the required names only: engines that export no histogram at all.
BARE = {
    "name": "bare",
    "model_label": "model",
    "sli_events": "budgetpilot:sli_events_total",
    "tenant_sli_events": "budgetpilot:tenant_sli_events_total",
}
TTFT_1S = {"kind": "ttft", "threshold_s": 1.0}


@pytest.mark.parametrize(
    ("llm", "selectors", "gap"),
    [
        ({"kind": "fairness", "base": TTFT_1S}, {}, "fairness is judged per tenant"),
        (TTFT_1S, {"tenant": [0]}, "engines label no tenant or intended tier"),
        (TTFT_1S, {"intended_tier": [0]}, "engines label no tenant or intended tier"),
        (TTFT_1S, {}, "mapping 'bare' names no ttft histogram"),
        ({"kind": "e2e", "threshold_s": 5.0}, {}, "mapping 'bare' names no e2e histogram"),
        (
            {"kind": "streaming", "pace_s": 0.05},
            {},
            "mapping 'bare' names no tpot_request histogram",
        ),
        ({"kind": "itl", "threshold_s": 0.1, "per": "token"}, {}, "names no itl histogram"),
        ({"kind": "itl", "threshold_s": 0.1, "per": "request"}, {}, "do not export itl events"),
        ({"kind": "availability"}, {}, "engines do not export availability events"),
    ],
)
def test_engine_gap_says_why_engine_metrics_cannot_give_an_sli(llm, selectors, gap):
    spec = spec_of({"x": llm}, x={"selectors": selectors})
    assert engine_gap(spec.slos[0], load_mapping(BARE)).endswith(gap)


# --------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------


def test_rendered_text_is_vllm_format_with_vllm_buckets():
    events = synthetic_events(np.random.default_rng(5), 3000, 0.0, 60.0)
    text = render_exposition(events, ALL_KINDS, labels={"engine": "0"})
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ttft = families[TTFT]
    assert ttft.type == "histogram"
    bounds = sorted({float(s.labels["le"]) for s in ttft.samples if s.name.endswith("_bucket")})
    assert bounds == [*TTFT_BUCKETS_S, float("inf")]
    count = sum(s.value for s in ttft.samples if s.name.endswith("_count"))
    assert count == np.count_nonzero(~np.isnan(events["ttft_s"]) & (events["tier"] >= 0))
    assert {s.labels["model_name"] for s in ttft.samples} == {"strong", "fast"}
    success = families["vllm:request_success"]
    assert {s.labels["finished_reason"] for s in success.samples} <= {"stop", "length", "abort"}
    assert sum(s.value for s in success.samples) == np.count_nonzero(events["tier"] >= 0)
    events_family = families["budgetpilot:sli_events"]
    names = {s.labels["slo"] for s in events_family.samples}
    assert names == {s.name for s in ALL_KINDS.slos} - {"fair-gap", "fair-jain"}
    tenants = families["budgetpilot:tenant_sli_events"]
    assert {s.labels["tenant"] for s in tenants.samples} == {"0", "1", "2", "3"}


def test_renderer_parts_can_be_switched_off():
    events = synthetic_events(np.random.default_rng(5), 100, 0.0, 60.0)
    replica = render_exposition(events, ALL_KINDS, budget_counters=False)
    router = render_exposition(events, ALL_KINDS, engine_metrics=False)
    assert "budgetpilot:" not in replica and "vllm:" in replica
    assert "vllm:" not in router and "budgetpilot:sli_events_total" in router


def test_a_counter_fed_slo_without_its_series_has_no_data_not_zero():
    spec = spec_of({"a": {"kind": "availability"}, "b": {"kind": "availability"}, "ttft": TTFT_1S})
    feed = MetricsFeed(spec, "vllm")
    for t, good in ((30.0, 10), (60.0, 20)):
        report = feed.update(
            t,
            f'budgetpilot:sli_events_total{{slo="a",result="good"}} {good}\n'
            'budgetpilot:sli_events_total{slo="a",result="bad"} 1\n',
        )
    assert feed.measured.tolist() == [True, False, False]
    assert report.no_data == [
        "b: no series of budgetpilot:sli_events_total for it on any endpoint",
        "ttft: no complete series of vllm:time_to_first_token_seconds (bucket le=1 and _count) "
        "on any endpoint",
    ]


def test_tenant_counts_read_good_and_bad_of_known_tenants_only():
    rows = [
        ({"slo": "other", "tenant": "1", "result": "good"}, 100.0),  # another SLO's
        ({"slo": "fair", "result": "good"}, 100.0),  # no tenant label
        ({"slo": "fair", "tenant": "x", "result": "good"}, 100.0),  # not a tenant number
        ({"slo": "fair", "tenant": "4", "result": "good"}, 100.0),  # beyond max_tenants
        ({"slo": "fair", "tenant": "0", "result": "good"}, 5.0),
        ({"slo": "fair", "tenant": "0", "result": "bad"}, 3.0),
        ({"slo": "fair", "tenant": "1", "result": "ignored"}, 7.0),  # neither good nor bad
        ({"slo": "fair", "tenant": "1", "result": "good"}, 2.0),
    ]
    counts = _tenant_counts(rows, "fair", 4)
    np.testing.assert_array_equal(counts, [[5.0, 8.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]])


def sli_events_page(good: float) -> str:
    return f'budgetpilot:sli_events_total{{slo="a",result="good"}} {good}\n'


def test_a_forgotten_endpoint_leaves_the_counters_of_the_others_as_they_were():
    feed = MetricsFeed(spec_of({"a": {"kind": "availability"}}), "vllm")
    feed.update(0.0, {"x": sli_events_page(10), "y": sli_events_page(10)})
    feed.forget(["x"])
    report = feed.update(30.0, {"y": sli_events_page(12)})
    assert report.clean and counts(feed) == (2.0, 2.0)
    feed.update(60.0, {"x": sli_events_page(50), "y": sli_events_page(12)})
    assert counts(feed) == (2.0, 2.0)  # x's first page again is a baseline


@pytest.mark.parametrize(
    ("buckets", "problem"),
    [
        ({0.1: 2.0, 0.5: 4.0, 1.0: 6.0}, None),
        ({0.1: 5.0, 0.5: 3.0, 1.0: 6.0}, "bucket le=0.5 (3) below bucket le=0.1 (5)"),
        ({0.1: 2.0, 0.5: 4.0, 1.0: 11.0}, "bucket le=1 (11) above _count (10)"),
    ],
)
def test_an_impossible_histogram_is_named(buckets, problem):
    assert _Histogram(count=10.0, buckets=buckets).inconsistency() == problem


# --------------------------------------------------------------------------------------------
# Reports, restarts and incomplete series named exactly; pages the mapping reads only in part
# --------------------------------------------------------------------------------------------

TTFT_SERIES = f'default/{TTFT}{{model_name="m"}}'


def without_count(text: str) -> str:
    """A TTFT page whose ``_count`` lines are missing (half of each series' pair)."""
    return "".join(line + "\n" for line in text.splitlines() if "_count" not in line)


@pytest.mark.parametrize(
    ("pages", "endpoints"),
    [
        (ttft_text({"m": (1, 2)}), 1),
        ({"a": ttft_text({"m": (1, 2)}), "b": ttft_text({"m": (3, 4)})}, 2),
        ([(f"{TTFT}_count", {"model_name": "m"}, 2.0)], 1),
    ],
    ids=["one-text", "two-endpoints", "samples"],
)
def test_the_report_says_when_and_how_many_endpoints_were_scraped(pages, endpoints):
    report = MetricsFeed(ONE_TTFT).update(30, pages)
    assert report.time == 30.0 and isinstance(report.time, float)
    assert report.endpoints == endpoints


def test_a_late_scrape_is_reported_with_both_times():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(60.0, ttft_text({"m": (1, 2)}))
    report = feed.update(30.0, ttft_text({"m": (1, 2)}))
    assert report.out_of_order == ["scrape time 30 is before the last one (60): counted then"]


def test_a_feed_before_its_first_scrape_has_measured_no_slo():
    """``measured`` is a mask over the SLOs (the sidecar indexes with it) from the start."""
    feed = MetricsFeed(ALL_KINDS)
    names = np.asarray(feed.engine.slo_names)
    assert names[feed.measured].tolist() == []
    assert names[~feed.measured].tolist() == list(feed.engine.slo_names)


@pytest.mark.parametrize(
    ("before", "after"),
    [((5, 100), (50, 60)), ((90, 100), (10, 150)), ((90, 100), (10, 12))],
    ids=["count-fell", "bucket-fell", "both-fell"],
)
def test_a_histogram_series_that_falls_restarted_and_counts_from_zero(before, after):
    """Either half of the pair falling is a restart of the engine, named in the report."""
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": before}))
    report = feed.update(30.0, ttft_text({"m": after}))
    assert counts(feed) == after
    assert report.resets == [TTFT_SERIES] and report.clean


def test_more_good_than_total_events_between_two_scrapes_is_named_with_both_increases():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (10, 20)}))
    report = feed.update(30.0, ttft_text({"m": (17, 25)}))  # each page consistent, not the step
    assert report.inconsistent == [
        f"{TTFT_SERIES}: 7 events within le=1 since the last scrape but 5 in all"
    ]
    assert counts(feed) == (0.0, 0.0)


@pytest.mark.parametrize("forgotten", [[], ["a"]], ids=["none-forgotten", "other-forgotten"])
def test_a_series_first_seen_incomplete_starts_as_a_baseline(forgotten):
    """A replica whose first page lacks ``_count`` has its history counted at no later scrape
    (before: 905 good of 1010 at once, a false burn), also when another replica is forgotten."""
    feed = MetricsFeed(ONE_TTFT)
    report = feed.update(
        0.0, {"a": ttft_text({"m": (0, 0)}), "b": without_count(ttft_text({"m": (900, 1000)}))}
    )
    assert report.incomplete
    feed.forget(forgotten)
    feed.update(30.0, {"a": ttft_text({"m": (0, 0)}), "b": ttft_text({"m": (905, 1010)})})
    assert counts(feed) == (0.0, 0.0)
    feed.update(60.0, {"a": ttft_text({"m": (0, 0)}), "b": ttft_text({"m": (915, 1020)})})
    assert counts(feed) == (10.0, 10.0)


def test_a_bucket_without_le_is_skipped_not_fatal():
    feed = MetricsFeed(ONE_TTFT)
    stray = f'{TTFT}_bucket{{model_name="m"}} 3\n'
    feed.update(0.0, ttft_text({"m": (0, 0)}) + stray)
    report = feed.update(30.0, ttft_text({"m": (4, 5)}) + stray)
    assert counts(feed) == (4.0, 5.0) and report.clean


def request_success_page(models: dict[str, tuple[int, int]]) -> str:
    """vLLM's request counter: per model, (requests stopped, requests cut at max length)."""
    lines = ["# TYPE vllm:request_success_total counter"]
    for model, by_reason in models.items():
        for reason, value in zip(("stop", "length"), by_reason, strict=True):
            labels = f'finished_reason="{reason}",model_name="{model}"'
            lines.append(f"vllm:request_success_total{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


def test_model_selectors_filter_the_request_counters():
    spec = spec_of(
        {"cuts": {"kind": "context", "truncation": False, "max_preemptions": None}},
        cuts={"selectors": {"model": "fast"}},
    )
    feed = MetricsFeed(spec)
    assert feed.sources[0].kind == "request_success"
    feed.update(0.0, request_success_page({"strong": (0, 0), "fast": (0, 0)}))
    feed.update(30.0, request_success_page({"strong": (50, 50), "fast": (9, 1)}))
    assert counts(feed) == (9.0, 10.0)


AVAILABILITY = spec_of({"a": {"kind": "availability"}})


@pytest.mark.parametrize("mapping", ["tgi", {"kv_cache_usage": None}], ids=["tgi", "custom"])
def test_pages_of_an_engine_without_a_kv_cache_gauge_are_read(mapping):
    feed = MetricsFeed(AVAILABILITY, mapping)
    assert feed.mapping.kv_cache_usage is None
    for t, good in ((0.0, 10), (30.0, 14)):
        report = feed.update(t, f"process_cpu_seconds_total 3\n{sli_events_page(good)}")
    assert report.clean and counts(feed) == (4.0, 4.0)


def test_a_counter_named_without_total_reads_the_same_from_text_and_from_samples():
    """Exporters such as metrics-exporter-prometheus (TGI's) name counters without ``_total``:
    the page's ``# TYPE ... counter`` must not rename the series the mapping names (before: the
    text page had no data, the same samples parsed counted)."""
    name = "router_sli_events"
    mapping = {"sli_events": name}

    def text(good: int) -> str:
        return f'# TYPE {name} counter\n{name}{{slo="a",result="good"}} {good}\n'

    def samples(good: int) -> list:
        return [(name, {"slo": "a", "result": "good"}, float(good))]

    for page in (text, samples):
        feed = MetricsFeed(AVAILABILITY, mapping)
        feed.update(0.0, page(10))
        report = feed.update(30.0, page(15))
        assert report.clean and counts(feed) == (5.0, 5.0), page.__name__


def test_the_report_counts_the_series_it_read():
    """Wanted series only (no ``_sum``), each once: a NaN value and a duplicate are not read."""
    feed = MetricsFeed(ONE_TTFT)
    page = ttft_text({"m": (1, 2), "n": (3, 4)})  # per model: two buckets and the count
    assert feed.update(0.0, {"a": page, "b": page}).series == 12
    damaged = ttft_text({"m": ("NaN", 2), "n": (3, 4)}) + f'{TTFT}_count{{model_name="n"}} 9\n'
    assert feed.update(30.0, {"a": damaged, "b": page}).series == 11


def test_kv_cache_usage_is_the_mean_of_the_finite_gauges_only():
    feed = MetricsFeed(ONE_TTFT, "vllm")
    gauges = 'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} NaN\n'
    feed.update(0.0, ttft_text({"m": (90, 100)}) + gauges)
    assert feed.kv_cache_usage() == {"default": 0.5}


# --------------------------------------------------------------------------------------------
# Counters restarted or missing, endpoints missing, selectors combined, NaN spellings
# --------------------------------------------------------------------------------------------

SLI_EVENTS = "budgetpilot:sli_events_total"


def sli_events_lines(**by_result: float) -> str:
    return "".join(f'{SLI_EVENTS}{{slo="a",result="{r}"}} {v}\n' for r, v in by_result.items())


@pytest.mark.parametrize(
    ("after", "resets", "counted"),
    [(10, [], (0.0, 0.0)), (4, [f'default/{SLI_EVENTS}{{result="good",slo="a"}}'], (4.0, 4.0))],
    ids=["unchanged", "fell"],
)
def test_a_counter_that_falls_is_a_restart_named_in_the_report(after, resets, counted):
    feed = MetricsFeed(AVAILABILITY)
    feed.update(0.0, sli_events_lines(good=10))
    report = feed.update(30.0, sli_events_lines(good=after))
    assert report.resets == resets and counts(feed) == counted


def test_a_counter_series_missing_from_a_page_is_named_not_those_of_a_missing_endpoint():
    feed = MetricsFeed(AVAILABILITY)
    feed.update(0.0, {"x": sli_events_lines(good=10, bad=1), "y": sli_events_lines(good=5)})
    report = feed.update(30.0, {"x": sli_events_lines(good=12)})
    assert report.missing_series == [f'x/{SLI_EVENTS}{{result="bad",slo="a"}}']
    assert report.missing_endpoints == ["y"]
    assert counts(feed) == (2.0, 2.0)


def test_a_histogram_series_missing_from_a_page_is_named():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (1, 1), "n": (1, 1)})})
    report = feed.update(30.0, {"a": ttft_text({"m": (2, 3)})})
    assert report.missing_series == [f'a/{TTFT}{{model_name="n"}}']
    assert counts(feed) == (1.0, 2.0)


def test_an_endpoint_missing_for_several_scrapes_is_reported_each_time_then_counts_on():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (10, 10)}), "b": ttft_text({"m": (10, 10)})})
    for t in (30.0, 60.0):
        report = feed.update(t, {"b": ttft_text({"m": (10, 10)})})
        assert report.missing_endpoints == ["a"], t
    feed.update(90.0, {"a": ttft_text({"m": (15, 17)}), "b": ttft_text({"m": (10, 10)})})
    assert counts(feed) == (5.0, 7.0)  # from a's last value, not a new baseline


def test_an_inconsistent_series_does_not_stop_the_others_counting():
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"a": ttft_text({"m": (10, 10)}), "b": ttft_text({"m": (10, 10)})})
    report = feed.update(30.0, {"a": ttft_text({"m": (20, 15)}), "b": ttft_text({"m": (14, 15)})})
    assert report.inconsistent and report.inconsistent[0].startswith("a/")
    assert counts(feed) == (4.0, 5.0)


def test_a_page_lacking_the_threshold_bucket_is_incomplete_not_inexact():
    """The threshold was a bucket boundary of the engine: a page without that bucket is
    damaged (its events wait), not a spec that the engine's buckets cannot measure."""
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, ttft_text({"m": (1, 2)}))
    damaged = ttft_text({"m": (2, 3)}).replace('le="1.0"', 'le="0.5"')
    report = feed.update(30.0, damaged)
    assert report.inexact == []
    assert report.incomplete == [
        f"{TTFT_SERIES}: no bucket le=1 in this scrape (its events count at its next complete "
        "scrape)"
    ]


def test_model_and_tier_selectors_together_select_the_models_in_both():
    spec = spec_of(
        {"strong": {"kind": "ttft", "threshold_s": 1.0}},
        strong={"selectors": {"model": "strong", "tier": [0, 1]}},
    )
    feed = MetricsFeed(spec)
    assert feed.sources[0].models == ("strong",)
    feed.update(0.0, ttft_text({"strong": (0, 0), "fast": (0, 0)}))
    feed.update(30.0, ttft_text({"strong": (3, 4), "fast": (10, 10)}))
    assert counts(feed) == (3.0, 4.0)


def test_measured_is_the_mask_of_the_slos_the_last_update_measured():
    spec = spec_of({"a": {"kind": "availability"}, "b": {"kind": "availability"}})
    feed = MetricsFeed(spec)
    feed.update(0.0, sli_events_lines(good=1))
    assert np.asarray(feed.engine.slo_names)[feed.measured].tolist() == ["a"]


def test_an_slo_without_an_llm_sli_has_no_metric_source():
    spec = load_spec(
        {
            "version": "prometheus/v1",
            "service": "gateway",
            "slos": [
                {
                    "name": "http",
                    "objective": 99.9,
                    "sli": {"events": {"error_query": "sum(e)", "total_query": "sum(t)"}},
                }
            ],
        }
    )
    with pytest.raises(ValueError, match="SLO 'http' has no llm SLI"):
        metric_source(spec.slos[0], spec, load_mapping("vllm"))


def test_a_mapping_from_a_dict_or_file_is_named_custom_unless_named(tmp_path):
    path = tmp_path / "mapping.yaml"
    path.write_text("ttft: my:ttft_seconds\n")
    assert load_mapping({"ttft": "my:ttft_seconds"}).name == "custom"
    assert load_mapping(path).name == "custom"
    assert load_mapping({"name": "router", "ttft": "my:ttft_seconds"}).name == "router"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "unknown metric mapping 'MISSING': not a built-in (vllm, vllm-legacy, sglang,"),
        (b"- vllm\n", "metric mapping file PATH must hold a mapping"),
        (b"ttft: caf\xe9\n", "metric mapping file PATH: line 1: not UTF-8 text"),
    ],
    ids=["missing", "a-list", "not-utf8"],
)
def test_bad_mapping_files_are_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "mapping.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_mapping(path)
    assert words.replace("MISSING", str(path)).replace("PATH", str(path)) in str(err.value)


def test_an_unreadable_mapping_file_is_refused_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "mapping.yaml"
    path.write_text("base: vllm\n")

    def unreadable(_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("slo.metrics.read_text", unreadable)
    with pytest.raises(ValueError, match=f"metric mapping file {path}: cannot read it: "):
        load_mapping(path)


@pytest.mark.parametrize(
    ("line", "normalised"),
    [
        ("m -nan(ind)", "m NaN"),
        ("m 3", "m 3"),
        ('m{a="b"} nan(snan)', 'm{a="b"} NaN'),
        ('m{reason="a nan(ind) b"} 3', 'm{reason="a nan(ind) b"} 3'),
        ('m{reason="} nan(ind) x"} 3', 'm{reason="} nan(ind) x"} 3'),
    ],
)
def test_c_nan_spellings_of_values_are_normalised_label_values_left_alone(line, normalised):
    assert normalise_nan(line) == normalised


def test_a_forgotten_endpoint_back_with_fewer_series_has_none_missing():
    """Back after ``forget``, an endpoint is new: the series it had before are not missing."""
    spec = spec_of({"ttft": {"kind": "ttft", "threshold_s": 1.0}, "a": {"kind": "availability"}})
    feed = MetricsFeed(spec)
    feed.update(0.0, {"x": ttft_text({"m": (1, 1), "n": (1, 1)}) + sli_events_lines(good=1, bad=1)})
    feed.forget(["x"])
    report = feed.update(30.0, {"x": ttft_text({"m": (2, 2)}) + sli_events_lines(good=2)})
    assert report.missing_series == [] and report.clean


def test_a_forgotten_endpoints_incomplete_series_counts_from_zero_when_it_comes_back():
    """A series incomplete before ``forget`` and seen again, complete, after the endpoint came
    back (new) is a new series on a known endpoint: counted from zero, not a baseline."""
    feed = MetricsFeed(ONE_TTFT)
    feed.update(0.0, {"x": without_count(ttft_text({"m": (900, 1000)}))})
    feed.forget(["x"])
    feed.update(30.0, {"x": ttft_text({"n": (0, 0)})})  # x back: a baseline
    feed.update(60.0, {"x": ttft_text({"n": (0, 0), "m": (5, 6)})})
    assert counts(feed) == (5.0, 6.0)
