"""Scraped metrics -> error budgets and fleet signals -> the policy's observation vector.

Counters and histograms go through :class:`slo.metrics.MetricsFeed` into a
:class:`slo.engine.BudgetEngine` built from the policy's SLO spec (burn rates from counter and
histogram deltas, restarts handled). Each engine's gauges become
:class:`envs.contract.ReplicaGauges` and :class:`envs.contract.FleetSignalTracker` computes the
same fleet features as the environment, so :meth:`ObservationContract.build` rebuilds the
vector the policy was trained on.

Missing data never becomes NaN: a replica whose scrape failed or whose page is unreadable is not
healthy this cycle (as a failed replica in training); a non-finite or missing gauge of an
answering replica keeps its last good value (0 before any); non-finite counters are skipped.
Every such problem is reported in the :class:`IngestReport`.

What the policy sees of budgets it cannot measure (the documented choice):

* an SLO without data (nothing in its shortest window, see
  :attr:`slo.engine.BudgetSnapshot.no_data`) keeps the burn rates, budget and alert it last had
  with data (before any: burn 0, budget untouched, no alert); after
  ``missing_data.after_cycles`` intervals without data the sidecar stops deciding by policy
  (see :mod:`policies.sidecar.loop`);
* a period still warming up (a start without saved state) counts its part without data as
  unspent, which is how training starts an episode with an untouched budget: the budget
  observed is ``1 - coverage * (1 - measured budget remaining)``; displays show it as
  ``warming_up``, not as a figure;
* a missing throughput counter (``finished``, or the router's ``arrivals``) on a page that
  answered makes the interval's arrivals unknown: the last known value stands, and the problem
  is reported; the same for preemptions.

Replicas may come and go (:meth:`Observer.set_engines`, from discovery): each one's gauge state
follows its name; only serving and draining replicas are scraped and counted in the load
features, a provisioning one is neither healthy nor counted (as
:class:`~envs.contract.FleetSignalTracker` does in training). A replica first listed while
provisioning has not started its engine: its counters are registered as empty then, so that its
first page counts from zero rather than as a baseline. With the lifecycle and the desired
replicas per pool, the observation has the replica features of an elastic contract.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.contract import (
    ALERT_LEVELS,
    OBSERVATION_VERSION,
    OBSERVATION_VERSION_V3,
    ROLES,
    FleetShape,
    FleetSignals,
    FleetSignalTracker,
    ObservationContract,
    ReplicaGauges,
    ReplicaLifecycle,
)
from policies.sidecar.config import EngineEndpoint
from policies.sidecar.discovery import SCRAPED, STATES, DiscoveredEngine
from policies.sidecar.envelope import engine_role
from policies.sidecar.parse import Sample, SeriesSelection, read_page
from policies.sidecar.scrape import ScrapeResult
from slo.engine import BudgetEngine, BudgetSnapshot
from slo.metrics import MetricMapping, MetricsFeed, ScrapeReport, counter_increase, engine_gap
from slo.spec import ServiceSpec

#: What the metrics feed reports, by problem kind (``kind`` label of the scrape-error counter).
_FEED_PROBLEMS = {
    "missing_series": "missing_series",
    "missing_endpoints": "missing_endpoint",
    "non_finite": "non_finite",
    "duplicates": "duplicate",
    "unparsable": "parse",
    "inexact": "inexact",
    "incomplete": "incomplete",
    "inconsistent": "inconsistent",
    "no_data": "no_data",
    "out_of_order": "out_of_order",
    "resets": "counter_reset",
}
_GAUGES = ("kv", "waiting", "running")
_COUNTERS = ("preemptions", "finished", "arrivals")


class FeedabilityError(ValueError):
    """The configured metrics cannot feed the policy's contract (the message says why)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with this cycle's metrics."""

    endpoint: str
    kind: str
    detail: str


@dataclass(frozen=True)
class IngestReport:
    """What one scrape round delivered.

    Parameters
    ----------
    time:
        Scrape time.
    complete:
        Whether the budgets and signals are fully fed: some engine answered, every counter
        endpoint answered, no SLO threshold missed its histogram's buckets.
    engines_ok, engines:
        Engines that answered with a readable page, engines configured.
    problems:
        Everything skipped or failed.
    """

    time: float
    complete: bool
    engines_ok: int
    engines: int
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class Observation:
    """An observation vector and what it was built from.

    ``snapshot`` holds the budgets as measured; ``burn_rates``, ``budget`` and ``alerts`` what
    the policy was shown of them (see the module docstring); ``unknown_signals`` the fleet
    signals whose last known value stood in.
    """

    time: float
    vector: np.ndarray
    snapshot: BudgetSnapshot
    signals: FleetSignals
    healthy_replicas: int
    replicas: int
    arrivals: float
    preemptions: float
    replica_counts: dict[str, dict[str, int]] | None = None
    unknown_signals: tuple[str, ...] = ()

    def summary(self, contract: ObservationContract) -> dict[str, Any]:
        """A JSON-ready summary: budgets per SLO (figures rounded for display, none where
        there is no data), pool and fleet signals."""
        snapshot = self.snapshot
        states = snapshot.budget_states()
        slos = {}
        for i, name in enumerate(snapshot.slo_names):
            coverage = snapshot.window_coverage[i]
            burn = {
                w: _shown(snapshot.burn_rates[i, j], coverage[j] > 0)
                for j, w in enumerate(snapshot.windows)
            }
            slos[name] = {
                "state": states[i],
                "burn_rates": {w: burn[w] for w in contract.windows},
                "budget_remaining": _shown(
                    snapshot.budget_remaining[i], states[i] not in ("no_data", "warming_up")
                ),
                "alert": ("none", "ticket", "page")[int(snapshot.alert_levels[i])],
                "coverage": {
                    w: round(float(coverage[j]), 4) for j, w in enumerate(snapshot.windows)
                },
                "period_coverage": round(float(snapshot.period_coverage[i]), 6),
            }
        return {
            "time": self.time,
            "slos": slos,
            "pools": {p: dict(f) for p, f in self.signals.pools.items()},
            "fleet": dict(self.signals.fleet),
            "unknown_signals": list(self.unknown_signals),
            "healthy_replicas": self.healthy_replicas,
            "replicas": self.replicas,
            **({} if self.replica_counts is None else {"replica_counts": self.replica_counts}),
        }


#: Significant digits of figures shown in decisions (float noise such as 2.0000000000002203
#: is not information).
DISPLAY_DIGITS = 6


def _shown(value: float, known: bool = True) -> float | None:
    """A figure for display: rounded, None when unknown or not finite."""
    value = float(value)
    if not known or not math.isfinite(value):
        return None
    return float(f"{value:.{DISPLAY_DIGITS}g}")


#: An engine as the observer needs it: a configured one, or one from discovery.
Engine = EngineEndpoint | DiscoveredEngine


def contract_pool(contract: ObservationContract, engine: Engine) -> str:
    """The contract pool ``engine`` is observed in: its pool (v2), its role (v3)."""
    return engine_role(engine) if contract.by_role else engine.pool


def fleet_shape(
    engines: Sequence[Engine],
    capacity: Mapping[str, float],
    pool_max_replicas: Mapping[str, int] | None = None,
) -> FleetShape | None:
    """The :class:`~envs.contract.FleetShape` of the fleet of ``engines`` for a v3
    observation: the roles' capacities as configured (``fleet_capacity``); their most replicas
    the sums of their pools' ``pool_max_replicas`` (an elastic fleet's ``scaling`` caps), else
    their replicas as listed (``None`` without the strong role's capacity)."""
    if "strong" not in capacity:
        return None
    if pool_max_replicas:
        role_of = {e.pool: engine_role(e) for e in engines}
        caps = [(role_of.get(pool), cap) for pool, cap in pool_max_replicas.items()]
        most = tuple(sum(cap for role, cap in caps if role == r) for r in ROLES)
    else:
        roles = [engine_role(e) for e in engines]
        most = tuple(roles.count(r) for r in ROLES)
    return FleetShape(
        capacity_rps=capacity["strong"],
        role_capacity_rps=tuple(float(capacity.get(r, 0.0)) for r in ROLES),
        role_max_replicas=most,
    )


@dataclass
class _Replicas:
    """Per-engine gauge state, arrays indexed like the engines (``lifecycle``: ``None`` when
    every engine is taken as serving, a fixed list)."""

    names: tuple[str, ...]
    pool: np.ndarray
    max_num_seqs: np.ndarray
    lifecycle: np.ndarray | None
    answered_at: np.ndarray = field(init=False)  # time of the last readable page (-inf: never)
    values: dict[str, np.ndarray] = field(init=False)  # last good value per gauge
    # KV usage since the last observation: samples times the seconds each stands for, seconds.
    kv_sum: np.ndarray = field(init=False)
    kv_seconds: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.pool)
        self.answered_at = np.full(n, -np.inf)
        self.values = {g: np.zeros(n) for g in _GAUGES}
        self.kv_sum = np.zeros(n)
        self.kv_seconds = np.zeros(n)

    @classmethod
    def of(
        cls, contract: ObservationContract, engines: Sequence[Engine], previous: _Replicas | None
    ) -> _Replicas:
        """State of ``engines``: what ``previous`` knew of the same names, fresh for others."""
        lifecycle = [getattr(e, "lifecycle", None) for e in engines]
        replicas = cls(
            names=tuple(e.name for e in engines),
            pool=np.array(
                [contract.pools.index(contract_pool(contract, e)) for e in engines], dtype=np.int64
            ),
            max_num_seqs=np.array([e.max_num_seqs for e in engines], dtype=float),
            lifecycle=None if None in lifecycle else np.array(lifecycle, dtype=np.int64),
        )
        if previous is not None:
            rows = {name: i for i, name in enumerate(previous.names)}
            pairs = [(i, rows[n]) for i, n in enumerate(replicas.names) if n in rows]
            if pairs:
                new, old = (list(x) for x in zip(*pairs, strict=True))
                replicas.answered_at[new] = previous.answered_at[old]
                replicas.kv_sum[new] = previous.kv_sum[old]
                replicas.kv_seconds[new] = previous.kv_seconds[old]
                for gauge in _GAUGES:
                    replicas.values[gauge][new] = previous.values[gauge][old]
        return replicas

    def reporting(self) -> np.ndarray:
        """Which replicas are serving or draining (hold requests, answer scrapes)."""
        if self.lifecycle is None:
            return np.ones(len(self.names), dtype=bool)
        return np.isin(self.lifecycle, SCRAPED)

    def counts(self, contract: ObservationContract) -> dict[str, dict[str, int]] | None:
        """Per contract pool, how many of its replicas are in each listed state (``None``
        without lifecycle)."""
        if self.lifecycle is None:
            return None
        return {
            pool: {
                state: int(np.sum((self.pool == p) & (self.lifecycle == code)))
                for state, code in STATES.items()
            }
            for p, pool in enumerate(contract.pools)
        }


