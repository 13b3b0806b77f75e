"""All request SLIs of a spec classified in one compiled pass over the events.

:mod:`slo.sli` defines each SLI with numpy, one array operation at a time; that is clear and is
what the exposition renderer uses, but for the few hundred events of an environment step the
cost is the number of numpy calls, not the events. :class:`FusedClassifier` encodes every
request SLO as a row of parameters and counts good and total events per time bucket in a single
numba loop, with the same float64 comparisons, so the counts are identical (tested against
:mod:`slo.sli`). Only :meth:`slo.engine.BudgetEngine.ingest_events` uses it and imports it on
first use: the sidecar, which feeds the engine from metrics, never loads numba.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from slo.events import ITL_BUCKETS_S, Outcome, Reason
from slo.sli import _OUTCOME_BY_NAME, EventBatch, SLIClassifier
from slo.spec import Selectors, ServiceSpec

_TTFT, _ITL_TOKEN, _ITL_REQUEST, _E2E, _NORMALIZED = 0, 1, 2, 3, 4
_AVAILABILITY, _QUALITY_TIER, _QUALITY_LOSS, _CONTEXT, _STREAMING = 5, 6, 7, 8, 9
_SERVED, _LENGTH = int(Outcome.SERVED), int(Reason.LENGTH)
# Selector tables are indexed by value + 1, so that tier -1 (not served) has a slot.
_SELECTOR_FIELDS = ("tenant", "tier", "intended_tier")


_THRESHOLD_KINDS = {"ttft": _TTFT, "e2e": _E2E, "normalized_latency": _NORMALIZED}


def _encode(sli) -> tuple[int, float]:
    """A request SLI as ``(kind code, threshold)`` (for ITL per token, the last good bucket)."""
    if sli.kind in _THRESHOLD_KINDS:
        return _THRESHOLD_KINDS[sli.kind], sli.threshold_s
    if sli.kind == "itl" and sli.per == "token":
        return _ITL_TOKEN, float(ITL_BUCKETS_S.index(sli.threshold_s))
    if sli.kind == "itl":
        return _ITL_REQUEST, sli.threshold_s
    if sli.kind == "streaming":
        return _STREAMING, sli.pace_s
    if sli.kind == "quality":
        return (_QUALITY_TIER, 0.0) if sli.mode == "tier" else (_QUALITY_LOSS, sli.max_loss)
    if sli.kind == "availability":
        return _AVAILABILITY, 0.0
    if sli.kind == "context":
        return _CONTEXT, 0.0
    raise ValueError(f"no fused classification for SLI kind {sli.kind!r}")


class FusedClassifier:
    """Counts good and total events of several request SLOs per time bucket.

    Parameters
    ----------
    classifiers:
        The :class:`slo.sli.SLIClassifier` of each request SLO (no fairness SLOs).
    spec:
        The spec (for model names in selectors).
    columns:
        For each classifier, the index of its SLO in the engine (its counts go to columns
        ``2 * index`` and ``2 * index + 1``).
    """

    def __init__(
        self, classifiers: Sequence[SLIClassifier], spec: ServiceSpec, columns: Sequence[int]
    ) -> None:
        n = len(classifiers)
        self.columns = np.asarray(columns, dtype=np.int64)
        self.kind = np.empty(n, dtype=np.int64)
        self.threshold = np.empty(n, dtype=np.float64)
        # Per SLO: bad-outcome bits (availability); truncation, max preemptions (-1: not
        # checked) and length-cut flags (context).
        self.flags = np.zeros((n, 4), dtype=np.int64)
        selectors = [_selector_values(c.slo.selectors, spec) for c in classifiers]
        size = 2 + max((max(v) for s in selectors for v in s if v), default=0)
        self.has_selector = np.zeros((n, 3), dtype=np.bool_)
        self.selected = np.zeros((n, 3, size), dtype=np.bool_)
        for j, classifier in enumerate(classifiers):
            sli = classifier.sli
            self.kind[j], self.threshold[j] = _encode(sli)
            if sli.kind == "availability":
                self.flags[j, 0] = sum(1 << int(_OUTCOME_BY_NAME[o]) for o in sli.bad_outcomes)
            elif sli.kind == "context":
                maxp = -1 if sli.max_preemptions is None else sli.max_preemptions
                self.flags[j, 1:] = (sli.truncation, maxp, sli.length_cut)
            for f, values in enumerate(selectors[j]):
                if values is not None:
                    self.has_selector[j, f] = True
                    self.selected[j, f, [v + 1 for v in values if v >= -1]] = True

    def counts(
        self, batch: EventBatch, bucket: np.ndarray, n_buckets: int, width: int
    ) -> np.ndarray:
        """Good/total counts per bucket: shape ``(n_buckets, width)``, zero in the columns of
        SLOs this classifier does not hold.

        Parameters
        ----------
        batch:
            The events.
        bucket:
            Each event's bucket, counted from 0.
        n_buckets, width:
            Shape of the result.
        """
        out = np.zeros((n_buckets, width))
        ev = batch.events
        _count(
            out,
            np.ascontiguousarray(bucket, dtype=np.int64),
            ev["ttft_s"],
            ev["e2e_s"],
            ev["itl_max_s"],
            ev["quality_loss"],
            ev["outcome"],
            ev["reason"],
            ev["tier"],
            ev["intended_tier"],
            ev["tenant"],
            ev["truncated"],
            ev["preemptions"],
            ev["output_tokens"],
            ev["itl_hist"],
            self.kind,
            self.threshold,
            self.flags,
            self.has_selector,
            self.selected,
            self.columns,
        )
        return out


def _selector_values(selectors: Selectors, spec: ServiceSpec) -> tuple[tuple[int, ...] | None, ...]:
    """Allowed tenants, tiers and intended tiers (None: any), read as
    :func:`slo.sli.selector_mask` reads them (models name tiers)."""
    tiers = selectors.tier
    if selectors.model is not None:
        model_tiers = tuple(spec.tier_of_model(m) for m in selectors.model)
        tiers = model_tiers if tiers is None else tuple(set(tiers) & set(model_tiers))
    return selectors.tenant, tiers, selectors.intended_tier


@numba.njit(cache=True, nogil=True)
def _selected_value(has, table, value) -> bool:
    if not has:
        return True
    slot = value + 1
    return 0 <= slot < table.shape[0] and table[slot]


@numba.njit(cache=True, nogil=True)
def _within(value: float, threshold: float) -> tuple[float, float]:
    if value != value:  # NaN: not counted
        return 0.0, 0.0
    return (1.0 if value <= threshold else 0.0), 1.0


@numba.njit(cache=True, nogil=True)
def _count(
    out,
    bucket,
    ttft,
    e2e,
    itl_max,
    quality_loss,
    outcome,
    reason,
    tier,
    intended,
    tenant,
    truncated,
    preemptions,
    output_tokens,
    itl_hist,
    kind,
    threshold,
    flags,
    has_selector,
    selected,
    columns,
):
    n_hist = itl_hist.shape[1]
    for i in range(len(bucket)):
        b = bucket[i]
        served = outcome[i] == _SERVED
        t_ttft = np.float64(ttft[i])
        t_e2e = np.float64(e2e[i])
        for j in range(len(kind)):
            if not (
                _selected_value(has_selector[j, 0], selected[j, 0], tenant[i])
                and _selected_value(has_selector[j, 1], selected[j, 1], tier[i])
                and _selected_value(has_selector[j, 2], selected[j, 2], intended[i])
            ):
                continue
            k = kind[j]
            good = 0.0
            counted = 0.0
            if k == _TTFT:
                good, counted = _within(t_ttft, threshold[j])
            elif k == _E2E:
                good, counted = _within(t_e2e, threshold[j])
            elif k == _ITL_REQUEST:
                good, counted = _within(np.float64(itl_max[i]), threshold[j])
            elif k == _NORMALIZED:
                tokens = np.float64(output_tokens[i])
                if tokens >= 1.0:
                    good, counted = _within(t_e2e / tokens, threshold[j])
            elif k == _STREAMING:
                steps = np.float64(output_tokens[i]) - 1.0
                if steps >= 1.0:
                    good, counted = _within((t_e2e - t_ttft) / steps, threshold[j])
            elif k == _ITL_TOKEN:
                last_good = int(threshold[j])
                for h in range(n_hist):
                    gaps = np.float64(itl_hist[i, h])
                    counted += gaps
                    if h <= last_good:
                        good += gaps
            elif k == _AVAILABILITY:
                counted = 1.0 if served or (flags[j, 0] >> outcome[i]) & 1 else 0.0
                good = 1.0 if served else 0.0
            elif served:  # quality and context count served requests only
                counted = 1.0
                if k == _QUALITY_TIER:
                    good = 1.0 if tier[i] == intended[i] else 0.0
                elif k == _QUALITY_LOSS:
                    good = 1.0 if np.float64(quality_loss[i]) <= threshold[j] else 0.0
                else:
                    broken = (flags[j, 1] != 0 and truncated[i]) or (
                        flags[j, 3] != 0 and reason[i] == _LENGTH
                    )
                    broken = broken or (flags[j, 2] >= 0 and preemptions[i] > flags[j, 2])
                    good = 0.0 if broken else 1.0
            c = columns[j]
            out[b, 2 * c] += good
            out[b, 2 * c + 1] += counted
