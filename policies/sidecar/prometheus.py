"""Prometheus as the sidecar's source: the metrics it already scraped, and their history.

:class:`PrometheusSource` stands in for :class:`~policies.sidecar.scrape.Scraper` when
``prometheus.read`` is set: every cycle it runs one instant query per metric the observer reads
(a gauge, a counter, a histogram's ``_count``, its bucket at the SLO threshold) over the HTTP
API, concurrently, and hands the samples to the observer grouped by the endpoint they were
scraped from (the ``endpoint_label``), as if it had scraped each page itself: the metrics feed
then takes the same counter deltas, restarts and missing series included. The sidecar opens a
dozen connections per cycle whatever the number of replicas.

:func:`bootstrap_budgets` fills a fresh budget engine from Prometheus's history: per SLO, the
rates of its bad and total events (the expressions of the recording rules,
:func:`slo.rules.sli_rates`) over adjacent steps, hourly (``period_resolution``) over the
period, then at the shortest burn-rate window over the longest window, ingested as counts.
Where Prometheus holds less than a period, the coverage says how much.

A Prometheus that is down, slow (beyond ``timeout_s``) or answering errors fails the round for
every endpoint, with the reason: the sidecar holds, then falls back, as with engines that do not
answer, and reads again when it answers.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
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
from slo.durations import format_duration
from slo.engine import BudgetEngine
from slo.metrics import MetricMapping
from slo.rules import sli_rates

log = logging.getLogger("budgetpilot.sidecar")

#: Most points Prometheus returns per series of a range query.
MAX_POINTS = 11_000
#: Deadline of each history query at start (a period of history takes longer than a cycle's).
BOOTSTRAP_TIMEOUT_S = 30.0


class PrometheusError(RuntimeError):
    """A query failed; ``kind`` is ``connection``, ``timeout``, ``http_status`` or ``response``."""

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
        return self._get("/api/v1/query", params)

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
        return self._get("/api/v1/query_range", params)

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = f"{self.url}: HTTP {exc.code}: {_error_of(exc)}"
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
        try:
            return list(body["data"]["result"])
        except (KeyError, TypeError):
            raise PrometheusError("response", f"{self.url}: no data.result in the answer") from None


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))[:200]
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


# --------------------------------------------------------------------------------------------
# Reading each cycle


def selection_queries(selection: SeriesSelection, matchers: str = "") -> list[str]:
    """One instant query per metric of ``selection``: whole series by name, histogram buckets
    at their selected bounds and ``+Inf`` (spelled as exporters write them)."""
    extra = f", {matchers}" if matchers else ""
    queries = [f'{{__name__="{name}"{extra}}}' for name in sorted(selection.names)]
    for name, bounds in sorted(selection.buckets.items()):
        spellings = {"+Inf"}
        for bound in bounds:
            spellings |= {floatToGoString(bound), f"{bound:g}", repr(float(bound))}
        le = "|".join(sorted(s.replace("+", "\\\\+").replace(".", "\\\\.") for s in spellings))
        queries.append(f'{{__name__="{name}", le=~"{le}"{extra}}}')
    return queries


class PrometheusSource:
    """Reads the observer's metrics from Prometheus (the :class:`Scraper` interface).

    Parameters
    ----------
    settings:
        The ``prometheus`` settings.
    selection:
        The series the observer reads (:attr:`policies.sidecar.observe.Observer.selection`).
    endpoints:
        ``(name, url)`` of the endpoints expected (urls are not used).
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        selection: SeriesSelection,
        endpoints: Sequence[tuple[str, str | None]],
    ) -> None:
        self.settings = settings
        self.api = PrometheusAPI(settings.url, settings.timeout_s)
        self.queries = selection_queries(selection, settings.selector)
        self._names: list[str] = []
        self.set_endpoints(endpoints)
        self._pool = ThreadPoolExecutor(min(16, len(self.queries)), "sidecar-prometheus")

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """The endpoints read, each with the Prometheus URL."""
        return [(name, self.settings.url) for name in self._names]

    def set_endpoints(self, endpoints: Sequence[tuple[str, str | None]]) -> None:
        """Expect the series of ``endpoints`` (by name) from the next round on."""
        self._names = [str(name) for name, _ in endpoints]

    def scrape(self, parse: Callable[[str, str], Any] | None = None) -> dict[str, ScrapeResult]:
        """Query every metric; per endpoint its samples, or the round's error (``parse`` is not
        needed: Prometheus has parsed the pages)."""
        start = time.perf_counter()
        futures = [self._pool.submit(self.api.query, q) for q in self.queries]
        label = self.settings.endpoint_label
        samples: dict[str, list[Sample]] = {name: [] for name in self._names}
        try:
            for future in futures:
                for series in future.result():
                    labels = series["metric"]  # a dict of its own, fresh from the JSON
                    rows = samples.get(labels.get(label, ""))
                    if rows is not None:
                        name = labels.pop("__name__", "")
                        rows.append((name, labels, float(series["value"][1])))
        except PrometheusError as exc:
            return self._failed(futures, f"prometheus_{exc.kind}", str(exc), start)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            detail = f"unexpected series: {exc!r}"
            return self._failed(futures, "prometheus_response", detail, start)
        elapsed = time.perf_counter() - start
        return {
            name: ScrapeResult(name, rows, seconds=elapsed)
            if rows
            else ScrapeResult(
                name,
                error="prometheus_no_series",
                detail=f"Prometheus holds no current series with {label}={name!r}",
                seconds=elapsed,
            )
            for name, rows in samples.items()
        }

    def _failed(
        self, futures: list[Future], kind: str, detail: str, start: float
    ) -> dict[str, ScrapeResult]:
        """Every endpoint fails the round: a partial answer would mix two instants."""
        for future in futures:
            future.cancel()
        elapsed = time.perf_counter() - start
        return {n: ScrapeResult(n, error=kind, detail=detail, seconds=elapsed) for n in self._names}

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
    spans = [(period_from, fine_from, coarse), (fine_from, _floor(now, fine), fine)]
    jobs, skipped = [], {}
    for i, slo in enumerate(engine.slos):
        if slo.sli.llm.kind == "fairness":
            skipped[slo.name] = "fairness slices are judged live (per-tenant history not read)"
            continue
        for lo, hi, step in spans:
            if hi <= lo:
                continue
            bad, total = sli_rates(slo, engine.spec, mapping, format_duration(step), matchers)
            for what, expr in (("bad", bad), ("total", total)):
                jobs.append((i, what, f"({expr}) * {step:g}", lo + step, hi, step))
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


def _range(
    api: PrometheusAPI, expr: str, lo: float, hi: float, step: float
) -> list[tuple[float, float]]:
    """``(time, value)`` of a scalar-valued range query, in chunks within the points limit."""
    points = []
    chunk = step * (MAX_POINTS - 1)
    while lo <= hi:
        end = min(hi, lo + chunk)
        for series in api.query_range(expr, lo, end, step):
            for t, value in series["values"]:
                value = float(value)
                if math.isfinite(value):
                    points.append((float(t), value))
        lo = end + step
    return points


def _floor(t: float, step: float) -> float:
    return math.floor(t / step) * step


# --------------------------------------------------------------------------------------------
# The sidecar's hooks


def build_source(
    config: SidecarConfig, selection: SeriesSelection, endpoints: Sequence[tuple[str, str | None]]
) -> Scraper | PrometheusSource:
    """What the sidecar reads its metrics from: Prometheus (``prometheus.read``) or the
    endpoints themselves."""
    if config.prometheus is not None and config.prometheus.read:
        return PrometheusSource(config.prometheus, selection, endpoints)
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
