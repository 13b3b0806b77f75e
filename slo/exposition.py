"""Render request events as engine metrics in Prometheus exposition format (the engine twin).

:class:`ExpositionRenderer` accumulates request events and renders what a vLLM replica (engine
histograms and ``request_success_total``, with vLLM's bucket boundaries and label names) and a
budget-aware router (budgetpilot counters, see :mod:`slo.metrics`) would expose after serving
them. It goes through prometheus_client for real: a custom collector of metric families
registered in a ``CollectorRegistry`` and serialised by ``generate_latest``. A collector over
numpy counts is used instead of ``Histogram.observe`` because the twin renders millions of
inter-token gaps that the contract already holds as per-request bucket counts.

What is rendered follows vLLM: latencies of requests that produced a first token, grouped by
the model of the tier that served them; inter-token gaps per gap; one ``request_success`` per
request that reached an engine (``stop``/``length`` when served, ``abort`` when aborted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from slo.events import (
    E2E_BUCKETS_S,
    ITL_BUCKETS_S,
    SGLANG_GENERATION_TOKENS_BUCKETS,
    SGLANG_PROMPT_TOKENS_BUCKETS,
    TTFT_BUCKETS_S,
    Outcome,
    Reason,
    finished_by_engine,
    length_buckets_1_2_5,
)
from slo.metrics import MetricMapping, load_mapping
from slo.sli import EventBatch, SLIClassifier, e2e_s, itl_gap_counts, tpot_request_s, ttft_s
from slo.spec import ServiceSpec, load_spec

#: (mapping attribute, measure, bucket bounds, HELP text) of a per-request histogram.
RequestHistogram = tuple[str, Callable[[EventBatch], np.ndarray], tuple[float, ...], str]
_REQUEST_HISTOGRAMS: tuple[RequestHistogram, ...] = (
    ("ttft", ttft_s, TTFT_BUCKETS_S, "Histogram of time to first token in seconds."),
    ("e2e", e2e_s, E2E_BUCKETS_S, "Histogram of e2e request latency in seconds."),
    (
        "tpot_request",
        tpot_request_s,
        ITL_BUCKETS_S,
        "Histogram of time_per_output_token_seconds per request.",
    ),
)
_ITL_HELP = "Histogram of inter-token latency in seconds."
_FINISHED_REASONS = ("stop", "length", "abort")
#: The model length the twin's engines are started with (vLLM's ``--max-model-len``): the last
#: bucket bound of vLLM's length histograms.
DEFAULT_MAX_MODEL_LEN = 32768


def _tokens_of_finished(field: str) -> Callable[[EventBatch], np.ndarray]:
    """A measure: ``field`` of the requests an engine finished, NaN for the others."""

    def measure(batch: EventBatch) -> np.ndarray:
        finished = finished_by_engine(batch.events)
        return np.where(finished, batch.column(field).astype(np.float64), np.nan)

    return measure


def length_histograms(mapping: MetricMapping, max_model_len: int) -> tuple[RequestHistogram, ...]:
    """The prompt and generation length histograms of finished requests, with the engine's
    default buckets: SGLang's fixed lists for ``sglang:`` names, vLLM's 1-2-5 series up to
    ``max_model_len`` otherwise."""
    if (mapping.prompt_tokens or "").startswith("sglang:"):
        prompt, generation = SGLANG_PROMPT_TOKENS_BUCKETS, SGLANG_GENERATION_TOKENS_BUCKETS
        helps = ("Histogram of prompt token length.", "Histogram of generation token length.")
    else:
        prompt = generation = length_buckets_1_2_5(max_model_len)
        helps = ("Number of prefill tokens processed.", "Number of generation tokens processed.")
    return (
        ("prompt_tokens", _tokens_of_finished("prompt_tokens"), prompt, helps[0]),
        ("generation_tokens", _tokens_of_finished("output_tokens"), generation, helps[1]),
    )


class ExpositionRenderer:
    """Accumulates request events; :meth:`render` returns the exposition text of their metrics.

    Parameters
    ----------
    spec:
        The SLO spec (budgetpilot counters are per SLO; ``budgetpilot.models`` names tiers).
    mapping:
        Metric names to render (built-in name, file, dict or :class:`MetricMapping`).
    labels:
        Constant labels added to every series (e.g. ``{"engine": "0"}``).
    engine_metrics:
        Render the engine's own metrics (what a replica exposes).
    budget_counters:
        Render the budgetpilot counters (what a budget-aware router exposes).
    tiers:
        Tiers whose engine series exist from the start, at zero, as an engine creates the
        labelled series of the model it serves when it starts (others appear with their first
        request).
    tenants:
        Number of tenants whose fairness counters exist from the start, at zero, as a router
        configured with its tenants creates them (others appear with their first request).
    max_model_len:
        The engine's longest sequence: the last bound of vLLM's length histograms.
    """

    def __init__(
        self,
        spec: ServiceSpec | str | Path,
        mapping: str | Path | Mapping[str, Any] | MetricMapping = "vllm",
        *,
        labels: Mapping[str, str] | None = None,
        engine_metrics: bool = True,
        budget_counters: bool = True,
        tiers: Iterable[int] = (),
        tenants: int = 0,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    ) -> None:
        self.spec = load_spec(spec)
        self.mapping = load_mapping(mapping)
        self.labels = dict(labels or {})
        self.engine_metrics = engine_metrics
        self.budget_counters = budget_counters
        self._histograms = _REQUEST_HISTOGRAMS + length_histograms(self.mapping, max_model_len)
        self._bounds = {a: b for a, _, b, _ in self._histograms} | {"itl": ITL_BUCKETS_S}
        self._classifiers = [SLIClassifier(s, self.spec) for s in self.spec.engine_slos]
        self._buckets: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._sums: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self._finished: dict[tuple[int, str], float] = defaultdict(float)
        self._sli_events = np.zeros((len(self._classifiers), 2))  # good, bad
        self._tenant_events = {
            i: np.zeros((c.fairness.max_tenants, 2))
            for i, c in enumerate(self._classifiers)
            if c.fairness is not None
        }
        self._tenants = tenants
        for tier in tiers:
            for attribute, bounds in self._bounds.items():
                self._add_buckets(attribute, int(tier), np.zeros(len(bounds) + 1))
            for reason in _FINISHED_REASONS:
                self._finished[(int(tier), reason)] += 0.0

    def add(self, events: np.ndarray) -> None:
        """Account a batch of request events (:data:`~slo.events.REQUEST_EVENT_DTYPE`)."""
        if len(events) == 0:
            return
        batch = EventBatch(events)
        if self.engine_metrics:
            self._add_engine_metrics(batch)
        if self.budget_counters:
            self._add_budget_counters(batch)

    def render(self) -> str:
        """The exposition text (Prometheus text format 0.0.4) of everything added so far."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FamiliesCollector(self._families))
        return generate_latest(registry).decode()

    # ----------------------------------------------------------------------------------------

    def _add_engine_metrics(self, batch: EventBatch) -> None:
        tier = batch.column("tier")
        for attribute, measure, bounds, _ in self._histograms:
            if getattr(self.mapping, attribute) is None:
                continue
            values = measure(batch)
            seen = ~np.isnan(values) & (tier >= 0)
            index = np.searchsorted(bounds, values[seen], side="left")  # bucket with v <= le
            self._accumulate(attribute, tier[seen], index, values[seen], len(bounds) + 1)
        if self.mapping.itl is not None:
            gaps = itl_gap_counts(batch)
            decode = e2e_s(batch) - ttft_s(batch)  # the gaps' sum: first to last token
            streamed = gaps.sum(axis=1) > 0
            for t in np.unique(tier[tier >= 0]):
                mine = tier == t
                self._add_buckets("itl", int(t), gaps[mine].sum(axis=0, dtype=np.int64))
                self._sums["itl"][int(t)] += float(np.nansum(decode[mine & streamed]))
        if self.mapping.request_success is not None:
            self._add_finished(batch, tier)

    def _accumulate(
        self, key: str, tier: np.ndarray, index: np.ndarray, values: np.ndarray, n_buckets: int
    ) -> None:
        for t in np.unique(tier):
            mine = tier == t
            self._add_buckets(key, int(t), np.bincount(index[mine], minlength=n_buckets))
            self._sums[key][int(t)] += float(values[mine].sum())

    def _add_buckets(self, key: str, tier: int, counts: np.ndarray) -> None:
        previous = self._buckets[key].get(tier)
        self._buckets[key][tier] = counts.astype(np.float64) + (
            0.0 if previous is None else previous
        )

    def _add_finished(self, batch: EventBatch, tier: np.ndarray) -> None:
        outcome, reason = batch.column("outcome"), batch.column("reason")
        finished = {
            "stop": (outcome == Outcome.SERVED) & (reason != Reason.LENGTH),
            "length": (outcome == Outcome.SERVED) & (reason == Reason.LENGTH),
            "abort": (outcome == Outcome.ABORTED) & (tier >= 0),
        }
        for label, mask in finished.items():
            tiers, counts = np.unique(tier[mask], return_counts=True)
            for t, count in zip(tiers, counts, strict=True):
                self._finished[(int(t), label)] += float(count)

    def _add_budget_counters(self, batch: EventBatch) -> None:
        for i, classifier in enumerate(self._classifiers):
            if i in self._tenant_events:
                good, counted, tenant = classifier.classify_by_tenant(batch)
                size = classifier.fairness.max_tenants
                per_tenant = self._tenant_events[i]
                per_tenant[:, 0] += np.bincount(tenant, weights=good, minlength=size)
                per_tenant[:, 1] += np.bincount(tenant, weights=counted, minlength=size)
                continue
            good, counted = classifier.classify(batch)
            n_good = float(np.sum(good))
            self._sli_events[i] += (n_good, float(np.sum(counted)) - n_good)

    def _families(self) -> Iterator[Metric]:
        extra_names, extra_values = list(self.labels), list(self.labels.values())
        if self.engine_metrics:
            yield from self._engine_families(extra_names, extra_values)
        if self.budget_counters:
            yield from self._budget_families(extra_names, extra_values)

    def _engine_families(self, extra_names: list[str], extra_values: list[str]) -> Iterator[Metric]:
        model_label = self.mapping.model_label
        histograms = [(a, b, h) for a, _, b, h in self._histograms] + [
            ("itl", ITL_BUCKETS_S, _ITL_HELP)
        ]
        for attribute, bounds, help_text in histograms:
            name = getattr(self.mapping, attribute)
            if name is None:
                continue
            family = HistogramMetricFamily(name, help_text, labels=[model_label, *extra_names])
            for tier, counts in sorted(self._buckets[attribute].items()):
                cumulative = np.cumsum(counts)
                buckets = [
                    (floatToGoString(b), float(c)) for b, c in zip(bounds, cumulative, strict=False)
                ]
                buckets.append(("+Inf", float(cumulative[-1])))
                labels = [self.spec.model_of_tier(tier), *extra_values]
                family.add_metric(labels, buckets, self._sums[attribute][tier])
            yield family
        if self.mapping.request_success is not None:
            family = CounterMetricFamily(
                self.mapping.request_success,
                "Count of successfully processed requests.",
                labels=[model_label, "finished_reason", *extra_names],
            )
            for (tier, reason), count in sorted(self._finished.items()):
                family.add_metric([self.spec.model_of_tier(tier), reason, *extra_values], count)
            yield family

    def _budget_families(self, extra_names: list[str], extra_values: list[str]) -> Iterator[Metric]:
        events = CounterMetricFamily(
            self.mapping.sli_events,
            "Requests (or tokens) judged good or bad by each SLO's SLI.",
            labels=["slo", "result", *extra_names],
        )
        for classifier, (good, bad) in zip(self._classifiers, self._sli_events, strict=True):
            if classifier.fairness is None:
                events.add_metric([classifier.slo.name, "good", *extra_values], good)
                events.add_metric([classifier.slo.name, "bad", *extra_values], bad)
        yield events
        tenants = CounterMetricFamily(
            self.mapping.tenant_sli_events,
            "Per tenant, requests judged good or bad by a fairness SLO's base SLI.",
            labels=["slo", "tenant", "result", *extra_names],
        )
        for i, per_tenant in self._tenant_events.items():
            name = self._classifiers[i].slo.name
            known = np.arange(len(per_tenant)) < self._tenants
            for tenant in np.flatnonzero((per_tenant[:, 1] > 0) | known):
                good, counted = per_tenant[tenant]
                tenants.add_metric([name, str(tenant), "good", *extra_values], good)
                tenants.add_metric([name, str(tenant), "bad", *extra_values], counted - good)
        yield tenants


class _FamiliesCollector:
    """A prometheus_client collector yielding the families of a renderer."""

    def __init__(self, families: Callable[[], Iterator[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return self._families()


def render_exposition(
    events: np.ndarray,
    spec: ServiceSpec | str | Path,
    mapping: str | Path | Mapping[str, Any] | MetricMapping = "vllm",
    **options: Any,
) -> str:
    """Exposition text of the metrics an engine (and router) would expose after ``events``.

    ``options`` are passed to :class:`ExpositionRenderer` (``labels``, ``engine_metrics``,
    ``budget_counters``).
    """
    renderer = ExpositionRenderer(spec, mapping, **options)
    renderer.add(events)
    return renderer.render()
