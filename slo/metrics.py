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
and counts from zero; missing series and endpoints, NaN/Inf values and duplicate series are
skipped and reported in the :class:`ScrapeReport`.
"""

from __future__ import annotations

import math
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
    swapped back later) and ``finished`` (counter: requests finished, whatever the reason). The
    engine twin renders these names and the sidecar reads them.
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
    model_label: str = "model_name"
    sli_events: str = "budgetpilot:sli_events_total"
    tenant_sli_events: str = "budgetpilot:tenant_sli_events_total"


#: Fields naming histograms (base names) and fields that must name something.
_HISTOGRAM_FIELDS = ("ttft", "itl", "e2e", "tpot_request")
_REQUIRED_FIELDS = ("name", "model_label", "sli_events", "tenant_sli_events")

_VLLM_SCHEDULER = {
    "waiting": "vllm:num_requests_waiting",
    "running": "vllm:num_requests_running",
    "preemptions": "vllm:num_preemptions_total",
    "finished": "vllm:request_success_total",
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
}


def load_mapping(source: str | Path | Mapping[str, Any] | MetricMapping) -> MetricMapping:
    """A mapping by built-in name (``vllm``, ``vllm-legacy``, ``sglang``, ``sglang-legacy``),
    from a YAML file, or from a dict. A dict or file may set ``base: <built-in>`` (default
    ``vllm``) and override some names (``null``: the engine does not export that metric).

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
        )
        return not any(problems)


Scrape = str | Iterable[Any]


def counter_increase(previous: float | None, value: float) -> float:
    """What a counter counted since its ``previous`` sample: all of ``value`` for a series seen
    for the first time (a labelled series appears on its first event, from zero) or after a drop
    (the process restarted and so did its counters)."""
    return value if previous is None or value < previous else value - previous


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
        self._wanted = self._wanted_names()
        kv = () if self.mapping.kv_cache_usage is None else (self.mapping.kv_cache_usage,)
        self._prefixes = ("#", *sorted(self._wanted), *kv)
        self._previous: dict[SeriesKey, float] = {}
        self._endpoints: set[str] = set()
        self._started = False
        self._kv_usage: dict[str, float] = {}

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
        current: dict[SeriesKey, float] = {}
        bounds: dict[str, set[str]] = defaultdict(set)
        for endpoint, scrape in scrapes.items():
            self._read(str(endpoint), scrape, current, bounds, report)
        deltas = self._deltas(current, {str(e) for e in scrapes}, report)
        self._started = True
        self._feed(float(t), deltas, bounds, report)
        return report

    def forget(self, endpoints: Iterable[str]) -> None:
        """Drop all that is remembered of ``endpoints`` (replicas that are gone for good, e.g.
        pods scaled away): they are no longer reported missing, and an endpoint of the same
        name seen later counts from a fresh baseline, as a new one would."""
        gone = {str(e) for e in endpoints}
        self._endpoints -= gone
        self._previous = {k: v for k, v in self._previous.items() if k[0] not in gone}
        for endpoint in gone:
            self._kv_usage.pop(endpoint, None)

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
            self._kv_usage[endpoint] = float(np.mean(kv_values))

    def _deltas(
        self, current: dict[SeriesKey, float], endpoints: set[str], report: ScrapeReport
    ) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Per sample name, ``(labels, increase since the previous scrape)`` of every series."""
        deltas: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for key, value in current.items():
            endpoint, name, labels = key
            previous = self._previous.get(key)
            if not self._started or endpoint not in self._endpoints:
                delta = 0.0  # baseline: what happened before we watched is not ours to count
            else:
                if previous is not None and value < previous:
                    report.resets.append(_describe(key))
                delta = counter_increase(previous, value)
            if delta:
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
        deltas: Mapping[str, list[tuple[dict[str, str], float]]],
        bounds: Mapping[str, set[str]],
        report: ScrapeReport,
    ) -> None:
        engine = self.engine
        good = np.zeros(len(engine.slos))
        total = np.zeros(len(engine.slos))
        tenant_good, tenant_total = [], []
        for i, (slo, source) in enumerate(zip(engine.slos, self.sources, strict=True)):
            if source.kind == "tenant_sli_events":
                n_tenants = slo.sli.llm.max_tenants
                per_tenant = _tenant_counts(deltas.get(source.metric, ()), slo.name, n_tenants)
                tenant_good.append(per_tenant[:, 0])
                tenant_total.append(per_tenant[:, 1])
                continue
            counted = self._counts(slo, source, deltas, bounds, report)
            if counted is not None:
                good[i], total[i] = counted
        engine.ingest_counts(t, good, total, tenant_good, tenant_total)

    def _counts(
        self,
        slo: SLOSpec,
        source: MetricSource,
        deltas: Mapping[str, list[tuple[dict[str, str], float]]],
        bounds: Mapping[str, set[str]],
        report: ScrapeReport,
    ) -> tuple[float, float] | None:
        model_label = self.mapping.model_label

        def keep(labels: dict[str, str]) -> bool:
            return source.models is None or labels.get(model_label) in source.models

        if source.kind == "sli_events":
            rows = [(lb, d) for lb, d in deltas.get(source.metric, ()) if lb.get("slo") == slo.name]
            good = sum(d for lb, d in rows if lb.get("result") == "good")
            return good, good + sum(d for lb, d in rows if lb.get("result") == "bad")
        if source.kind == "request_success":
            by_reason: dict[str, float] = defaultdict(float)
            for labels, delta in deltas.get(source.metric, ()):
                if keep(labels):
                    by_reason[labels.get("finished_reason", "")] += delta
            return by_reason["stop"], by_reason["stop"] + by_reason["length"]
        seen = bounds.get(f"{source.metric}_bucket", set())
        if seen and not any(_same_bound(le, source.threshold) for le in seen):
            report.inexact.append(
                f"{slo.name}: {source.threshold} is not a bucket boundary of {source.metric}"
            )
            return None
        buckets = deltas.get(f"{source.metric}_bucket", ())
        good = sum(
            d for lb, d in buckets if keep(lb) and _same_bound(lb.get("le"), source.threshold)
        )
        return good, sum(d for lb, d in deltas.get(f"{source.metric}_count", ()) if keep(lb))


def _samples(
    scrape: Scrape, prefixes: tuple[str, ...]
) -> Iterable[tuple[str, dict[str, str], float]]:
    if isinstance(scrape, str):
        # Parsing is the feed's cost (engines expose hundreds of series we do not use): only the
        # lines of wanted metrics (and comments, for the families' types) reach the parser.
        wanted = "\n".join(line for line in scrape.splitlines() if line.startswith(prefixes))
        for family in text_string_to_metric_families(wanted + "\n"):
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value
        return
    for sample in scrape:
        name, labels, value = sample[0], sample[1], sample[2]
        yield str(name), dict(labels), float(value)


def _same_bound(label: str | None, threshold: float | None) -> bool:
    if label is None or threshold is None:
        return False
    try:
        return math.isclose(float(label), threshold, rel_tol=1e-9, abs_tol=0.0)
    except ValueError:
        return False


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


def _describe(key: SeriesKey) -> str:
    endpoint, name, labels = key
    inner = ",".join(f'{k}="{v}"' for k, v in labels)
    return f"{endpoint}/{name}{{{inner}}}"