class _CounterDeltas:
    """Increases of counters per series between scrapes (first sight of an endpoint is a
    baseline, a new series on a known endpoint counts from zero, a drop is a restart)."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str, tuple], float] = {}
        self._endpoints: set[str] = set()

    def increase(self, endpoint: str, name: str, series: Sequence[tuple[dict, float]]) -> float:
        known = endpoint in self._endpoints
        total = 0.0
        for labels, value in series:
            key = (endpoint, name, tuple(sorted(labels.items())))
            previous = self._previous.get(key)
            self._previous[key] = value
            if not known:
                continue
            total += counter_increase(previous, value)
        return total

    def seen(self, endpoint: str) -> None:
        self._endpoints.add(endpoint)

    def forget(self, endpoints: set[str]) -> None:
        """Drop what is known of ``endpoints`` (replicas gone: pods do not come back)."""
        self._endpoints -= endpoints
        self._previous = {k: v for k, v in self._previous.items() if k[0] not in endpoints}


class Observer:
    """Builds the policy's observations from scrapes.

    Parameters
    ----------
    contract:
        The policy's observation contract.
    spec:
        The policy's SLO spec (the budget engine is built from it).
    mapping:
        Metric names of the engines, their scheduler's ``waiting``, ``running``,
        ``preemptions`` and ``finished`` included (see :class:`slo.metrics.MetricMapping`).
    arrivals:
        Name of a counter of arrivals (a router's requests; ``None``: estimated from the
        engines' finished requests and queues).
    engines:
        The engines, with their pool and ``max_num_seqs`` (and their lifecycle when they come
        from discovery; see :meth:`set_engines`).
    counter_endpoints:
        Names of the endpoints exporting budgetpilot counters.
    interval_s:
        Seconds between observations (the fleet-signal tracker's interval).
    stale_after_s:
        A replica whose last readable page is older is not healthy.
    min_coverage:
        Share of a window (of the period) that must hold data for its alerts (for the budget to
        leave warm-up), see :class:`slo.engine.BudgetEngine`.
    fleet_capacity:
        Requests/s each role serves saturated (a v3 contract observes load and queues
        relative to them; see :func:`fleet_shape`).
    pool_max_replicas:
        Most replicas of each pool of an elastic fleet (its ``scaling`` caps): a v3 contract
        observes each role's replicas relative to their sum.

    Raises
    ------
    FeedabilityError
        When the metrics cannot feed the contract (see :func:`check_feedable`).
    """

    def __init__(
        self,
        contract: ObservationContract,
        spec: ServiceSpec,
        mapping: str | Mapping[str, Any] | MetricMapping,
        arrivals: str | None,
        engines: Sequence[EngineEndpoint],
        counter_endpoints: Sequence[str],
        interval_s: float,
        stale_after_s: float,
        min_coverage: float = 0.9,
        fleet_capacity: Mapping[str, float] | None = None,
        pool_max_replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.contract = contract
        self.fleet_capacity = dict(fleet_capacity or {})
        self.pool_max_replicas = dict(pool_max_replicas or {})
        # The sidecar has seen nothing before it started (a restored state brings its history).
        self.engine = BudgetEngine(spec, history_covered=False, min_coverage=min_coverage)
        self.feed = MetricsFeed(self.engine, mapping)
        names = self.feed.mapping
        self.signal_names = {
            "waiting": names.waiting,
            "running": names.running,
            "preemptions": names.preemptions,
            "finished": names.finished,
            "arrivals": arrivals,
        }
        self.engines: tuple[Engine, ...] = tuple(engines)
        self.counter_endpoints = tuple(counter_endpoints)
        check_feedable(
            contract,
            self.feed,
            self.signal_names,
            self.engines,
            counter_endpoints,
            self.fleet_capacity,
        )
        self.interval_s = float(interval_s)
        self.stale_after_s = float(stale_after_s)
        self._gauge_names = {
            "kv": self.feed.mapping.kv_cache_usage,
            "waiting": self.signal_names["waiting"],
            "running": self.signal_names["running"],
        }
        self.selection = self._selection()
        read_by_feed = {s.metric for s in self.feed.sources}
        read_by_feed |= {f"{name}_count" for name in read_by_feed}
        signals = {*self._gauge_names.values(), *(self.signal_names.get(c) for c in _COUNTERS)}
        self._signal_only = signals - read_by_feed - {None}
        self._window_index = [self.engine.windows.index(w) for w in contract.windows]
        self._needs_counters = any(not s.exact_from_engine for s in self.feed.sources)
        self.tracker = FleetSignalTracker(contract, interval_s, self._fleet_shape(self.engines))
        self.replicas = _Replicas.of(contract, self.engines, None)
        self._engine_index = {e.name: i for i, e in enumerate(self.engines)}
        self._listed = {e.name for e in self.engines}  # the names listed now
        self._unstarted: set[str] = set()  # newly listed while provisioning, not yet fed
        self._fed: set[str] = set()  # endpoints the metrics feed has seen
        self._counters = _CounterDeltas()
        self._interval_counts = dict.fromkeys(_COUNTERS, 0.0)
        self._snapshot: BudgetSnapshot | None = None
        self._last_observed: float | None = None
        self._queue_at_last_observation: float | None = None
        n_slo = len(self.engine.slos)
        #: Per SLO, the time of the last scrape round that measured it (NaN: never).
        self.measured_at = np.full(n_slo, np.nan)
        # What the policy last saw of each SLO with data: burn rates, budget, alert level.
        n_windows = len(self._window_index)
        self._last_shown = (np.zeros((n_slo, n_windows)), np.ones(n_slo), np.zeros(n_slo))
        self._unknown: set[str] = set()  # signals missing from a page this interval
        self._last_rates = {"arrivals": 0.0, "preemptions": 0.0}
        #: The endpoint whose page holds every endpoint's counters (summed by Prometheus),
        #: or ``None``: each page holds its own.
        self.fleet_counters: str | None = None

    @property
    def gauges(self) -> frozenset[str]:
        """Names of the gauges read from each engine's page."""
        return frozenset(name for name in self._gauge_names.values() if name)

    def _selection(self) -> SeriesSelection:
        names = [*self._gauge_names.values(), *self.signal_names.values()]
        buckets: dict[str, set[float]] = {}
        for source in self.feed.sources:
            if source.kind == "histogram":
                names.append(f"{source.metric}_count")
                buckets.setdefault(f"{source.metric}_bucket", set()).add(float(source.threshold))
            else:
                names.append(source.metric)
        return SeriesSelection.of(names, buckets)

    # ----------------------------------------------------------------------------------------

    def set_engines(self, engines: Sequence[DiscoveredEngine]) -> list[Problem]:
        """Observe ``engines`` (a discovery listing) from now on: replicas keep their gauge
        state by name, new ones start fresh. Engines in pools the contract does not know are
        left out and reported."""
        pools = self.contract.pools
        problems = [
            Problem(e.name, "discovery", f"pool {e.pool!r} is not a pool of the policy's contract")
            for e in engines
            if contract_pool(self.contract, e) not in pools
        ]
        known = tuple(e for e in engines if contract_pool(self.contract, e) in pools)
        names = {e.name for e in known}
        for engine in known:
            if (
                engine.name not in self._listed
                and engine.lifecycle == ReplicaLifecycle.PROVISIONING
            ):
                self._unstarted.add(engine.name)
        self._counters.forget(self._listed - names)
        self.feed.forget(self._listed - names)
        self._listed = names
        self._unstarted &= {e.name for e in known if e.lifecycle not in SCRAPED}
        self.replicas = _Replicas.of(self.contract, known, self.replicas)
        self.engines = known
        self._engine_index = {e.name: i for i, e in enumerate(known)}
        if self.contract.by_role:  # the roles' replicas changed
            self.tracker.shape = self._fleet_shape(known)
        return problems

    def _fleet_shape(self, engines: Sequence[Engine]) -> FleetShape | None:
        return fleet_shape(engines, self.fleet_capacity, self.pool_max_replicas)

    def parse(self, endpoint: str, text: str) -> list[Sample]:
        """Read one endpoint's page (thread-safe: called in the scraping threads)."""
        return read_page(text, self.selection)

    def ingest(self, now: float, results: Mapping[str, ScrapeResult]) -> IngestReport:
        """Feed one scrape round (results by endpoint name) taken at ``now``."""
        problems = [
            Problem(name, r.error, r.detail) for name, r in results.items() if r.error is not None
        ]
        pages = {name: r.value for name, r in results.items() if r.ok}
        if pages:
            # Engines that have not started yet have counted nothing: registering them empty
            # makes their first page count from zero (the feed reads a known endpoint's drop
            # as a restart already).
            pending = self._unstarted - set(pages)
            report = self.feed.update(now, pages | {name: [] for name in pending - self._fed})
            self._fed |= set(pages) | pending
            for name in pending:
                self._counters.seen(name)
            self._unstarted.clear()
            self.measured_at[self.feed.measured] = now
            problems += self._expected(_feed_problems(report))
            self._snapshot = self.engine.snapshot()
        else:
            report = None  # blind: the engine keeps its clock rather than count silence as good
        for name, samples in pages.items():
            problems += self._read_signals(now, name, samples)
        engines_ok = sum(1 for e in self.engines if e.name in pages)
        counters_ok = all(name in pages for name in self.counter_endpoints)
        complete = (
            engines_ok > 0
            and (counters_ok or not self._needs_counters)
            and not (report and report.inexact)
        )
        return IngestReport(now, complete, engines_ok, len(self.engines), tuple(problems))

    def _expected(self, problems: list[Problem]) -> list[Problem]:
        """``problems`` without the feed's missing endpoints that are not expected to answer:
        replicas gone, or not serving (the feed remembers every endpoint it has seen)."""
        scraped = self.replicas.reporting()
        expected = {n for n, s in zip(self.replicas.names, scraped, strict=True) if s}
        expected |= set(self.counter_endpoints)
        return [p for p in problems if p.kind != "missing_endpoint" or p.endpoint in expected]

    def _read_signals(self, now: float, endpoint: str, samples: list[Sample]) -> list[Problem]:
        """Update gauges (engines) and signal counters (any endpoint) from one page."""
        by_name: dict[str, list[tuple[dict, float]]] = {}
        problems = []
        for name, labels, value in samples:
            if math.isfinite(value):
                by_name.setdefault(name, []).append((labels, value))
            elif name in self._signal_only:  # the feed reports the series it reads itself
                problems.append(Problem(endpoint, "non_finite", f"{name}{labels} = {value}"))
        index = self._engine_index.get(endpoint)
        for counter in _COUNTERS:
            name = self.signal_names.get(counter)
            if name in by_name:
                increase = self._counters.increase(endpoint, name, by_name[name])
                self._interval_counts[counter] += increase
            elif name and self._reports(counter, endpoint, index is not None):
                self._unknown.add(counter)
                problems.append(Problem(endpoint, "missing_series", f"no finite value of {name}"))
        self._counters.seen(endpoint)
        if index is None:
            return problems
        state = self.replicas
        # A sample stands for the time since the replica's previous one or the last observation,
        # whichever is later: the mean is time-weighted, as the environment's is (equal to the
        # plain mean when scrapes are evenly spaced, which is what the first interval takes).
        observed = self._last_observed
        held = 1.0 if observed is None else now - max(state.answered_at[index], observed)
        state.answered_at[index] = now
        for gauge, name in self._gauge_names.items():
            values = [v for _, v in by_name.get(name, ())]
            if not values:
                problems.append(Problem(endpoint, "missing_series", f"no finite value of {name}"))
                continue  # the last good value stands
            if gauge == "kv":
                value = min(1.0, max(0.0, sum(values) / len(values)))
                state.kv_sum[index] += value * max(held, 0.0)
                state.kv_seconds[index] += max(held, 0.0)
            else:
                value = max(0.0, sum(values))
            state.values[gauge][index] = value
        return problems

    def _reports(self, counter: str, endpoint: str, engine: bool) -> bool:
        """Whether ``endpoint``'s page must carry ``counter``: engines their finished
        requests, counter endpoints the arrivals, or the fleet's page both (preemption series
        may appear with the first preemption)."""
        if self.fleet_counters is not None:
            return endpoint == self.fleet_counters and counter != "preemptions"
        return counter == ("finished" if engine else "arrivals")

    def seconds_without_data(self, now: float, since: float) -> dict[str, float]:
        """Per SLO, seconds since a scrape round last measured it (since ``since`` if never)."""
        last = np.where(np.isnan(self.measured_at), since, self.measured_at)
        return dict(zip(self.engine.slo_names, (now - last).tolist(), strict=True))

    # ----------------------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        knob_units: Mapping[str, float],
        desired: Sequence[float] | None = None,
    ) -> Observation:
        """The observation at ``now`` with the knobs in force (each in [-1, 1]) and, for an
        elastic contract, the desired replicas of every contract pool (in its order)."""
        state = self.replicas
        reporting = state.reporting()
        healthy = ((now - state.answered_at) <= self.stale_after_s) & reporting
        kv_now = state.values["kv"]
        kv_mean = np.divide(
            state.kv_sum, state.kv_seconds, out=kv_now.copy(), where=state.kv_seconds > 0
        )
        gauges = ReplicaGauges(
            pool=state.pool,
            healthy=healthy,
            kv_usage=kv_now,
            kv_usage_mean=kv_mean,
            waiting=state.values["waiting"],
            running=state.values["running"],
            max_num_seqs=state.max_num_seqs,
            lifecycle=state.lifecycle,
            pool_desired=None if desired is None else np.asarray(desired, dtype=np.float64),
        )
        unknown = tuple(sorted(self._unknown))
        arrivals, preemptions = self._interval_rates(now, gauges)
        signals = self.tracker.update(gauges, arrivals, preemptions)
        snapshot = self.budgets()
        vector = self.contract.build(*self._shown_budgets(snapshot), signals, knob_units)
        state.kv_sum[:] = 0.0
        state.kv_seconds[:] = 0.0
        return Observation(
            time=now,
            vector=vector,
            snapshot=snapshot,
            signals=signals,
            healthy_replicas=int(healthy.sum()),
            replicas=int(reporting.sum()),
            arrivals=arrivals,
            preemptions=preemptions,
            replica_counts=state.counts(self.contract),
            unknown_signals=unknown,
        )

    def _shown_budgets(self, snapshot: BudgetSnapshot) -> tuple[np.ndarray, ...]:
        """Burn rates (contract windows), budgets and alert levels the policy sees (see the
        module docstring): SLOs without data keep what they last showed with data."""
        burn = snapshot.burn_rates[:, self._window_index]
        budget = 1.0 - snapshot.period_coverage * (1.0 - snapshot.budget_remaining)
        alerts = np.where(
            snapshot.page,
            ALERT_LEVELS["page"],
            np.where(snapshot.ticket, ALERT_LEVELS["ticket"], 0),
        )
        seen = ~snapshot.no_data
        for last, value in zip(self._last_shown, (burn, budget, alerts), strict=True):
            last[seen] = value[seen]
        return tuple(last.copy() for last in self._last_shown)

    def budgets(self) -> BudgetSnapshot:
        """The budgets as of the last ingested data (computed when data arrives, so that a
        decision only reads them)."""
        if self._snapshot is None or self._snapshot.time != self.engine.now:
            self._snapshot = self.engine.snapshot()  # a restored engine moved the clock
        return self._snapshot

    def _interval_rates(self, now: float, gauges: ReplicaGauges) -> tuple[float, float]:
        """Arrivals and preemptions of the interval, scaled to the nominal interval (the
        tracker divides by it) when the real one differs."""
        counts, unknown = self._interval_counts, self._unknown
        queue = float(np.sum((gauges.waiting + gauges.running)[gauges.healthy]))
        if self.signal_names["arrivals"] is not None:
            arrivals = counts["arrivals"]
        else:
            previous = self._queue_at_last_observation
            change = 0.0 if previous is None else queue - previous
            arrivals = max(0.0, counts["finished"] + change)
        preemptions = counts["preemptions"]
        elapsed = None if self._last_observed is None else now - self._last_observed
        scale = self.interval_s / elapsed if elapsed and elapsed > 0 else 1.0
        if elapsed is None:
            arrivals = preemptions = 0.0  # nothing to compare the first scrape with
        self._last_observed = now
        self._queue_at_last_observation = queue
        self._interval_counts = dict.fromkeys(_COUNTERS, 0.0)
        self._unknown = set()
        rates = {"arrivals": arrivals * scale, "preemptions": preemptions * scale}
        arrivals_from = "arrivals" if self.signal_names["arrivals"] is not None else "finished"
        if arrivals_from in unknown:  # unknown is not zero: the last known value stands
            rates["arrivals"] = self._last_rates["arrivals"]
        self._last_rates = rates
        return rates["arrivals"], rates["preemptions"]


def _feed_problems(report: ScrapeReport) -> list[Problem]:
    problems = []
    for attribute, kind in _FEED_PROBLEMS.items():
        for item in getattr(report, attribute):
            endpoint, sep, detail = item.partition("/")
            if attribute == "missing_endpoints":
                endpoint, detail = item, "endpoint missing from the scrape"
            elif not sep or attribute in ("inexact", "unparsable", "no_data", "out_of_order"):
                endpoint, detail = "feed", item
            problems.append(Problem(endpoint, kind, detail))
    return problems


def _fleet_independent_problems(
    contract: ObservationContract, engines: Sequence[Engine], capacity: Mapping[str, float]
) -> list[str]:
    """What a v3 contract needs beyond v2's: the capacity of every role the fleet has."""
    problems = []
    roles = sorted({engine_role(e) for e in engines} & set(ROLES), key=ROLES.index)
    missing = [r for r in ("strong", *roles) if r not in capacity]
    if missing:
        problems.append(
            f"fleet_capacity: the policy observes load and queues relative to each role's "
            f"capacity; give requests/s for {sorted(set(missing), key=ROLES.index)} "
            "(config fleet_capacity: or --fleet-capacity strong=RPS,cheap=RPS; budgetpilot "
            "simulate --fleet F --capacity measures a fleet file's)"
        )
    return problems


def check_feedable(
    contract: ObservationContract,
    feed: MetricsFeed,
    signal_names: Mapping[str, str | None],
    engines: Sequence[EngineEndpoint],
    counter_endpoints: Sequence[str],
    fleet_capacity: Mapping[str, float] | None = None,
) -> None:
    """Refuse metrics that cannot feed the contract: every problem, one per line.

    Raises
    ------
    FeedabilityError
        Another contract version, SLOs or windows of the contract the spec's engine does not
        compute, engines in pools the contract does not know or contract pools without engines,
        SLOs needing budgetpilot counters without a counter endpoint, fleet signals without a
        metric.
    """
    engine = feed.engine
    problems = []
    if contract.version not in (OBSERVATION_VERSION, OBSERVATION_VERSION_V3):
        problems.append(
            f"the policy observes {contract.version!r}, this sidecar builds "
            f"{OBSERVATION_VERSION!r} and {OBSERVATION_VERSION_V3!r}"
        )
    if contract.by_role:
        problems += _fleet_independent_problems(contract, engines, fleet_capacity or {})
    if tuple(contract.slo_names) != tuple(engine.slo_names):
        problems.append(
            f"the contract observes SLOs {list(contract.slo_names)}, the policy's spec defines "
            f"{list(engine.slo_names)}"
        )
    missing_windows = [w for w in contract.windows if w not in engine.windows]
    if missing_windows:
        problems.append(f"windows {missing_windows} are not burn-rate windows of the spec")
    if contract.spec_digest and contract.spec_digest != engine.spec_fingerprint():
        problems.append("the contract was built for another SLO spec than the manifest's")
    for i, endpoint in enumerate(engines):
        if contract_pool(contract, endpoint) not in contract.pools:
            problems.append(
                f"engines[{i}] ({endpoint.name}): pool {endpoint.pool!r} is not a pool of the "
                f"policy's contract {list(contract.pools)}"
                + (" (give its tier: 0 strong, more cheap)" if contract.by_role else "")
            )
    # A v3 contract masks a role the fleet lacks; the strong one it needs.
    required = contract.pools[:1] if contract.by_role else contract.pools
    for pool in required:
        if not any(contract_pool(contract, e) == pool for e in engines):
            problems.append(f"pool {pool!r} of the policy's contract has no engine in engines")
    needing = [
        f"{slo.name} ({engine_gap(slo, feed.mapping)})"
        for slo, source in zip(engine.slos, feed.sources, strict=True)
        if not source.exact_from_engine
    ]
    if needing and not counter_endpoints:
        problems.append(
            f"SLOs need budgetpilot counters ({feed.mapping.sli_events}): "
            f"{'; '.join(needing)}: configure counters (the router's or the twin's metrics URL)"
        )
    mapping = feed.mapping
    gauges = {"kv_cache_usage": "KV-cache usage", "waiting": "waiting", "running": "running"}
    for field_name, what in gauges.items():
        if getattr(mapping, field_name) is None:
            problems.append(
                f"mapping.{field_name}: mapping {mapping.name!r} names no {what} gauge (the "
                "contract observes it)"
            )
    if not signal_names.get("finished") and not signal_names.get("arrivals"):
        problems.append(
            f"mapping {mapping.name!r} names no finished-requests counter (mapping.finished) "
            "and no arrivals counter is set (signals.arrivals): the load feature needs one"
        )
    if problems:
        raise FeedabilityError("the metrics cannot feed the policy:\n  " + "\n  ".join(problems))
