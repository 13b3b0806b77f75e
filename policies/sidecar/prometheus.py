"""Prometheus as the sidecar's source: the metrics it already scraped, and their history.

:class:`PrometheusSource` stands in for :class:`~policies.sidecar.scrape.Scraper` when
``prometheus.read`` is set: every cycle, at one evaluation time, it runs one instant query per
gauge the observer reads (each engine's, grouped by the ``endpoint_label``), one of ``up``, and
one per counter and per histogram (its buckets at the SLO thresholds and ``+Inf``, which is its
``_count``), summed over the endpoints by Prometheus (each series' exact increase since the
previous round, so that restarts count as they do when scraping): the counters' answers, the
bulk of a page, do not grow with the replicas. The metrics feed takes the sums as the counters
of one endpoint, :data:`FLEET`.

:func:`bootstrap_budgets` fills a fresh budget engine from Prometheus's history: per SLO, its
bad and total events over adjacent steps, at the shortest burn-rate window over the longest
window counted exactly (:func:`slo.rules.sli_increases`: differences of the counters, not
``rate()``'s extrapolation), hourly (``period_resolution``) over the rest of the period by the
recording rules' rates. Where Prometheus holds less than a period, the coverage says how much.

A Prometheus that is down, slow (beyond ``timeout_s``) or answering errors or warnings fails the
round for every endpoint, with the reason: the sidecar holds, then falls back, as with engines
that do not answer, and reads again when it answers (the fleet's counters from where the last
round read them: nothing counted meanwhile is lost).
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Gauge
from prometheus_client.utils import floatToGoString

from policies.sidecar.config import PrometheusSettings, SidecarConfig
from policies.sidecar.observe import Observer
from policies.sidecar.parse import Sample, SeriesSelection
from policies.sidecar.scrape import Scraper, ScrapeResult
from policies.sidecar.telemetry import SidecarMetrics
from slo.durations import format_duration, parse_duration
from slo.engine import BudgetEngine
from slo.metrics import MetricMapping
from slo.prometheus_http import api_request, error_message
from slo.rules import counter_step, le_spellings, regex_alternatives, sli_increases, sli_rates
from slo.spec import ServiceSpec, SLOSpec

log = logging.getLogger("budgetpilot.sidecar")

#: Most points Prometheus returns per series of a range query.
MAX_POINTS = 11_000
#: Deadline of each history query at start (a period of history takes longer than a cycle's).
BOOTSTRAP_TIMEOUT_S = 30.0


class PrometheusError(RuntimeError):
    """A query failed; ``kind`` is ``connection``, ``timeout``, ``http_status``, ``response``
    or ``partial`` (an answer with warnings)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the sidecar makes.

    Parameters
    ----------
    url:
        The server's base URL.
    timeout_s:
        Deadline of one request.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list of its vector."""
        params = {"query": promql} | ({} if at is None else {"time": f"{at:.3f}"})
        return self._request("/api/v1/query", params)

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """A range query: the ``result`` list of its matrix (``values``: ``[time, "value"]``)."""
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
        }
        return self._request("/api/v1/query_range", params)

    def _request(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        try:
            with api_request(self.url, path, params, self.timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = f"{self.url}: HTTP {exc.code}: {error_message(exc)}"
            raise PrometheusError("http_status", detail) from None
        except TimeoutError:
            detail = f"{self.url}: no answer within {self.timeout_s:g} s"
            raise PrometheusError("timeout", detail) from None
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            kind = "timeout" if isinstance(reason, TimeoutError) else "connection"
            raise PrometheusError(kind, f"{self.url}: {reason}") from None
        except ValueError as exc:
            raise PrometheusError("response", f"{self.url}: not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusError("response", f"{self.url}: {str(body)[:200]}")
        if body.get("warnings"):  # e.g. a remote store that did not answer: data may be missing
            warnings = "; ".join(map(str, body["warnings"]))[:200]
            raise PrometheusError("partial", f"{self.url}: an answer with warnings: {warnings}")
        try:
            return list(body["data"]["result"])
        except (KeyError, TypeError):
            raise PrometheusError("response", f"{self.url}: no data.result in the answer") from None


# --------------------------------------------------------------------------------------------
# Reading each cycle


#: The endpoint whose page holds the fleet's counters, summed over every endpoint read.
FLEET = "prometheus:fleet"


def _series(name: str, matchers: str, le: Sequence[float] = ()) -> str:
    """The selector of ``name``'s series (with ``le`` bounds: its buckets at them and ``+Inf``,
    spelled as exporters write them)."""
    extra = f", {matchers}" if matchers else ""
    if not le:
        return f'{{__name__="{name}"{extra}}}'
    spellings = {"+Inf"}.union(*(le_spellings(bound) for bound in le))
    return f'{{__name__="{name}", le=~"{regex_alternatives(spellings)}"{extra}}}'


class PrometheusSource:
    """Reads the observer's metrics from Prometheus (the :class:`Scraper` interface).

    Every round runs, at one evaluation time, one instant query per gauge (per endpoint: the
    observation needs each replica's), one of ``up`` (which endpoints Prometheus scraped), and
    one per counter and per histogram (buckets at the thresholds and ``+Inf``, which is its
    ``_count``), summed over every endpoint by the labels the metrics feed tells series apart
    by: the answers of those do not grow with the replicas. The sums are of each series'
    increase since the previous round (:func:`slo.rules.counter_step`), not of the counters
    themselves: a replica that restarts drops its counters, and a sum of raw counters would lose
    its events, or, while the others grow faster than it dropped, not even show a drop. Their
    running totals make the page of the :data:`FLEET` endpoint, counters that only grow, so the
    metrics feed counts exactly what the replicas counted.

    Parameters
    ----------
    settings:
        The ``prometheus`` settings.
    selection:
        The series the observer reads (:attr:`policies.sidecar.observe.Observer.selection`).
    endpoints:
        ``(name, url)`` of the endpoints expected (urls are not used).
    gauges:
        Names in ``selection`` read per endpoint (the others are summed).
    sum_by:
        Labels the counters are summed by.
    clock:
        Wall time (Prometheus's time base).
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        selection: SeriesSelection,
        endpoints: Sequence[tuple[str, str | None]],
        gauges: Iterable[str],
        sum_by: Iterable[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.api = PrometheusAPI(settings.url, settings.timeout_s)
        self.gauges = sorted(set(gauges) & selection.names)
        # A histogram's _count is its +Inf bucket, which the query of its buckets reads already.
        self._count_of = {n: f"{n.removesuffix('_bucket')}_count" for n in selection.buckets}
        summed = selection.names - set(self.gauges) - set(self._count_of.values())
        self.counters = [(n, ()) for n in sorted(summed)]
        self.counters += [(n, tuple(sorted(b))) for n, b in sorted(selection.buckets.items())]
        self.sum_by = ", ".join(sorted(sum_by))
        self.clock = clock
        self._names: list[str] = []
        self._matchers = ""
        # The fleet's counters: per sample name and labels, the increases summed so far.
        self._totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._read_at: float | None = None  # evaluation time of the last round read
        self.set_endpoints(endpoints)
        workers = min(16, len(self.gauges) + len(self.counters) + 1)
        self._pool = ThreadPoolExecutor(workers, "sidecar-prometheus")

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """The endpoints read, each with the Prometheus URL."""
        return [(name, self.settings.url) for name in self._names]

    def set_endpoints(self, endpoints: Sequence[tuple[str, str | None]]) -> None:
        """Read the series of ``endpoints`` (by name) from the next round on."""
        self._names = [str(name) for name, _ in endpoints]
        label = self.settings.endpoint_label
        names = f'{label}=~"{regex_alternatives(self._names)}"'
        self._matchers = ", ".join(m for m in (names, self.settings.selector) if m)

    def queries(self, at: float) -> list[tuple[str, str]]:
        """``(sample name, PromQL)`` of one round evaluated at ``at``: gauges and ``up`` per
        series, then the counters' sums (since the previous round, or all of them at first)."""
        queries = [(name, _series(name, self._matchers)) for name in self.gauges]
        queries.append(("up", _series("up", self._matchers)))
        step = None if self._read_at is None else f"{round((at - self._read_at) * 1e3)}ms"
        for name, le in self.counters:
            selector = _series(name, self._matchers, le)
            counted = selector if step is None else counter_step(selector, step)
            queries.append((name, f"sum by ({self.sum_by}) ({counted})"))
        return queries

    def scrape(self, parse: Callable[[str, str], Any] | None = None) -> dict[str, ScrapeResult]:
        """Query every metric; per endpoint its gauges, for :data:`FLEET` the counters of all,
        or the round's error for all (``parse`` is not needed: Prometheus has parsed the
        pages)."""
        if not self._names:
            return {}
        start = time.perf_counter()
        # Scrapes are stamped when they start and seen when they end: reading a little behind
        # the clock, no scrape stamped before the evaluation time is still to come.
        at = round(self.clock() - self.settings.settle_s, 3)
        if self._read_at is not None:
            at = max(at, self._read_at + 0.001)  # a clock set back: the step stays positive
        queries = self.queries(at)
        futures = [self._pool.submit(self.api.query, q, at) for _, q in queries]
        try:
            answers = [(q[0], f.result()) for q, f in zip(queries, futures, strict=True)]
            results = self._read(answers, at, start)
        except PrometheusError as exc:
            return self._failed(futures, f"prometheus_{exc.kind}", str(exc), start)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            detail = f"unexpected series: {exc!r}"
            return self._failed(futures, "prometheus_response", detail, start)
        return results

    def _read(
        self, answers: list[tuple[str, list[dict[str, Any]]]], at: float, start: float
    ) -> dict[str, ScrapeResult]:
        """The round's results from the answers of :meth:`queries` (in its order). A sum that
        is not finite (a NaN counter) goes to the page as it is, for the metrics feed to
        report, and its total stays: its increases of this round are not counted."""
        label = self.settings.endpoint_label
        samples: dict[str, list[Sample]] = {name: [] for name in self._names}
        up: dict[str, float] = {}
        totals = dict(self._totals)
        fleet: list[Sample] = []
        counters = len(self.gauges) + 1
        for name, series in answers[:counters]:
            for one in series:
                labels, value = one["metric"], float(one["value"][1])
                endpoint = labels.get(label, "")
                if name == "up":
                    up[endpoint] = max(up.get(endpoint, 0.0), value)
                elif endpoint in samples:
                    labels.pop("__name__", None)
                    samples[endpoint].append((name, labels, value))
        for name, series in answers[counters:]:
            for one in series:
                labels, value = one["metric"], float(one["value"][1])
                if "le" in labels:  # one bound, one series, however each exporter spells it
                    labels["le"] = floatToGoString(float(labels["le"]))
                key = (name, tuple(sorted(labels.items())))
                if math.isfinite(value):
                    value = totals[key] = totals.get(key, 0.0) + value
                fleet.append((name, labels, value))
                if labels.get("le") == "+Inf" and name in self._count_of:
                    others = {k: v for k, v in labels.items() if k != "le"}
                    fleet.append((self._count_of[name], others, value))
        self._totals, self._read_at = totals, at
        elapsed = time.perf_counter() - start
        results = {FLEET: ScrapeResult(FLEET, fleet, seconds=elapsed)}
        for name, rows in samples.items():
            results[name] = self._endpoint(name, rows, up.get(name), elapsed)
        return results

    def _endpoint(
        self, name: str, rows: list[Sample], up: float | None, elapsed: float
    ) -> ScrapeResult:
        """An endpoint's result: its gauges, unless Prometheus has not scraped it."""
        if up is None:
            label = self.settings.endpoint_label
            detail = f"Prometheus holds no current series with {label}={name!r}"
            return ScrapeResult(name, error="prometheus_no_series", detail=detail, seconds=elapsed)
        if up < 1.0:
            detail = f"Prometheus's last scrape of {name} failed (up == 0)"
            return ScrapeResult(
                name, error="prometheus_target_down", detail=detail, seconds=elapsed
            )
        return ScrapeResult(name, rows, seconds=elapsed)

    def _failed(
        self, futures: list[Future], kind: str, detail: str, start: float
    ) -> dict[str, ScrapeResult]:
        """Every endpoint fails the round: a partial answer would mix two instants (the next
        round counts the fleet's increases since the last round read)."""
        for future in futures:
            future.cancel()
        elapsed = time.perf_counter() - start
        names = [FLEET, *self._names]
        return {n: ScrapeResult(n, error=kind, detail=detail, seconds=elapsed) for n in names}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Bootstrap from history


@dataclass(frozen=True)
class BootstrapReport:
    """What :func:`bootstrap_budgets` found.

    Parameters
    ----------
    coverage:
        Per SLO, the fraction of its period Prometheus held data for (0: none).
    events:
        Per SLO, the events ingested.
    skipped:
        SLOs not bootstrapped, with the reason.
    seconds:
        Wall time of the bootstrap.
    """

    coverage: dict[str, float]
    events: dict[str, float]
    skipped: dict[str, str]
    seconds: float


def bootstrap_budgets(
    api: PrometheusAPI,
    engine: BudgetEngine,
    mapping: MetricMapping,
    now: float,
    matchers: str = "",
) -> BootstrapReport:
    """Fill ``engine`` (fresh) with the events Prometheus holds over each SLO's period before
    ``now``, and move its clock to ``now``.

    Raises
    ------
    PrometheusError
        Prometheus cannot be queried.
    """
    start = time.perf_counter()
    fine = max(engine.resolution, float(engine.window_seconds.min()))
    coarse = engine.period_resolution
    fine_from = _floor(now - float(engine.window_seconds.max()), coarse)
    period_from = _floor(now - float(engine.periods.max()), coarse)
    # The windows' span is counted exactly; the rest of the period by rate()s, whose
    # extrapolation errs where a series starts within a step but which Prometheus evaluates
    # over weeks ten times faster than instant selectors.
    spans = [
        (period_from, fine_from, coarse, _summed_rates),
        (fine_from, _floor(now, fine), fine, sli_increases),
    ]
    jobs, skipped = [], {}
    for i, slo in enumerate(engine.slos):
        if slo.sli.llm.kind == "fairness":
            skipped[slo.name] = "fairness slices are judged live (per-tenant history not read)"
            continue
        for lo, hi, step, counted in spans:
            if hi <= lo:
                continue
            bad, total = counted(slo, engine.spec, mapping, format_duration(step), matchers)
            for what, expr in (("bad", bad), ("total", total)):
                jobs.append((i, what, expr, lo + step, hi, step))
    counts: dict[float, np.ndarray] = {}
    first_seen = np.full(len(engine.slos), math.inf)
    with ThreadPoolExecutor(8, "sidecar-bootstrap") as pool:
        answers = pool.map(lambda job: _range(api, *job[2:]), jobs)
        for (i, what, *_), points in zip(jobs, answers, strict=True):
            column = 2 * i + (what == "total")
            for t, value in points:
                counts.setdefault(t, np.zeros(2 * len(engine.slos)))[column] += value
                if what == "total" and value > 0:
                    first_seen[i] = min(first_seen[i], t)
    tenant_zeros = [np.zeros(s.sli.llm.max_tenants) for s in engine.slos if s.name in skipped]
    ingested = np.zeros(len(engine.slos))
    for t in sorted(counts):
        bad, total = counts[t][0::2], counts[t][1::2]
        good = np.clip(total - bad, 0.0, None)
        engine.ingest_counts(t, good, total, tenant_zeros, tenant_zeros)
        ingested += total
    engine.advance_to(now)
    coverage = {
        slo.name: float(np.clip((now - first_seen[i] + coarse) / engine.periods[i], 0.0, 1.0))
        if math.isfinite(first_seen[i])
        else 0.0
        for i, slo in enumerate(engine.slos)
        if slo.name not in skipped
    }
    events = {s.name: float(ingested[i]) for i, s in enumerate(engine.slos) if s.name in coverage}
    return BootstrapReport(coverage, events, skipped, time.perf_counter() - start)


def _summed_rates(
    slo: SLOSpec, spec: ServiceSpec, mapping: MetricMapping, step: str, matchers: str = ""
) -> tuple[str, str]:
    """The bad and total events of the recording rules' rates over ``step``, per step."""
    seconds = parse_duration(step)
    bad, total = sli_rates(slo, spec, mapping, step, matchers)
    return f"({bad}) * {seconds:g}", f"({total}) * {seconds:g}"


def _range(
    api: PrometheusAPI, expr: str, lo: float, hi: float, step: float
) -> list[tuple[float, float]]:
    """``(time, value)`` of a scalar-valued range query, in chunks within the points limit.

    Raises
    ------
    PrometheusError
        The query failed, or its answer is not a matrix of the span asked for.
    """
    points = []
    chunk = step * (MAX_POINTS - 1)
    while lo <= hi:
        end = min(hi, lo + chunk)
        try:
            for series in api.query_range(expr, lo, end, step):
                for t, value in series["values"]:
                    t, value = float(t), float(value)
                    if not lo <= t <= end:
                        raise ValueError(f"a point at {t:.0f}, out of [{lo:.0f}, {end:.0f}]")
                    if math.isfinite(value):
                        points.append((t, value))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusError("response", f"{api.url}: unexpected series: {exc!r}") from None
        lo = end + step
    return points


def _floor(t: float, step: float) -> float:
    return math.floor(t / step) * step


# --------------------------------------------------------------------------------------------
# The sidecar's hooks


def build_source(
    config: SidecarConfig, observer: Observer, endpoints: Sequence[tuple[str, str | None]]
) -> Scraper | PrometheusSource:
    """What the sidecar reads its metrics from: Prometheus (``prometheus.read``; the observer
    then reads the counters from the :data:`FLEET` page) or the endpoints themselves."""
    if config.prometheus is not None and config.prometheus.read:
        observer.fleet_counters = FLEET
        sum_by = observer.feed.labels_read
        return PrometheusSource(
            config.prometheus, observer.selection, endpoints, observer.gauges, sum_by
        )
    return Scraper(
        endpoints,
        timeout_s=config.scrape.timeout_s,
        max_workers=config.scrape.max_workers,
        max_page_bytes=config.scrape.max_page_bytes,
    )


def bootstrap_sidecar(
    config: SidecarConfig, observer: Observer, metrics: SidecarMetrics, now: float
) -> BootstrapReport | None:
    """Bootstrap the observer's fresh budgets from Prometheus (``prometheus.bootstrap``);
    the coverage goes to the log and to ``budgetpilot_sidecar_bootstrap_coverage{slo}``. A
    Prometheus that cannot answer leaves the budgets fresh, and says so."""
    settings = config.prometheus
    if settings is None or not settings.bootstrap:
        return None
    api = PrometheusAPI(settings.url, max(settings.timeout_s, BOOTSTRAP_TIMEOUT_S))
    try:
        report = bootstrap_budgets(
            api, observer.engine, observer.feed.mapping, now, settings.selector
        )
    except PrometheusError as exc:
        metrics.state_errors.labels("bootstrap").inc()
        log.error("budgets not bootstrapped from Prometheus (%s): they start fresh", exc)
        return None
    gauge = Gauge(
        "budgetpilot_sidecar_bootstrap_coverage",
        "Fraction of the SLO period the budgets were bootstrapped from Prometheus's history "
        "(absent: not bootstrapped).",
        ["slo"],
        registry=metrics.registry,
    )
    for slo, coverage in report.coverage.items():
        gauge.labels(slo).set(coverage)
    log.info(
        "budgets bootstrapped from %s in %.1f s: coverage of the period %s%s",
        settings.url,
        report.seconds,
        ", ".join(f"{slo} {c:.0%}" for slo, c in report.coverage.items()),
        "".join(f"; {slo} not bootstrapped: {why}" for slo, why in report.skipped.items()),
    )
    return report
