"""The error-budget engine's per-step work in compiled calls, for the environment's step.

:meth:`slo.engine.BudgetEngine.ingest_events` and :meth:`~slo.engine.BudgetEngine.snapshot` are
a few dozen small numpy operations each (ring updates, window sums, coverage, period counts,
alerts, policy states); for the few hundred events and handful of SLOs of an environment step
their cost is the number of calls, not the data, and it is a large share of what the
environment adds to the simulator. :class:`CompiledIngest` and :class:`CompiledSnapshot` read and
write the same engine's rings with the same float64 operations in the same order, so the
engine's state and snapshot equal those of the engine fed by its own methods (tested to rtol
1e-9 on every SLI kind and scenario). The engine stays the one the sidecar uses; only the
environment, which imports numba anyway, takes this path.
"""

from __future__ import annotations

import numba
import numpy as np

from slo.engine import CHUNK_EVENTS, BudgetEngine, BudgetSnapshot
from slo.fused import FusedClassifier
from slo.ring import bucket_of
from slo.sli import EventBatch


def _rings(engine: BudgetEngine) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The engine's four rings (fine and coarse counts, fine and coarse gaps): their arrays and
    heads, in that order."""
    rings = (engine._fine, engine._coarse, engine._fine_gap, engine._coarse_gap)
    return tuple(r.cum for r in rings), np.array([r.head for r in rings], dtype=np.int64)


class CompiledIngest:
    """:meth:`BudgetEngine.ingest_events` of one engine, for batches within one fine bucket and
    one fairness slice (an environment step's); other batches take the engine's own path.

    Parameters
    ----------
    engine:
        The engine to feed.
    """

    def __init__(self, engine: BudgetEngine) -> None:
        self.engine = engine
        # A fairness SLO's per-tenant counts are the fused counts of its base SLI with the
        # tenant as the bucket (tenants outside the SLI's range go to a discarded last bucket).
        self._tenant_counts = [
            FusedClassifier([state.classifier], engine.spec, [0]) for state in engine._fairness
        ]

    def __call__(self, events: np.ndarray) -> None:
        """Count a batch of request events, as ``engine.ingest_events(events)`` does."""
        e = self.engine
        if len(events) == 0 or len(events) > CHUNK_EVENTS:
            e.ingest_events(events)
            return
        batch = EventBatch(events)
        t_end = batch.column("t_end")
        t_first, t_last = float(t_end.min()), float(t_end.max())
        bucket = bucket_of(t_last, e.resolution)
        one_slice = all(s.slice_of(t_last) <= s.open for s in e._fairness)
        if bucket_of(t_first, e.resolution) != bucket or not one_slice:
            e.ingest_events(events)  # checks non-finite times too
            return
        t_max = max(t_last, e.now)
        head = bucket_of(t_max, e.resolution)
        e._covered_from[np.isnan(e._covered_from)] = t_max  # the event feed measures every SLO
        counts = e._bucket_counts(batch, t_end, bucket, t_last)[0]
        _ingest_kernel(*_rings(e), head, e._fine_per_coarse, bucket, counts)
        for ring in (e._fine, e._fine_gap):
            ring.head = max(ring.head, head)
        for ring in (e._coarse, e._coarse_gap):
            ring.head = max(ring.head, head // e._fine_per_coarse)
        for state, fused in zip(e._fairness, self._tenant_counts, strict=True):
            tenant = batch.column("tenant")
            tenants = state.sli.max_tenants
            key = np.where((tenant >= 0) & (tenant < tenants), tenant, tenants)
            state.acc += fused.counts(batch, key, tenants + 1, 2)[:tenants]
            e._close_slices(state, t_max)
        e.advance_to(t_max)


class CompiledSnapshot:
    """:meth:`BudgetEngine.snapshot` of one engine, computed by :func:`_snapshot_kernel`.

    The engine's static layout (windows, periods, alert conditions, policy thresholds) is read
    once; its state (rings, clock, phase, prior, coverage) at every call, since the engine may
    replace those arrays (a new phase, a loaded state).

    Parameters
    ----------
    engine:
        The engine to read; it keeps being fed as usual.
    """

    def __init__(self, engine: BudgetEngine) -> None:
        self.engine = engine
        self._window_buckets = np.ascontiguousarray(engine._window_buckets)
        self._period_buckets = np.ascontiguousarray(engine._period_buckets[0::2])
        self._alert_long = np.ascontiguousarray(engine._alert_long, dtype=np.int64)
        self._alert_short = np.ascontiguousarray(engine._alert_short, dtype=np.int64)
        self._alert_rate = np.ascontiguousarray(engine._alert_rate, dtype=np.float64)
        self._enabled = np.stack([engine._page_enabled, engine._ticket_enabled]).astype(np.bool_)
        self._policy = np.array(
            [engine._policy.at_risk_below, engine._policy.exhausted_at], dtype=np.float64
        )

    def __call__(self) -> BudgetSnapshot:
        """The engine's snapshot now (equal to ``engine.snapshot()``)."""
        e = self.engine
        burn, coverage, remaining, period_coverage, alerts, policy = _snapshot_kernel(
            *_rings(e),
            self._window_buckets,
            self._period_buckets,
            e._phase_start_cum,
            e._phase_start_gap,
            e._prior,
            e._covered_from,
            e._inv_budget,
            e.periods,
            float(e.now),
            float(e.phase_start),
            float(e.resolution),
            e._history_covered,
            float(e.min_coverage),
            self._alert_long,
            self._alert_short,
            self._alert_rate,
            e._n_page_conditions,
            self._enabled,
            self._policy,
        )
        return e.snapshot_of(
            burn, coverage, remaining, period_coverage, alerts[0], alerts[1], policy
        )


@numba.njit(cache=True, nogil=True)
def _advance_ring(cum, head, bucket) -> None:
    """:meth:`slo.ring.CumulativeRing.advance` (the caller moves the head)."""
    if bucket <= head:
        return
    n = cum.shape[0]
    latest = cum[head % n].copy()
    for b in range(bucket - min(bucket - head, n) + 1, bucket + 1):
        cum[b % n] = latest


@numba.njit(cache=True, nogil=True)
def _add_row(cum, head, bucket, row) -> None:
    """:meth:`slo.ring.CumulativeRing.add` of one row of counts (older ones merge into the
    oldest bucket)."""
    n = cum.shape[0]
    for b in range(max(bucket, head - n + 1), head + 1):
        cum[b % n] += row


@numba.njit(cache=True, nogil=True)
def _ingest_kernel(cums, heads, head, per, bucket, counts):
    """Advance the four rings to the fine bucket ``head`` and add one bucket's counts."""
    targets = (head, head // per, head, head // per)
    for ring in range(4):
        _advance_ring(cums[ring], heads[ring], targets[ring])
    _add_row(cums[0], max(heads[0], head), bucket, counts)
    _add_row(cums[1], max(heads[1], head // per), bucket // per, counts)


@numba.njit(cache=True, nogil=True)
def _coverage(gaps: float, before: float, seconds: float, history_covered: bool) -> float:
    """:meth:`BudgetEngine._coverage` of one SLO and span."""
    if before != before:  # never measured: no data
        missing = gaps + np.inf
    elif history_covered:
        missing = gaps + 0.0
    else:
        missing = gaps + max(before, 0.0)
    return min(max(1.0 - missing / seconds, 0.0), 1.0)


@numba.njit(cache=True, nogil=True)
def _snapshot_kernel(
    cums,
    heads,
    window_buckets,
    period_buckets,
    phase_start_cum,
    phase_start_gap,
    prior,
    covered_from,
    inv_budget,
    periods,
    now,
    phase_start,
    resolution,
    history_covered,
    min_coverage,
    alert_long,
    alert_short,
    alert_rate,
    n_page,
    enabled,
    policy,
):
    fine, coarse, fine_gap, coarse_gap = cums
    fine_head, coarse_head, fine_gap_head, coarse_gap_head = heads[0], heads[1], heads[2], heads[3]
    n, n_windows = window_buckets.shape
    burn = np.empty((n, n_windows))
    coverage = np.empty((n, n_windows))
    remaining = np.empty(n)
    period_coverage = np.empty(n)
    alerts = np.zeros((2, n), dtype=np.bool_)
    states = np.empty(n, dtype=np.int8)
    nf, nc = fine.shape[0], coarse.shape[0]
    latest = fine[fine_head % nf]
    gap_latest = fine_gap[fine_gap_head % fine_gap.shape[0]]
    for s in range(n):
        g, t = 2 * s, 2 * s + 1
        for w in range(n_windows):
            slot = (fine_head - window_buckets[s, w]) % nf
            good = latest[g] - fine[slot, g]
            total = latest[t] - fine[slot, t]
            ratio = (total - good) / total if total > 0 else 0.0
            burn[s, w] = ratio * inv_budget[s]
            gap_slot = (fine_gap_head - window_buckets[s, w]) % fine_gap.shape[0]
            gaps = gap_latest[s] - fine_gap[gap_slot, s]
            seconds = window_buckets[s, w] * resolution
            before = covered_from[s] - (now - seconds)
            coverage[s, w] = _coverage(gaps, before, seconds, history_covered)
        # The period, cut at the phase start, with the prior's share still in it.
        slot = (coarse_head - period_buckets[s]) % nc
        weight = min(max(1.0 - (now - prior[2, s]) / periods[s], 0.0), 1.0)
        good = (
            latest[g]
            - max(coarse[slot, g], phase_start_cum[g])
            + weight * (prior[1, s] - prior[0, s])
        )
        total = latest[t] - max(coarse[slot, t], phase_start_cum[t]) + weight * prior[1, s]
        ratio = (total - good) / total if total > 0 else 0.0
        remaining[s] = 1.0 - ratio * inv_budget[s]
        gap_slot = (coarse_gap_head - period_buckets[s]) % coarse_gap.shape[0]
        gaps = gap_latest[s] - max(coarse_gap[gap_slot, s], phase_start_gap[s])
        period_start = max(now - periods[s], phase_start)
        covered = _coverage(gaps, covered_from[s] - period_start, periods[s], history_covered)
        period_coverage[s] = min(1.0, covered + (weight if prior[1, s] > 0 else 0.0))
        states[s] = 2 if remaining[s] <= policy[1] else (1 if remaining[s] < policy[0] else 0)
        for c in range(len(alert_rate)):
            lo, sh, rate = alert_long[c], alert_short[c], alert_rate[c]
            fires = burn[s, lo] > rate and burn[s, sh] > rate
            fires = fires and coverage[s, lo] >= min_coverage and coverage[s, sh] >= min_coverage
            severity = 0 if c < n_page else 1
            if fires and enabled[severity, s]:
                alerts[severity, s] = True
    return burn, coverage, remaining, period_coverage, alerts, states
