"""The metrics feed: successive Prometheus scrapes of real engines -> the same error budgets.

:class:`MetricsFeed` parses each scrape (exposition text through prometheus_client's parser, or
already-parsed samples), takes per-series deltas of counters and histogram buckets since the
previous scrape, sums them over endpoints and replicas, and feeds good/total counts per SLO to a
:class:`~slo.engine.BudgetEngine` with :meth:`~slo.engine.BudgetEngine.ingest_counts`.

Which metric gives which SLI (:func:`metric_source`):

* exact from plain engine metrics (selectors limited to ``model``/``tier``): ``ttft`` (TTFT
  histogram), ``itl`` per token (inter-token-latency histogram), ``e2e`` (e2e histogram),
  ``streaming`` (vLLM's per-request time-per-output-token histogram), ``context`` when only
  length cuts are checked (``request_success_total{finished_reason="length"}``);
* from budgetpilot counters, exported by a router or by the engine twin: everything else —
  ``availability`` (engines never see rejections at admission nor requests lost with a replica),
  ``quality``, ``normalized_latency``, ``itl`` per request, ``context`` with truncation or
  preemption checks, any SLI with ``tenant``/``intended_tier`` selectors
  (``budgetpilot:sli_events_total{slo,result="good|bad"}``) and ``fairness``
  (``budgetpilot:tenant_sli_events_total{slo,tenant,result}``: the base SLI per tenant).

Counter semantics: the first scrape is a baseline (what happened before is not counted); a
series seen for the first time later, on an endpoint already known, counts from zero (client
libraries create labelled series on their first event); a value lower than before is a restart
and counts from zero; missing series and endpoints, NaN/Inf values (in any spelling a C runtime
prints: ``-nan(ind)``, ``nan(snan)``...) and duplicate series are skipped and reported in the
:class:`ScrapeReport`.

A histogram SLO's good and total events (the bucket at its threshold and ``_count`` of one
series, i.e. one endpoint and label set) move together: a scrape where either is missing or not
finite, or where the series is inconsistent (a bucket above ``_count``, buckets decreasing as
``le`` grows, more good than total events since the last scrape), adds nothing of that series;
its events count at its next complete scrape, from the last complete one. An SLO none of whose
series could be read in a scrape is not measured then: the engine records the gap
(:meth:`~slo.engine.BudgetEngine.window_coverage`) and the report names it (``no_data``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from slo.engine import BudgetEngine
from slo.files import TextFileError, read_text
from slo.spec import (
    E2ESLI,
    ITLSLI,
    TTFTSLI,
    ContextSLI,
    FairnessSLI,
    ServiceSpec,
    SLOSpec,
    StreamingSLI,
)


@dataclass(frozen=True)
class MetricMapping:
    """Metric names of one serving engine (None: the engine does not export that metric).

    Histogram names are base names (without ``_bucket``/``_count``); counters are sample names
    (with ``_total``). Besides the request metrics the SLOs are fed from, the scheduler's:
    ``waiting`` and ``running`` (gauges: requests queued, requests in the running batch),
    ``preemptions`` (counter: requests preempted, their KV cache freed to be recomputed or
    swapped back later) and ``finished`` (counter: requests finished, whatever the reason); and
    the length histograms of finished requests, ``prompt_tokens`` and ``generation_tokens``,
    and the token counters ``prompt_tokens_total`` and ``generation_tokens_total`` (what
    ``budgetpilot fit`` fits the traffic's lengths to). The engine twin renders these names
    and the sidecar reads them.
    """

    name: str
    ttft: str | None = None
    itl: str | None = None
    e2e: str | None = None
    tpot_request: str | None = None
    request_success: str | None = None
    kv_cache_usage: str | None = None
    waiting: str | None = None
    running: str | None = None
    preemptions: str | None = None
    finished: str | None = None
    prompt_tokens: str | None = None
    generation_tokens: str | None = None
    prompt_tokens_total: str | None = None
    generation_tokens_total: str | None = None
    model_label: str = "model_name"
    sli_events: str = "budgetpilot:sli_events_total"
    tenant_sli_events: str = "budgetpilot:tenant_sli_events_total"


#: Fields naming histograms (base names) and fields that must name something.
_HISTOGRAM_FIELDS = ("ttft", "itl", "e2e", "tpot_request", "prompt_tokens", "generation_tokens")
_REQUIRED_FIELDS = ("name", "model_label", "sli_events", "tenant_sli_events")

_VLLM_SCHEDULER = {
    "waiting": "vllm:num_requests_waiting",
    "running": "vllm:num_requests_running",
    "preemptions": "vllm:num_preemptions_total",
    "finished": "vllm:request_success_total",
    "prompt_tokens": "vllm:request_prompt_tokens",
    "generation_tokens": "vllm:request_generation_tokens",
    "prompt_tokens_total": "vllm:prompt_tokens_total",
    "generation_tokens_total": "vllm:generation_tokens_total",
}
# SGLang preempts by retracting requests (their KV cache freed, to be recomputed). Recent SGLang
# counts them in sglang:num_retracted_requests_total (its series appears at the first
# retraction); older SGLang has only the gauge sglang:num_retracted_reqs, reset on every publish
# (unusable as a counter): for it, a custom mapping sets ``preemptions: null`` (no preemptions
# observed).
_SGLANG_SCHEDULER = {
    "waiting": "sglang:num_queue_reqs",
    "running": "sglang:num_running_reqs",
    "preemptions": "sglang:num_retracted_requests_total",
    "finished": "sglang:num_requests_total",
    # Exported when SGLang runs with --collect-tokens-histogram.
    "prompt_tokens": "sglang:prompt_tokens_histogram",
    "generation_tokens": "sglang:generation_tokens_histogram",
    "prompt_tokens_total": "sglang:prompt_tokens_total",
    "generation_tokens_total": "sglang:generation_tokens_total",
}

BUILTIN_MAPPINGS: dict[str, MetricMapping] = {
    "vllm": MetricMapping(
        name="vllm",
        ttft="vllm:time_to_first_token_seconds",
        itl="vllm:inter_token_latency_seconds",
        e2e="vllm:e2e_request_latency_seconds",
        tpot_request="vllm:request_time_per_output_token_seconds",
        request_success="vllm:request_success_total",
        kv_cache_usage="vllm:kv_cache_usage_perc",
        **_VLLM_SCHEDULER,
    ),
    # vLLM before inter_token_latency existed: time_per_output_token was observed per token.
    "vllm-legacy": MetricMapping(
        name="vllm-legacy",
        ttft="vllm:time_to_first_token_seconds",
        itl="vllm:time_per_output_token_seconds",
        e2e="vllm:e2e_request_latency_seconds",
        request_success="vllm:request_success_total",
        kv_cache_usage="vllm:gpu_cache_usage_perc",
        **_VLLM_SCHEDULER,
    ),
    "sglang": MetricMapping(
        name="sglang",
        ttft="sglang:time_to_first_token_seconds",
        itl="sglang:inter_token_latency_seconds",
        e2e="sglang:e2e_request_latency_seconds",
        kv_cache_usage="sglang:token_usage",
        **_SGLANG_SCHEDULER,
    ),
    "sglang-legacy": MetricMapping(
        name="sglang-legacy",
        ttft="sglang:time_to_first_token_seconds",
        itl="sglang:time_per_output_token_seconds",
        e2e="sglang:e2e_request_latency_seconds",
        kv_cache_usage="sglang:token_usage",
        **_SGLANG_SCHEDULER,
    ),
    # llama.cpp's server (--metrics) exports no latency histogram and no per-request counter:
    # every SLO comes from budgetpilot counters, the load from a router's arrivals. Its KV
    # gauge is in recent versions' pages only.
    "llamacpp": MetricMapping(
        name="llamacpp",
        kv_cache_usage="llamacpp:kv_cache_usage_ratio",
        waiting="llamacpp:requests_deferred",
        running="llamacpp:requests_processing",
    ),
    # Hugging Face TGI: no TTFT or inter-token histogram, and its duration buckets (a geometric
    # series from 0.15 ms by 1.5) hold no vLLM boundary, so no latency SLO is exact from them;
    # no KV-cache gauge. Counters have no _total suffix (metrics-exporter-prometheus).
    "tgi": MetricMapping(
        name="tgi",
        waiting="tgi_queue_size",
        running="tgi_batch_current_size",
        finished="tgi_request_success",
    ),
}


def load_mapping(source: str | Path | Mapping[str, Any] | MetricMapping) -> MetricMapping:
    """A mapping by built-in name (``vllm``, ``vllm-legacy``, ``sglang``, ``sglang-legacy``,
    ``llamacpp``, ``tgi``), from a YAML file, or from a dict. A dict or file may set
    ``base: <built-in>`` (default ``vllm``) and override some names (``null``: the engine does
    not export that metric).

    Raises
    ------
    ValueError
        Naming the problem: an unknown built-in or missing file, an unknown ``base`` or key, a
        name that is not a string (or null where allowed), a histogram named with a sample
        suffix (``_bucket``, ``_count``, ``_sum``).
    """
    if isinstance(source, MetricMapping):
        return source
    if isinstance(source, str) and source in BUILTIN_MAPPINGS:
        return BUILTIN_MAPPINGS[source]
    if not isinstance(source, Mapping):
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"unknown metric mapping {str(source)!r}: not a built-in "
                f"({', '.join(BUILTIN_MAPPINGS)}) nor a file"
            )
        try:
            source = yaml.safe_load(read_text(path)) or {}
        except OSError as exc:
            raise ValueError(f"metric mapping file {path}: cannot read it: {exc}") from None
        except TextFileError as exc:
            raise ValueError(f"metric mapping file {exc}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"metric mapping file {path}: not valid YAML: {exc}") from None
        if not isinstance(source, Mapping):
            raise ValueError(f"metric mapping file {path} must hold a mapping")
    overrides = dict(source)
    base_name = overrides.pop("base", "vllm")
    if not isinstance(base_name, str) or base_name not in BUILTIN_MAPPINGS:
        raise ValueError(
            f"metric mapping base {base_name!r} is not a built-in mapping "
            f"({', '.join(BUILTIN_MAPPINGS)})"
        )
    known = {f.name for f in fields(MetricMapping)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(
            f"unknown metric mapping keys: {sorted(map(str, unknown))} (known: {sorted(known)})"
        )
    overrides.setdefault("name", "custom")
    for key, value in overrides.items():
        _check_name(key, value)
    return replace(BUILTIN_MAPPINGS[base_name], **overrides)


def _check_name(key: str, value: Any) -> None:
    """Refuse a metric mapping entry that cannot be a metric name (see :func:`load_mapping`)."""
    if value is None and key not in _REQUIRED_FIELDS:
        return
    if not isinstance(value, str) or not value:
        allowed = "a non-empty string" + ("" if key in _REQUIRED_FIELDS else " or null")
        raise ValueError(f"metric mapping key {key!r}: expected {allowed}, got {value!r}")
    if key in _HISTOGRAM_FIELDS and value.endswith(("_bucket", "_count", "_sum")):
        base = value.rsplit("_", 1)[0]
        raise ValueError(
            f"metric mapping key {key!r}: a histogram is named by its base name ({base!r}), "
            f"not a sample name ({value!r})"
        )


@dataclass(frozen=True)
class MetricSource:
    """Where an SLO's good/total counts come from in engine metrics.

    ``histogram``: good = bucket ``le=threshold``, total = ``_count``; ``request_success``:
    good = ``stop``, total = ``stop`` + ``length``; ``sli_events``/``tenant_sli_events``:
    budgetpilot counters by SLO name (and tenant). ``models`` filters the model label.
    """

    kind: Literal["histogram", "request_success", "sli_events", "tenant_sli_events"]
    metric: str
    threshold: float | None = None
    models: tuple[str, ...] | None = None

    @property
    def exact_from_engine(self) -> bool:
        """True when plain engine metrics give the SLI (no budgetpilot counter needed)."""
        return self.kind in ("histogram", "request_success")


def metric_source(slo: SLOSpec, spec: ServiceSpec, mapping: MetricMapping) -> MetricSource:
    """The metric giving ``slo``'s SLI under ``mapping`` (see the module docstring)."""
    sli = slo.sli.llm
    if sli is None:
        raise ValueError(f"SLO {slo.name!r} has no llm SLI")
    if isinstance(sli, FairnessSLI):
        return MetricSource("tenant_sli_events", mapping.tenant_sli_events)
    counters = MetricSource("sli_events", mapping.sli_events)
    selectors = slo.selectors
    if selectors.tenant is not None or selectors.intended_tier is not None:
        return counters
    models = _selected_models(slo, spec)
    histogram = _histogram_of(sli, mapping)
    if histogram is not None:
        metric, threshold = histogram
        return MetricSource("histogram", metric, threshold, models)
    only_length = isinstance(sli, ContextSLI) and not sli.truncation and sli.max_preemptions is None
    if only_length and mapping.request_success is not None:
        return MetricSource("request_success", mapping.request_success, None, models)
    return counters


def engine_gap(slo: SLOSpec, mapping: MetricMapping) -> str:
    """Why plain engine metrics under ``mapping`` cannot give ``slo``'s SLI, in words."""
    sli = slo.sli.llm
    if isinstance(sli, FairnessSLI):
        return "fairness is judged per tenant"
    if slo.selectors.tenant is not None or slo.selectors.intended_tier is not None:
        return "engines label no tenant or intended tier"
    field_name = {TTFTSLI: "ttft", E2ESLI: "e2e", StreamingSLI: "tpot_request"}.get(type(sli))
    if isinstance(sli, ITLSLI) and sli.per == "token":
        field_name = "itl"
    if field_name is not None:
        return f"mapping {mapping.name!r} names no {field_name} histogram"
    return f"engines do not export {sli.kind} events"


def _histogram_of(sli: Any, mapping: MetricMapping) -> tuple[str, float] | None:
    candidates = {
        TTFTSLI: (mapping.ttft, "threshold_s"),
        E2ESLI: (mapping.e2e, "threshold_s"),
        StreamingSLI: (mapping.tpot_request, "pace_s"),
    }
    if isinstance(sli, ITLSLI) and sli.per == "token":
        metric, attribute = mapping.itl, "threshold_s"
    elif type(sli) in candidates:
        metric, attribute = candidates[type(sli)]
    else:
        return None
    return None if metric is None else (metric, getattr(sli, attribute))


def _selected_models(slo: SLOSpec, spec: ServiceSpec) -> tuple[str, ...] | None:
    selectors = slo.selectors
    names = None if selectors.model is None else set(selectors.model)
    if selectors.tier is not None:
        tier_names = {spec.model_of_tier(t) for t in selectors.tier}
        names = tier_names if names is None else names & tier_names
    return None if names is None else tuple(sorted(names))


# --------------------------------------------------------------------------------------------
# The feed
# --------------------------------------------------------------------------------------------

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass
class ScrapeReport:
    """What one :meth:`MetricsFeed.update` saw. Series are written ``endpoint/name{labels}``."""

    time: float
    endpoints: int = 0
    series: int = 0
    resets: list[str] = field(default_factory=list)
    missing_series: list[str] = field(default_factory=list)
    missing_endpoints: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    no_data: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing had to be skipped (restarts are normal and do not count)."""
        problems = (
            self.missing_series,
            self.missing_endpoints,
            self.non_finite,
            self.duplicates,
            self.unparsable,
            self.inexact,
            self.incomplete,
            self.inconsistent,
            self.no_data,
            self.out_of_order,
        )
        return not any(problems)


Scrape = str | Iterable[Any]


def counter_increase(previous: float | None, value: float) -> float:
    """What a counter counted since its ``previous`` sample: all of ``value`` for a series seen
    for the first time (a labelled series appears on its first event, from zero) or after a drop
    (the process restarted and so did its counters)."""
    return value if previous is None or value < previous else value - previous


Rows = list[tuple[dict[str, str], float]]
#: A histogram series: endpoint and labels (without ``le``).
GroupKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class _Histogram:
    """One scrape's finite samples of one histogram series: ``_count`` and buckets by bound."""

    count: float | None = None
    buckets: dict[float, float] = field(default_factory=dict)

    def bucket(self, threshold: float | None) -> float | None:
        """The bucket at ``threshold`` (None when this scrape lacks it)."""
        for bound, value in self.buckets.items():
            if threshold is not None and math.isclose(bound, threshold, rel_tol=1e-9):
                return value
        return None

    def inconsistency(self) -> str | None:
        """What makes the series impossible (a bucket above ``_count``, buckets decreasing as
        ``le`` grows), or None."""
        ordered = sorted(self.buckets.items())
        for (lower, below), (upper, above) in zip(ordered, ordered[1:], strict=False):
            if above < below:
                return f"bucket le={upper:g} ({above:g}) below bucket le={lower:g} ({below:g})"
        if ordered and self.count is not None and ordered[-1][1] > self.count:
            bound, value = ordered[-1]
            return f"bucket le={bound:g} ({value:g}) above _count ({self.count:g})"
        return None


class MetricsFeed:
    """Feeds an error-budget engine from successive scrapes of engine metrics.

    Parameters
    ----------
    engine:
        The engine to feed, or a spec (or spec path) to build one from (see :attr:`engine`).
    mapping:
        Metric names: a built-in mapping name, a YAML file, a dict or a :class:`MetricMapping`.
    """

    def __init__(
        self,
        engine: BudgetEngine | ServiceSpec | str | Path,
        mapping: str | Path | Mapping[str, Any] | MetricMapping = "vllm",
    ) -> None:
        self.engine = engine if isinstance(engine, BudgetEngine) else BudgetEngine(engine)
        self.mapping = load_mapping(mapping)
        self.sources = tuple(
            metric_source(s, self.engine.spec, self.mapping) for s in self.engine.slos
        )
        self._histograms = {s.metric for s in self.sources if s.kind == "histogram"}
        self._wanted = self._wanted_names()
        kv = () if self.mapping.kv_cache_usage is None else (self.mapping.kv_cache_usage,)
        # Sample lines only: a "# TYPE x counter" line would make the parser rename the samples
        # of a counter named without _total (x -> x_total), and the mapping names samples.
        self._prefixes = (*sorted(self._wanted), *kv)
        self._previous: dict[SeriesKey, float] = {}
        # Per histogram SLO source and series: (good, total) at its last complete scrape.
        self._pairs: dict[tuple[str, float, GroupKey], tuple[float, float]] = {}
        self._partial: set[tuple[str, float, GroupKey]] = set()  # seen before complete
        self._bounds: dict[str, set[float]] = defaultdict(set)  # bucket bounds ever seen
        self._endpoints: set[str] = set()
        self._started = False
        self._kv_usage: dict[str, float] = {}
        #: Per SLO, whether the last update measured it.
        self.measured = np.zeros(len(self.sources), dtype=bool)

    def update(self, t: float, scrapes: Scrape | Mapping[str, Scrape]) -> ScrapeReport:
        """Ingest the scrapes taken at time ``t`` and advance the engine to ``t``.

        Parameters
        ----------
        t:
            Scrape time, in the engine's time base. Scrape at multiples of the engine's
            ``resolution`` for windows that match the event feed exactly.
        scrapes:
            Per endpoint (replica, router...), its exposition text or parsed samples
            (prometheus_client ``Sample`` objects or ``(name, labels, value)`` tuples); a single
            text or sample list is one endpoint named ``default``.
        """
        if isinstance(scrapes, str) or not isinstance(scrapes, Mapping):
            scrapes = {"default": scrapes}
        report = ScrapeReport(time=float(t), endpoints=len(scrapes))
        if t < self.engine.now:
            report.out_of_order.append(
                f"scrape time {t:g} is before the last one ({self.engine.now:g}): counted then"
            )
        current: dict[SeriesKey, float] = {}
        bounds: dict[str, set[str]] = defaultdict(set)
        for endpoint, scrape in scrapes.items():
            self._read(str(endpoint), scrape, current, bounds, report)
        endpoints = {str(e) for e in scrapes}
        known = set(self._endpoints) if self._started else set()
        histograms = self._histogram_series(current, bounds)
        deltas = self._deltas(current, known, endpoints, report)
        self._started = True
        self._feed(float(t), deltas, histograms, known, endpoints, report)
        return report

    def forget(self, endpoints: Iterable[str]) -> None:
        """Drop all that is remembered of ``endpoints`` (replicas that are gone for good, e.g.
        pods scaled away): they are no longer reported missing, and an endpoint of the same
        name seen later counts from a fresh baseline, as a new one would."""
        gone = {str(e) for e in endpoints}
        self._endpoints -= gone
        self._previous = {k: v for k, v in self._previous.items() if k[0] not in gone}
        self._pairs = {k: v for k, v in self._pairs.items() if k[2][0] not in gone}
        self._partial = {k for k in self._partial if k[2][0] not in gone}
        for endpoint in gone:
            self._kv_usage.pop(endpoint, None)

    @property
    def labels_read(self) -> frozenset[str]:
        """The labels the feed tells series of an endpoint apart by (sums over the others
        lose nothing it counts)."""
        return frozenset(
            {"le", self.mapping.model_label, "slo", "result", "tenant", "finished_reason"}
        )

    def kv_cache_usage(self) -> dict[str, float]:
        """Per endpoint, the mean KV-cache usage of its series in the last scrape (0..1)."""
        return dict(self._kv_usage)

    def _wanted_names(self) -> set[str]:
        names = set()
        for source in self.sources:
            if source.kind == "histogram":
                names |= {f"{source.metric}_bucket", f"{source.metric}_count"}
            else:
                names.add(source.metric)
        return names

    def _read(
        self,
        endpoint: str,
        scrape: Scrape,
        current: dict[SeriesKey, float],
        bounds: dict[str, set[str]],
        report: ScrapeReport,
    ) -> None:
        """Collect the wanted series of one endpoint into ``current`` and the histograms'
        bucket bounds (``le`` labels, finite values or not) into ``bounds``."""
        try:
            samples = list(_samples(scrape, self._prefixes))
        except (ValueError, TypeError) as err:
            report.unparsable.append(f"{endpoint}: {err}")
            return
        kv_values = []
        for name, labels, value in samples:
            if name == self.mapping.kv_cache_usage and math.isfinite(value):
                kv_values.append(value)
            if name not in self._wanted:
                continue
            key = (endpoint, name, tuple(sorted(labels.items())))
            if "le" in labels:
                bounds[name].add(labels["le"])
            if not math.isfinite(value):
                report.non_finite.append(_describe(key))
            elif key in current:
                report.duplicates.append(_describe(key))
            else:
                current[key] = float(value)
                report.series += 1
        if kv_values:
            # a plain mean: np.mean costs more than the rest of a small page
            self._kv_usage[endpoint] = sum(kv_values) / len(kv_values)

    def _histogram_series(
        self, current: dict[SeriesKey, float], bounds: Mapping[str, set[str]]
    ) -> dict[str, dict[GroupKey, _Histogram]]:
        """Take the histograms' samples out of ``current``, per histogram and series."""
        series: dict[str, dict[GroupKey, _Histogram]] = {m: {} for m in self._histograms}
        for metric in self._histograms:
            labels = bounds.get(f"{metric}_bucket", ())
            self._bounds[metric] |= {b for b in map(_bound, labels) if b is not None}
        for key in [k for k in current if k[1].rsplit("_", 1)[0] in self._histograms]:
            endpoint, name, labels = key
            value = current.pop(key)
            metric, suffix = name.rsplit("_", 1)
            group = (endpoint, tuple(kv for kv in labels if kv[0] != "le"))
            histogram = series[metric].setdefault(group, _Histogram())
            if suffix == "count":
                histogram.count = value
            elif (bound := _bound(dict(labels).get("le"))) is not None:
                histogram.buckets[bound] = value
        return series

    def _deltas(
        self,
        current: dict[SeriesKey, float],
        known: set[str],
        endpoints: set[str],
        report: ScrapeReport,
    ) -> dict[str, Rows]:
        """Per sample name, ``(labels, increase since the previous scrape)`` of every counter
        series on the scrape (0 on an endpoint not ``known``: a baseline)."""
        deltas: dict[str, Rows] = defaultdict(list)
        for key, value in current.items():
            endpoint, name, labels = key
            previous = self._previous.get(key)
            if endpoint not in known:
                delta = 0.0  # baseline: what happened before we watched is not ours to count
            else:
                if previous is not None and value < previous:
                    report.resets.append(_describe(key))
                delta = counter_increase(previous, value)
            deltas[name].append((dict(labels), delta))
        for key in self._previous.keys() - current.keys():
            if key[0] in endpoints:
                report.missing_series.append(_describe(key))
        report.missing_endpoints.extend(sorted(self._endpoints - endpoints))
        self._previous.update(current)  # missing series keep their last value
        self._endpoints |= endpoints
        return deltas

    def _feed(
        self,
        t: float,
        deltas: Mapping[str, Rows],
        histograms: Mapping[str, Mapping[GroupKey, _Histogram]],
        known: set[str],
        endpoints: set[str],
        report: ScrapeReport,
    ) -> None:
        engine = self.engine
        n = len(engine.slos)
        good, total, measured = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        tenant_good, tenant_total = [], []
        checked: dict[tuple[str, GroupKey], str | None] = {}
        for i, (slo, source) in enumerate(zip(engine.slos, self.sources, strict=True)):
            rows = deltas.get(source.metric, ())
            if source.kind == "tenant_sli_events":
                rows = [(lb, d) for lb, d in rows if lb.get("slo") == slo.name]
                per_tenant = _tenant_counts(rows, slo.name, slo.sli.llm.max_tenants)
                tenant_good.append(per_tenant[:, 0])
                tenant_total.append(per_tenant[:, 1])
                measured[i] = bool(rows)
            elif source.kind == "histogram":
                counted = self._histogram_counts(
                    slo, source, histograms[source.metric], known, endpoints, checked, report
                )
                if counted is not None:
                    good[i], total[i] = counted
                    measured[i] = True
            else:
                counted = self._counter_counts(slo, source, rows)
                if counted is not None:
                    good[i], total[i] = counted
                    measured[i] = True
            if not measured[i]:
                report.no_data.append(f"{slo.name}: {self._absent(source)}")
        engine.ingest_counts(t, good, total, tenant_good, tenant_total, measured=measured)
        self.measured = measured

    def _absent(self, source: MetricSource) -> str:
        """Why an SLO has no data in a scrape, in words."""
        if source.kind == "histogram":
            return (
                f"no complete series of {source.metric} (bucket le={source.threshold:g} and "
                "_count) on any endpoint"
            )
        return f"no series of {source.metric} for it on any endpoint"

    def _keep(self, source: MetricSource, labels: Mapping[str, str]) -> bool:
        """Whether a series' model label is one the SLO selects."""
        return source.models is None or labels.get(self.mapping.model_label) in source.models

    def _counter_counts(
        self, slo: SLOSpec, source: MetricSource, rows: Iterable[tuple[dict[str, str], float]]
    ) -> tuple[float, float] | None:
        """Good and total events of a counter-fed SLO (None: none of its series is here)."""
        if source.kind == "sli_events":
            rows = [(lb, d) for lb, d in rows if lb.get("slo") == slo.name]
            good = sum(d for lb, d in rows if lb.get("result") == "good")
            bad = sum(d for lb, d in rows if lb.get("result") == "bad")
        else:
            rows = [(lb, d) for lb, d in rows if self._keep(source, lb)]
            by_reason: dict[str, float] = defaultdict(float)
            for labels, delta in rows:
                by_reason[labels.get("finished_reason", "")] += delta
            good, bad = by_reason["stop"], by_reason["length"]
        return (good, good + bad) if rows else None

    def _histogram_counts(
        self,
        slo: SLOSpec,
        source: MetricSource,
        series: Mapping[GroupKey, _Histogram],
        known: set[str],
        endpoints: set[str],
        checked: dict[tuple[str, GroupKey], str | None],
        report: ScrapeReport,
    ) -> tuple[float, float] | None:
        """Good and total events of a histogram SLO over its complete, consistent series
        (None: no such series in this scrape)."""
        seen = self._bounds[source.metric]
        if seen and not any(math.isclose(b, source.threshold, rel_tol=1e-9) for b in seen):
            report.inexact.append(
                f"{slo.name}: {source.threshold} is not a bucket boundary of {source.metric}"
            )
            return None
        good = total = 0.0
        measured = False
        for group, histogram in series.items():
            if not self._keep(source, dict(group[1])):
                continue
            if (source.metric, group) not in checked:
                problem = histogram.inconsistency()
                checked[source.metric, group] = problem
                if problem:
                    where = _describe_group(source.metric, group)
                    report.inconsistent.append(f"{where}: {problem}")
            if checked[source.metric, group]:
                continue
            counted = self._pair_increase(source, group, histogram, known, report)
            if counted is not None:
                good, total, measured = good + counted[0], total + counted[1], True
        for metric, threshold, group in self._pairs:
            this = (metric, threshold) == (source.metric, source.threshold)
            if this and group not in series and group[0] in endpoints:
                report.missing_series.append(_describe_group(metric, group))
        return (good, total) if measured else None

    def _pair_increase(
        self,
        source: MetricSource,
        group: GroupKey,
        histogram: _Histogram,
        known: set[str],
        report: ScrapeReport,
    ) -> tuple[float, float] | None:
        """Good and total events of one series since its last complete scrape (None: the
        series is incomplete, or its increase impossible, in this scrape)."""
        key = (source.metric, float(source.threshold), group)
        good, total = histogram.bucket(source.threshold), histogram.count
        if good is None or total is None:
            part = "_count" if total is None else f"bucket le={source.threshold:g}"
            report.incomplete.append(
                f"{_describe_group(source.metric, group)}: no {part} in this scrape (its events "
                "count at its next complete scrape)"
            )
            self._partial.add(key)
            return None
        previous = self._pairs.get(key)
        self._pairs[key] = (good, total)
        if group[0] not in known or (previous is None and key in self._partial):
            return 0.0, 0.0  # a baseline: its events so far were counted before we watched
        if previous is None:
            return good, total  # a new series on a known endpoint counts from zero
        if good < previous[0] or total < previous[1]:
            report.resets.append(_describe_group(source.metric, group))
            return good, total
        increase = (good - previous[0], total - previous[1])
        if increase[0] > increase[1]:
            report.inconsistent.append(
                f"{_describe_group(source.metric, group)}: {increase[0]:g} events within "
                f"le={source.threshold:g} since the last scrape but {increase[1]:g} in all"
            )
            return None  # which scrape was wrong is unknown: counting restarts from this one
        return increase


#: NaN as C runtimes print it (``-nan(ind)``, ``nan(snan)``), which Python's float() refuses.
_C_NAN = re.compile(r"(?<=\s)[+-]?nan\([0-9a-z_]*\)(?=\s|$)", re.IGNORECASE)


def normalise_nan(line: str) -> str:
    """A sample line with a NaN value spelt as a C runtime does (``-nan(ind)``,
    ``nan(snan)``...) spelt ``NaN``, so that it is one non-finite series rather than a line
    the parser refuses (and with it the page). Label values are left alone."""
    head, brace, tail = line.rpartition("}")
    if not brace:
        head, tail = "", line
    return head + brace + _C_NAN.sub("NaN", tail) if "(" in tail else line


def _samples(
    scrape: Scrape, prefixes: tuple[str, ...]
) -> Iterable[tuple[str, dict[str, str], float]]:
    if isinstance(scrape, str):
        # Parsing is the feed's cost (engines expose hundreds of series we do not use): only the
        # sample lines of wanted metrics reach the parser (no comments: the feed needs no types).
        wanted = "\n".join(
            normalise_nan(line) for line in scrape.splitlines() if line.startswith(prefixes)
        )
        for family in text_string_to_metric_families(wanted + "\n"):
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value
        return
    for sample in scrape:
        name, labels, value = sample[0], sample[1], sample[2]
        yield str(name), dict(labels), float(value)


def _bound(label: str | None) -> float | None:
    """A bucket's ``le`` label as a number (None when it is not one)."""
    try:
        return None if label is None else float(label)
    except ValueError:
        return None


def _tenant_counts(
    rows: Iterable[tuple[dict[str, str], float]], slo: str, n_tenants: int
) -> np.ndarray:
    """Per tenant ``[good, total]`` of a fairness SLO's base SLI from its counter deltas."""
    counts = np.zeros((n_tenants, 2))
    for labels, delta in rows:
        if labels.get("slo") != slo:
            continue
        try:
            tenant = int(labels.get("tenant", ""))
        except ValueError:
            continue
        if 0 <= tenant < n_tenants:
            result = labels.get("result")
            counts[tenant, 1] += delta if result in ("good", "bad") else 0.0
            counts[tenant, 0] += delta if result == "good" else 0.0
    return counts


def _describe_group(metric: str, group: GroupKey) -> str:
    endpoint, labels = group
    return _describe((endpoint, metric, labels))


def _describe(key: SeriesKey) -> str:
    endpoint, name, labels = key
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{endpoint}/{name}{{{inner}}}"
