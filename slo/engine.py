"""The multi-dimensional error-budget engine.

One engine computes burn rates, remaining budgets, multi-window alert states and budget-policy
states for every SLO of a spec, from either feed: batches of request events
(:meth:`BudgetEngine.ingest_events`) or good/total counts derived from engine metrics
(:meth:`BudgetEngine.ingest_counts`, used by :class:`slo.metrics.MetricsFeed`).

Counts live in two :class:`~slo.ring.CumulativeRing` buffers: a fine one (``resolution``, 30 s by
default) long enough for the longest burn-rate window, and a coarse one (``period_resolution``,
1 h) long enough for the SLO period. Window sums are two reads, so a full query is a handful of
vectorised numpy operations.

Budget remaining follows Sloth's ``period_error_budget_remaining``: ``1 - error_ratio(period) /
(1 - objective)``, where the period is also cut at the start of the current budget phase
(:meth:`BudgetEngine.start_phase`) and may include a prior set by
:meth:`BudgetEngine.set_budget_spent`.

Coverage: what part of each window and period holds data. The event feed sees every request, so
its time is all covered; the metrics feed says per scrape which SLOs it measured
(``ingest_counts(..., measured=)``), and the time since the previous scrape is a gap for an SLO
measured before but not then. An SLO's data starts at its first measurement (an SLO never
measured has none); the time before it is covered only when the engine's history is
(``history_covered``, the default: a simulated world, whose series appear with their first
events, starts with its engine); for the period, a prior of
:meth:`BudgetEngine.set_budget_spent` covers the share of it that the prior models. An
alert condition fires only when both of its windows are covered to ``min_coverage``; a window
without any coverage is *no data*, and a period below ``min_coverage`` is *warming up* (see
:class:`BudgetSnapshot`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from slo.durations import format_duration
from slo.events import REQUEST_EVENT_DTYPE
from slo.ring import CumulativeRing, bucket_of
from slo.sli import EventBatch, SLIClassifier
from slo.spec import ServiceSpec, SpecError, load_spec

#: Events are classified in chunks of this size so that their columns stay in cache.
CHUNK_EVENTS = 16384
STATE_FORMAT = 1


class AlertLevel(IntEnum):
    """The most severe multi-window burn-rate alert firing for an SLO."""

    NONE = 0
    TICKET = 1
    PAGE = 2


class PolicyState(IntEnum):
    """Budget-policy state of an SLO from its remaining budget."""

    OK = 0
    AT_RISK = 1
    EXHAUSTED = 2


_POLICY_STATES = tuple(PolicyState)  # indexed by value
_OK, _AT_RISK, _EXHAUSTED = (int(state) for state in PolicyState)


@dataclass(frozen=True)
class PhaseRecord:
    """A finished budget phase: budget spent and counts per SLO (in :attr:`slo_names` order)."""

    name: str
    start: float
    end: float
    budget_spent: tuple[float, ...]
    good: tuple[float, ...]
    total: tuple[float, ...]


@dataclass(frozen=True)
class BudgetSnapshot:
    """Everything a policy observes about the budgets at one instant.

    Arrays are indexed ``[slo]`` or ``[slo, window]`` in the order of :attr:`slo_names` and
    :attr:`windows` (window names are the 30-day reference names; :attr:`window_seconds` gives
    each SLO's windows scaled to its period).
    """

    time: float
    phase: str
    slo_names: tuple[str, ...]
    dimensions: tuple[str, ...]
    windows: tuple[str, ...]
    window_seconds: np.ndarray
    objectives: np.ndarray
    burn_rates: np.ndarray
    budget_remaining: np.ndarray
    page: np.ndarray
    ticket: np.ndarray
    alert_levels: np.ndarray
    policy_states: np.ndarray
    dimension_states: dict[str, PolicyState]
    window_coverage: np.ndarray | None = None
    period_coverage: np.ndarray | None = None
    min_coverage: float = 0.0

    @property
    def no_data(self) -> np.ndarray:
        """Per SLO, whether its shortest window holds no data at all (its figures are not
        measurements: burn rates read 0 and the budget 1 without counts)."""
        if self.window_coverage is None:
            return np.zeros(len(self.slo_names), dtype=bool)
        return self.window_coverage[:, 0] <= 0.0

    @property
    def warming_up(self) -> np.ndarray:
        """Per SLO, whether less than ``min_coverage`` of its period holds data, so that its
        budget remaining is not yet the period's."""
        if self.period_coverage is None:
            return np.zeros(len(self.slo_names), dtype=bool)
        return self.period_coverage < self.min_coverage

    def budget_states(self) -> list[str]:
        """Per SLO, ``no_data``, ``warming_up`` or the policy state's name (``ok``...)."""
        return [
            "no_data" if none else "warming_up" if warm else PolicyState(state).name.lower()
            for none, warm, state in zip(
                self.no_data, self.warming_up, self.policy_states, strict=True
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (arrays as lists, enums as names)."""
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}
        out["budget_states"] = self.budget_states()
        out["alert_levels"] = [AlertLevel(v).name.lower() for v in self.alert_levels]
        out["policy_states"] = [PolicyState(v).name.lower() for v in self.policy_states]
        out["dimension_states"] = {k: v.name.lower() for k, v in self.dimension_states.items()}
        return out


class _FairnessState:
    """The open time slice of a fairness SLO: per-tenant good/total counts of its base SLI."""

    def __init__(self, slo_index: int, classifier: SLIClassifier, start_time: float) -> None:
        self.slo_index = slo_index
        self.classifier = classifier
        self.sli = classifier.fairness
        self.slice_s = self.sli.slice
        self.open = int(np.floor(start_time / self.slice_s + 1e-9))  # first slice not over at start
        self.acc = np.zeros((self.sli.max_tenants, 2))

    def slice_of(self, t: float | np.ndarray) -> int | np.ndarray:
        return bucket_of(t, self.slice_s)

    def verdict(self) -> bool | None:
        """Whether the open slice was fair (None when too few tenants had enough requests)."""
        good, total = self.acc[:, 0], self.acc[:, 1]
        qualified = total >= self.sli.min_requests
        if np.count_nonzero(qualified) < 2:
            return None
        attainment = good[qualified] / total[qualified]
        if self.sli.method == "gap":
            return bool(attainment.max() - attainment.min() <= self.sli.max_gap)
        square_sum = float(np.sum(attainment**2))
        if square_sum == 0.0:
            return True  # every tenant at zero attainment: equal, the base SLO shows the harm
        jain = float(np.sum(attainment)) ** 2 / (len(attainment) * square_sum)
        return bool(jain >= self.sli.min_jain)


class BudgetEngine:
    """Error budgets of all ``llm`` SLOs of a spec, fed by request events or metric counts.

    Parameters
    ----------
    spec:
        A :class:`~slo.spec.ServiceSpec` or a path to a spec file.
    start_time:
        The engine clock at creation (seconds, the events' time base).
    phase:
        Name of the initial budget phase.
    history_covered:
        Whether the time before ``start_time`` counts as covered by data (True: the world
        started with the engine, as a simulation does; False: nothing before the first
        measurement is known, as for a sidecar started without saved state).
    min_coverage:
        Share of a window that must hold data for an alert condition on it to fire, and of the
        period for its budget to be more than warming up.
    """

    def __init__(
        self,
        spec: ServiceSpec | str | Path,
        start_time: float = 0.0,
        phase: str = "initial",
        *,
        history_covered: bool = True,
        min_coverage: float = 0.9,
    ) -> None:
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage must lie in [0, 1], got {min_coverage}")
        self.spec = load_spec(spec)
        slos = self.spec.engine_slos
        if not slos:
            raise SpecError("the spec has no SLO with an 'llm' SLI for the engine to compute")
        settings = self.spec.budgetpilot
        self.slos = slos
        self.slo_names = tuple(s.name for s in slos)
        self.dimensions = tuple(s.dimension_name for s in slos)
        self.windows = tuple(format_duration(w) for w in settings.windows)
        self.resolution = settings.resolution
        self.period_resolution = settings.period_resolution
        self.objectives = np.array([s.objective for s in slos])
        self.periods = np.array([self.spec.period_of(s) for s in slos])
        self._inv_budget = 1.0 / (1.0 - self.objectives)
        self._policy = settings.policy
        n = len(slos)

        # Burn-rate windows, scaled to each SLO's period, in whole fine buckets.
        self.window_seconds = np.array([self.spec.windows_for(s) for s in slos])
        self._window_buckets = np.rint(self.window_seconds / self.resolution).astype(np.int64)
        series_buckets = np.repeat(self._window_buckets, 2, axis=0)
        self._series_cols = np.broadcast_to(np.arange(2 * n)[:, None], series_buckets.shape).copy()
        self._series_window_buckets = series_buckets
        self._period_buckets = np.repeat(
            np.ceil(self.periods / self.period_resolution - 1e-9).astype(np.int64), 2
        )
        self._fine_per_coarse = round(self.period_resolution / self.resolution)
        self._series_index = np.arange(2 * n)

        first = bucket_of(start_time, self.resolution)
        self._fine = CumulativeRing(2 * n, int(self._window_buckets.max()) + 1, first)
        self._coarse = CumulativeRing(
            2 * n, int(self._period_buckets.max()) + 1, first // self._fine_per_coarse
        )
        self.now = float(start_time)
        self.min_coverage = float(min_coverage)
        # Seconds without data per SLO, in rings like the counts (windows and period), and
        # where each SLO's data starts (NaN: never measured yet).
        self._fine_gap = CumulativeRing(n, self._fine.n_buckets, first)
        self._coarse_gap = CumulativeRing(n, self._coarse.n_buckets, first // self._fine_per_coarse)
        self._covered_from = np.full(n, np.nan)
        self._history_covered = bool(history_covered)
        self._phase_start_gap = np.zeros(n)

        self._classifiers = [SLIClassifier(s, self.spec) for s in slos]
        self._request = [i for i, c in enumerate(self._classifiers) if c.fairness is None]
        self._fused = None  # built on the first ingest_events (see slo.fused)
        self._fairness = [
            _FairnessState(i, c, start_time)
            for i, c in enumerate(self._classifiers)
            if c.fairness is not None
        ]
        # Page and ticket conditions side by side, so one comparison pass judges both.
        page, ticket = (
            self._conditions(getattr(settings.alert_windows, severity), severity)
            for severity in ("page", "ticket")
        )
        self._alert_long, self._alert_short, self._alert_rate = (
            np.concatenate([p, t]) for p, t in zip(page[:3], ticket[:3], strict=True)
        )
        self._n_page_conditions = len(page[2])
        self._page_enabled, self._ticket_enabled = page[3], ticket[3]

        self.phase = phase
        self.phase_start = self.now
        self._phase_start_cum = np.zeros(2 * n)
        self._prior = np.zeros((3, n))  # bad, total, start time
        self.phase_history: list[PhaseRecord] = []

    # ----------------------------------------------------------------------------------------
    # Feeding
    # ----------------------------------------------------------------------------------------

    def ingest_events(self, events: np.ndarray) -> None:
        """Count a batch of request events (:data:`~slo.events.REQUEST_EVENT_DTYPE`).

        Each event counts at its ``t_end``; the clock moves to the latest ``t_end``. Events may
        come in any order within a batch; events older than the open fairness slice count in it.

        Raises
        ------
        TypeError
            If the array lacks fields of the request-event contract.
        ValueError
            If some ``t_end`` is NaN or infinite.
        """
        missing = set(REQUEST_EVENT_DTYPE.names) - set(events.dtype.names or ())
        if missing:
            raise TypeError(f"request events lack the fields {sorted(missing)}")
        for start in range(0, len(events), CHUNK_EVENTS):
            self._ingest_chunk(events[start : start + CHUNK_EVENTS])

    def ingest_counts(
        self,
        t: float,
        good: np.ndarray,
        total: np.ndarray,
        tenant_good: Sequence[np.ndarray] = (),
        tenant_total: Sequence[np.ndarray] = (),
        measured: np.ndarray | None = None,
    ) -> None:
        """Count good/total events that happened by time ``t`` (the metrics feed's input).

        Parameters
        ----------
        t:
            The time the counts were observed (a scrape time); they count in its bucket.
        good, total:
            Per SLO, in :attr:`slo_names` order (entries of fairness SLOs are ignored).
        tenant_good, tenant_total:
            Per fairness SLO (in spec order), per tenant counts of its base SLI.
        measured:
            Per SLO, whether the counts measure it; the time since the previous call is a gap
            of an SLO not measured (``None``: every SLO is measured). An SLO's coverage starts
            at its first measurement unless the engine's history is covered.

        Raises
        ------
        ValueError
            If the tenant counts are not one per fairness SLO (nothing is counted then).
        """
        if not len(tenant_good) == len(tenant_total) == len(self._fairness):
            raise ValueError(
                f"expected tenant counts for {len(self._fairness)} fairness SLOs, got "
                f"{len(tenant_good)} good and {len(tenant_total)} total"
            )
        t, since = max(float(t), self.now), self.now
        self._advance_rings(t)
        everything = np.ones(len(self.slos), dtype=bool)
        self._record_coverage(since, t, everything if measured is None else measured)
        counts = np.zeros((1, 2 * len(self.slos)))
        counts[0, 0::2] = good
        counts[0, 1::2] = total
        for state in self._fairness:
            counts[0, 2 * state.slo_index : 2 * state.slo_index + 2] = 0.0
        self._add_counts(bucket_of(t, self.resolution), counts)
        for state, tg, tt in zip(self._fairness, tenant_good, tenant_total, strict=True):
            slice_counts = np.stack([np.asarray(tg, float), np.asarray(tt, float)], axis=-1)
            self._add_slices(state, np.array([state.slice_of(t)]), slice_counts[None], t)
        self.advance_to(t)

    def advance_to(self, t: float) -> None:
        """Move the clock to ``t`` (earlier times are ignored): windows slide, slices close."""
        if not math.isfinite(t):
            raise ValueError(f"cannot advance the engine clock to {t}")
        if t < self.now:
            return
        self._advance_rings(t)
        self.now = float(t)
        for state in self._fairness:
            self._close_slices(state, t)

    def _ingest_chunk(self, events: np.ndarray) -> None:
        if len(events) == 0:
            return
        batch = EventBatch(events)
        t_end = batch.column("t_end")
        t_first, t_last = float(t_end.min()), float(t_end.max())
        if not (math.isfinite(t_first) and math.isfinite(t_last)):
            rows = np.flatnonzero(~np.isfinite(t_end))[:5].tolist()
            raise ValueError(f"request events with non-finite t_end (first rows {rows})")
        t_max, since = max(t_last, self.now), self.now
        self._advance_rings(t_max)
        self._record_coverage(since, t_max, np.ones(len(self.slos), dtype=bool))  # sees all
        first = bucket_of(t_first, self.resolution)
        self._add_counts(first, self._bucket_counts(batch, t_end, first, t_last))
        for state in self._fairness:
            self._ingest_fairness(state, batch, t_end, t_last, t_max)
        self.advance_to(t_max)

    def _bucket_counts(
        self, batch: EventBatch, t_end: np.ndarray, first: int, t_last: float
    ) -> np.ndarray:
        """Good/total counts of the request SLOs per fine bucket from ``first`` on: shape
        ``(n_buckets, 2 * n_slo)``; all counts are whole numbers, so float sums are exact."""
        if self._fused is None:
            from slo.fused import FusedClassifier  # numba: only on the event path

            request = [self._classifiers[i] for i in self._request]
            self._fused = FusedClassifier(request, self.spec, self._request)
        n_buckets = bucket_of(t_last, self.resolution) - first + 1
        if n_buckets == 1:  # the usual environment step
            bucket = np.zeros(len(batch), dtype=np.int64)
        else:
            bucket = bucket_of(t_end, self.resolution) - first
        return self._fused.counts(batch, bucket, n_buckets, 2 * len(self.slos))

    def _ingest_fairness(
        self, state: _FairnessState, batch: EventBatch, t_end: np.ndarray, t_last: float, t: float
    ) -> None:
        """Add a batch's per-tenant counts to a fairness SLO's slices (late events count in
        the open slice)."""
        good, counted, tenant = state.classifier.classify_by_tenant(batch)
        lo = state.open
        n_slices = max(int(state.slice_of(t_last)), lo) - lo + 1
        tenants = state.sli.max_tenants
        key = tenant
        if n_slices > 1:
            key = (np.maximum(state.slice_of(t_end), lo) - lo) * tenants + tenant
        size = n_slices * tenants
        per_slice = np.empty((size, 2))
        per_slice[:, 0] = np.bincount(key, weights=good, minlength=size)
        per_slice[:, 1] = np.bincount(key, weights=counted, minlength=size)
        per_slice = per_slice.reshape(n_slices, tenants, 2)
        self._add_slices(state, range(lo, lo + n_slices), per_slice, t)

    def _advance_rings(self, t: float) -> None:
        bucket = bucket_of(t, self.resolution)
        for fine, coarse in ((self._fine, self._coarse), (self._fine_gap, self._coarse_gap)):
            fine.advance(bucket)
            coarse.advance(bucket // self._fine_per_coarse)

    def _record_coverage(self, since: float, t: float, measured: np.ndarray) -> None:
        """Start each SLO's data at its first measurement and mark ``(since, t]`` as a gap for
        SLOs measured before but not now, spread over the buckets it spans (``t`` is the rings'
        head)."""
        measured = np.asarray(measured, dtype=bool)
        self._covered_from[measured & np.isnan(self._covered_from)] = t
        missed = np.flatnonzero(~measured & ~np.isnan(self._covered_from))
        # Older time would only be merged into the rings' oldest bucket.
        oldest = (self._coarse_gap.head - self._coarse_gap.n_buckets + 1) * self.period_resolution
        since = max(since, oldest)
        if not missed.size or since >= t:
            return
        r = self.resolution
        first = bucket_of(since, r)
        start = np.arange(first, bucket_of(t, r) + 1, dtype=float) * r
        seconds = np.clip(np.minimum(start + r, t) - np.maximum(start, since), 0.0, None)
        gaps = np.zeros((len(seconds), len(self.slos)))
        gaps[:, missed] = seconds[:, None]
        self._add_counts(first, gaps, self._fine_gap, self._coarse_gap)

    def _add_counts(
        self,
        first_bucket: int,
        counts: np.ndarray,
        fine: CumulativeRing | None = None,
        coarse: CumulativeRing | None = None,
    ) -> None:
        """Add per-bucket counts to a fine ring and its coarse one (default: the counts'; the
        coarse one gets them grouped)."""
        fine = self._fine if fine is None else fine
        coarse = self._coarse if coarse is None else coarse
        fine.add(first_bucket, counts)
        per = self._fine_per_coarse
        first = first_bucket // per
        n_coarse = (first_bucket + len(counts) - 1) // per - first + 1
        starts = np.arange(first, first + n_coarse) * per - first_bucket
        starts[0] = 0  # the first coarse bucket may start before the counts
        coarse.add(first, np.add.reduceat(counts, starts, axis=0))

    def _add_slices(
        self, state: _FairnessState, slices: np.ndarray, counts: np.ndarray, t: float
    ) -> None:
        """Add per-slice tenant counts, closing the slices they pass; slices before the open
        one count in it (late events)."""
        for index, slice_counts in zip(slices, counts, strict=True):
            if index > state.open:
                self._close_slices(state, index * state.slice_s)
            state.acc += slice_counts
        self._close_slices(state, t)

    def _close_slices(self, state: _FairnessState, t: float) -> None:
        """Judge the open slice if it ended by ``t`` and open the slice holding ``t``."""
        end = (state.open + 1) * state.slice_s
        if end > t:
            return
        fair = state.verdict()
        if fair is not None:
            counts = np.zeros((1, 2 * len(self.slos)))
            counts[0, 2 * state.slo_index] = float(fair)
            counts[0, 2 * state.slo_index + 1] = 1.0
            self._add_counts(bucket_of(end, self.resolution), counts)
        state.acc[...] = 0.0
        state.open = int(np.floor(t / state.slice_s + 1e-9))

    # ----------------------------------------------------------------------------------------
    # Queries
    # ----------------------------------------------------------------------------------------

    def cumulative_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(good, total)`` per SLO counted since the engine started (copies): the difference
        of two calls is what happened in between, e.g. during one environment step."""
        latest = self._fine.latest
        return latest[0::2].copy(), latest[1::2].copy()

    def window_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(good, total)`` per SLO and window, each of shape ``(n_slo, n_windows)``."""
        ring = self._fine
        slots = (ring.head - self._series_window_buckets) % ring.n_buckets
        sums = ring.latest[:, None] - ring.cum[slots, self._series_cols]
        return sums[0::2], sums[1::2]

    def error_ratios(self) -> np.ndarray:
        """Error ratio (bad / total, 0 without events) per SLO and window."""
        good, total = self.window_counts()
        bad = total - good
        return np.divide(bad, total, out=np.zeros_like(bad), where=total > 0)

    def burn_rates(self) -> np.ndarray:
        """Burn rate (error ratio / (1 - objective)) per SLO and window, ``(n_slo, n_windows)``."""
        return self.error_ratios() * self._inv_budget[:, None]

    def period_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(good, total)`` per SLO over its period, cut at the phase start, prior included."""
        ring = self._coarse
        slots = (ring.head - self._period_buckets) % ring.n_buckets
        start = ring.cum[slots, self._series_index]
        counts = self._fine.latest - np.maximum(start, self._phase_start_cum)
        prior_bad, prior_total, prior_t0 = self._prior
        weight = np.clip(1.0 - (self.now - prior_t0) / self.periods, 0.0, 1.0)
        total = counts[1::2] + weight * prior_total
        good = counts[0::2] + weight * (prior_total - prior_bad)
        return good, total

    def budget_remaining(self) -> np.ndarray:
        """Fraction of each SLO's period budget left (1: untouched, <= 0: exhausted)."""
        good, total = self.period_counts()
        bad = total - good
        ratio = np.divide(bad, total, out=np.zeros_like(bad), where=total > 0)
        return 1.0 - ratio * self._inv_budget

    def window_coverage(self) -> np.ndarray:
        """Share of each SLO's burn-rate windows that holds data, ``(n_slo, n_windows)`` in
        [0, 1] (see the module docstring)."""
        ring = self._fine_gap
        slots = (ring.head - self._window_buckets) % ring.n_buckets
        columns = self._series_cols[0::2] // 2
        gaps = ring.latest[columns] - ring.cum[slots, columns]
        seconds = self._window_buckets * self.resolution
        before = self._covered_from[:, None] - (self.now - seconds)
        return self._coverage(gaps, before, seconds)

    def period_coverage(self) -> np.ndarray:
        """Share of each SLO's period (cut at the phase start) that holds data, a prior of
        :meth:`set_budget_spent` counting for the history it models."""
        ring = self._coarse_gap
        slots = (ring.head - self._period_buckets[0::2]) % ring.n_buckets
        start = ring.cum[slots, np.arange(len(self.slos))]
        gaps = self._fine_gap.latest - np.maximum(start, self._phase_start_gap)
        period_start = np.maximum(self.now - self.periods, self.phase_start)
        covered = self._coverage(gaps, self._covered_from - period_start, self.periods)
        _, prior_total, prior_t0 = self._prior
        weight = np.clip(1.0 - (self.now - prior_t0) / self.periods, 0.0, 1.0)
        return np.minimum(1.0, covered + np.where(prior_total > 0, weight, 0.0))

    def _coverage(self, gaps: np.ndarray, before: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """``1 - (gaps + time before the data starts) / seconds``, in [0, 1]; ``before`` is
        NaN for an SLO never measured (no data at all). Time before an SLO's data starts is
        covered when the engine's history is."""
        history = 0.0 if self._history_covered else np.clip(before, 0.0, None)
        missing = gaps + np.where(np.isnan(before), np.inf, history)
        return np.clip(1.0 - missing / seconds, 0.0, 1.0)

    def alerts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(page, ticket)`` booleans per SLO: some condition has both windows burning faster
        than its burn rate and covered to ``min_coverage`` (and the alert is not disabled in
        the spec)."""
        return self._alerts(self.burn_rates(), self.window_coverage())

    def alert_states(self) -> np.ndarray:
        """The most severe firing alert per SLO, as :class:`AlertLevel` values (int8)."""
        return _alert_levels(*self.alerts())

    def policy_states(self) -> np.ndarray:
        """Budget-policy state per SLO, as :class:`PolicyState` values (int8)."""
        return self._policy_of(self.budget_remaining())

    def dimension_states(self) -> dict[str, PolicyState]:
        """The worst policy state among the SLOs of each budget dimension."""
        return self._worst_by_dimension(self.policy_states())

    def _policy_of(self, remaining: np.ndarray) -> np.ndarray:
        at_risk = np.where(remaining < self._policy.at_risk_below, _AT_RISK, _OK)
        return np.where(remaining <= self._policy.exhausted_at, _EXHAUSTED, at_risk).astype(np.int8)

    def _worst_by_dimension(self, states: np.ndarray) -> dict[str, PolicyState]:
        worst = dict.fromkeys(self.dimensions, _OK)
        for dimension, state in zip(self.dimensions, states.tolist(), strict=True):
            worst[dimension] = max(worst[dimension], state)
        return {dimension: _POLICY_STATES[state] for dimension, state in worst.items()}

    def snapshot(self) -> BudgetSnapshot:
        """All budget figures at the current time."""
        burn = self.burn_rates()
        coverage = self.window_coverage()
        page, ticket = self._alerts(burn, coverage)
        remaining = self.budget_remaining()
        policy = self._policy_of(remaining)
        return self.snapshot_of(
            burn, coverage, remaining, self.period_coverage(), page, ticket, policy
        )

    def snapshot_of(
        self,
        burn: np.ndarray,
        window_coverage: np.ndarray,
        remaining: np.ndarray,
        period_coverage: np.ndarray,
        page: np.ndarray,
        ticket: np.ndarray,
        policy: np.ndarray,
    ) -> BudgetSnapshot:
        """The snapshot at the current time holding figures already computed (by
        :meth:`snapshot`, or by a compiled path that computes the same ones)."""
        return BudgetSnapshot(
            time=self.now,
            phase=self.phase,
            slo_names=self.slo_names,
            dimensions=self.dimensions,
            windows=self.windows,
            window_seconds=self.window_seconds.copy(),
            objectives=self.objectives.copy(),
            burn_rates=burn,
            budget_remaining=remaining,
            page=page,
            ticket=ticket,
            alert_levels=_alert_levels(page, ticket),
            policy_states=policy,
            dimension_states=self._worst_by_dimension(policy),
            window_coverage=window_coverage,
            period_coverage=period_coverage,
            min_coverage=self.min_coverage,
        )

    def _conditions(self, windows: Sequence[Any], severity: str) -> tuple[np.ndarray, ...]:
        names = {round(w): i for i, w in enumerate(self.spec.budgetpilot.windows)}
        long = np.array([names[round(c.long)] for c in windows], dtype=np.intp)
        short = np.array([names[round(c.short)] for c in windows], dtype=np.intp)
        rate = np.array([c.burn_rate for c in windows])
        enabled = np.array(
            [
                s.alerting is None or not getattr(s.alerting, f"{severity}_alert").disable
                for s in self.slos
            ]
        )
        return long, short, rate, enabled

    def _alerts(self, burn: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rate, long, short = self._alert_rate, self._alert_long, self._alert_short
        enough = coverage >= self.min_coverage
        both = (burn[:, long] > rate) & (burn[:, short] > rate) & enough[:, long] & enough[:, short]
        split = self._n_page_conditions
        page = both[:, :split].any(axis=1) & self._page_enabled
        return page, both[:, split:].any(axis=1) & self._ticket_enabled

    # ----------------------------------------------------------------------------------------
    # Budget phases and priors
    # ----------------------------------------------------------------------------------------

    def start_phase(self, name: str, t: float | None = None) -> PhaseRecord:
        """End the current budget phase at ``t`` (default: now) and start phase ``name``.

        The new phase has its own budget: the period of every SLO is cut at its start and any
        prior from :meth:`set_budget_spent` is dropped. Burn-rate windows are not cut (a burn
        rate describes the service, not the budget). Returns the record of the ended phase.
        """
        if t is not None:
            self.advance_to(t)
        phase_good = self._fine.latest[0::2] - self._phase_start_cum[0::2]
        phase_total = self._fine.latest[1::2] - self._phase_start_cum[1::2]
        record = PhaseRecord(
            name=self.phase,
            start=self.phase_start,
            end=self.now,
            budget_spent=tuple(float(x) for x in 1.0 - self.budget_remaining()),
            good=tuple(float(x) for x in phase_good),
            total=tuple(float(x) for x in phase_total),
        )
        self.phase_history.append(record)
        self.phase = name
        self.phase_start = self.now
        self._phase_start_cum = self._fine.latest.copy()
        self._phase_start_gap = self._fine_gap.latest.copy()
        self._prior[...] = 0.0
        return record

    def set_budget_spent(
        self,
        fraction: float | Sequence[float] | Mapping[str, float],
        *,
        assumed_total_events: float | Sequence[float],
    ) -> None:
        """Start with part of each budget already spent (e.g. at the start of an RL episode).

        The spent budget is modelled as ``assumed_total_events`` events, spread evenly over the
        period before now, of which ``fraction * (1 - objective)`` were bad. It therefore ages
        out linearly over one period, and new events weigh against it in proportion to their
        number: with ``assumed_total_events`` set to a period's real traffic, one hour at burn
        rate 14.4 of a 30-day SLO spends 2 % of the budget, as in production.
        For fairness SLOs the assumed total is the number of slices in a period.

        Parameters
        ----------
        fraction:
            Budget already spent: one value, one per SLO, or a mapping SLO name -> value
            (SLOs not named keep their current prior). 0 = untouched, 1 = exhausted.
        assumed_total_events:
            How many events the period held before now (one value or one per SLO).
        """
        spent = self._per_slo(fraction, default=np.nan)
        totals = np.broadcast_to(np.asarray(assumed_total_events, dtype=float), spent.shape).copy()
        if np.any(spent[~np.isnan(spent)] < 0) or np.any(totals <= 0):
            raise ValueError("fractions must be >= 0 and assumed_total_events > 0")
        for state in self._fairness:
            totals[state.slo_index] = self.periods[state.slo_index] / state.slice_s
        keep = ~np.isnan(spent)
        self._prior[0, keep] = spent[keep] * (1.0 - self.objectives[keep]) * totals[keep]
        self._prior[1, keep] = totals[keep]
        self._prior[2, keep] = self.now

    def _per_slo(self, value: Any, default: float) -> np.ndarray:
        if isinstance(value, Mapping):
            unknown = set(value) - set(self.slo_names)
            if unknown:
                raise KeyError(f"unknown SLO names: {sorted(unknown)}")
            return np.array([float(value.get(n, default)) for n in self.slo_names])
        array = np.asarray(value, dtype=float)
        if array.ndim == 0:
            return np.full(len(self.slos), float(array))
        if array.shape != (len(self.slos),):
            raise ValueError(f"expected {len(self.slos)} values (one per SLO), got {array.shape}")
        return array.copy()

    # ----------------------------------------------------------------------------------------
    # State
    # ----------------------------------------------------------------------------------------

    def spec_fingerprint(self) -> str:
        """A hash of the spec: a saved state only loads into an engine with the same spec."""
        return hashlib.sha256(self.spec.model_dump_json().encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: arrays and JSON-compatible values (copies)."""
        return {
            "format": STATE_FORMAT,
            "spec_fingerprint": self.spec_fingerprint(),
            "now": self.now,
            "fine": self._fine.state_dict(),
            "coarse": self._coarse.state_dict(),
            "fairness": [{"open": s.open, "acc": s.acc.copy()} for s in self._fairness],
            "phase": self.phase,
            "phase_start": self.phase_start,
            "phase_start_cum": self._phase_start_cum.copy(),
            "prior": self._prior.copy(),
            "phase_history": [asdict(r) for r in self.phase_history],
            "fine_gap": self._fine_gap.state_dict(),
            "coarse_gap": self._coarse_gap.state_dict(),
            "covered_from": self._covered_from.copy(),
            "phase_start_gap": self._phase_start_gap.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; refuses states of another spec."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported engine state format {state.get('format')!r}")
        if state["spec_fingerprint"] != self.spec_fingerprint():
            raise ValueError("the saved engine state belongs to a different spec")
        self._fine.load_state_dict(state["fine"])
        self._coarse.load_state_dict(state["coarse"])
        for target, saved in zip(self._fairness, state["fairness"], strict=True):
            target.open = int(saved["open"])
            target.acc[...] = saved["acc"]
        self.now = float(state["now"])
        self.phase = str(state["phase"])
        self.phase_start = float(state["phase_start"])
        self._phase_start_cum[...] = state["phase_start_cum"]
        self._prior[...] = state["prior"]
        self.phase_history = [
            PhaseRecord(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
            for r in state["phase_history"]
        ]
        self._load_coverage(state)

    def _load_coverage(self, state: Mapping[str, Any]) -> None:
        """Restore the coverage; a state saved without it (an older version) has no data to
        show: each SLO's coverage starts again at its next measurement."""
        if "covered_from" in state:
            self._fine_gap.load_state_dict(state["fine_gap"])
            self._coarse_gap.load_state_dict(state["coarse_gap"])
            self._covered_from[...] = state["covered_from"]
            self._phase_start_gap[...] = state["phase_start_gap"]
            return
        for ring, counts in ((self._fine_gap, self._fine), (self._coarse_gap, self._coarse)):
            ring.cum[...] = 0.0
            ring.head = counts.head
        self._covered_from[...] = np.nan
        self._phase_start_gap[...] = 0.0

    def save(self, path: str | Path) -> None:
        """Write the state to ``path`` (an ``.npz`` file: arrays plus a JSON header)."""
        state = self.state_dict()
        arrays = _flatten_arrays(state)
        header = json.dumps(_strip_arrays(state))
        with open(path, "wb") as handle:
            np.savez_compressed(handle, __header__=np.array(header), **arrays)

    def load(self, path: str | Path) -> None:
        """Restore the state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            state = json.loads(str(data["__header__"]))
            for key in data.files:
                if key != "__header__":
                    _set_path(state, key.split("/"), data[key])
        self.load_state_dict(state)


def _alert_levels(page: np.ndarray, ticket: np.ndarray) -> np.ndarray:
    levels = ticket.astype(np.int8)  # TICKET is 1, NONE is 0
    levels[page] = AlertLevel.PAGE
    return levels


def _flatten_arrays(state: Any, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(state, np.ndarray):
        return {prefix.rstrip("/"): state}
    items = (
        state.items()
        if isinstance(state, dict)
        else enumerate(state)
        if isinstance(state, list)
        else ()
    )
    out: dict[str, np.ndarray] = {}
    for key, value in items:
        out.update(_flatten_arrays(value, f"{prefix}{key}/"))
    return out


def _strip_arrays(state: Any) -> Any:
    if isinstance(state, np.ndarray):
        return None
    if isinstance(state, dict):
        return {k: _strip_arrays(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_strip_arrays(v) for v in state]
    return state


def _set_path(state: Any, path: list[str], value: np.ndarray) -> None:
    for part in path[:-1]:
        state = state[int(part)] if isinstance(state, list) else state[part]
    last = path[-1]
    if isinstance(state, list):
        state[int(last)] = value
    else:
        state[last] = value
