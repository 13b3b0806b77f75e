"""How each LLM-serving SLI classifies request events as good or bad.

The engine (counting) and the exposition renderer (exporting engine metrics) both call these
functions, so that an SLI computed from events and the same SLI computed from the rendered
metrics agree to the last event. Latencies are compared in float64 (the contract stores
float32): vLLM observes Python floats, and a float32 comparison would put values equal to
``float32(threshold)`` on the wrong side of a bucket boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from slo.events import ITL_BUCKETS_S, Outcome, Reason
from slo.spec import (
    E2ESLI,
    ITLSLI,
    TTFTSLI,
    AvailabilitySLI,
    ContextSLI,
    FairnessSLI,
    NormalizedLatencySLI,
    QualitySLI,
    Selectors,
    ServiceSpec,
    SLOSpec,
    StreamingSLI,
)

_OUTCOME_BY_NAME = {
    "rejected": Outcome.REJECTED,
    "aborted": Outcome.ABORTED,
    "failed": Outcome.FAILED,
}
# Plain ints: comparing arrays with enum members is slower.
_SERVED, _LENGTH = int(Outcome.SERVED), int(Reason.LENGTH)
_FLOAT_FIELDS = ("ttft_s", "e2e_s", "itl_max_s", "quality_loss")


class EventBatch:
    """A batch of request events with columns extracted once and shared by all SLIs.

    Parameters
    ----------
    events:
        An array of :data:`slo.events.REQUEST_EVENT_DTYPE`.
    """

    def __init__(self, events: np.ndarray) -> None:
        self.events = events
        self._memo: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.events)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """Return ``compute()``, computed once per batch under ``key``."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def column(self, name: str) -> np.ndarray:
        """A contiguous copy of field ``name`` (float fields as float64)."""
        dtype = np.float64 if name in _FLOAT_FIELDS else None
        return self.memo(name, lambda: np.ascontiguousarray(self.events[name], dtype=dtype))

    @property
    def served(self) -> np.ndarray:
        """Requests that were served."""
        return self.memo("served", lambda: self.column("outcome") == _SERVED)


# --------------------------------------------------------------------------------------------
# Measures (also rendered as engine histograms)
# --------------------------------------------------------------------------------------------


def ttft_s(batch: EventBatch) -> np.ndarray:
    """Time to first token (NaN when none was produced)."""
    return batch.column("ttft_s")


def e2e_s(batch: EventBatch) -> np.ndarray:
    """End-to-end latency (NaN when no first token was produced)."""
    return batch.column("e2e_s")


def tpot_request_s(batch: EventBatch) -> np.ndarray:
    """Mean time per output token after the first, ``(e2e - ttft) / (output_tokens - 1)``:
    vLLM's ``request_time_per_output_token`` (NaN for fewer than two output tokens)."""

    def compute() -> np.ndarray:
        decode = batch.column("e2e_s") - batch.column("ttft_s")
        steps = batch.column("output_tokens").astype(np.float64) - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(steps >= 1.0, decode / steps, np.nan)

    return batch.memo("tpot_request", compute)


def normalized_latency_s(batch: EventBatch) -> np.ndarray:
    """End-to-end latency per output token (NaN without output tokens)."""

    def compute() -> np.ndarray:
        tokens = batch.column("output_tokens").astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(tokens >= 1.0, batch.column("e2e_s") / tokens, np.nan)

    return batch.memo("normalized_latency", compute)


def itl_gap_counts(batch: EventBatch) -> np.ndarray:
    """Per request, its inter-token gaps counted per ``ITL_BUCKETS_S`` bucket (+Inf last)."""
    return batch.memo("itl_hist", lambda: np.ascontiguousarray(batch.events["itl_hist"]))


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------

Classified = tuple[np.ndarray, np.ndarray]


def _within(values: np.ndarray, threshold: float) -> Classified:
    """Good: ``values <= threshold``; counted: values that exist (not NaN)."""
    return values <= threshold, ~np.isnan(values)


def _ttft(sli: TTFTSLI, batch: EventBatch) -> Classified:
    return _within(ttft_s(batch), sli.threshold_s)


def _e2e(sli: E2ESLI, batch: EventBatch) -> Classified:
    return _within(e2e_s(batch), sli.threshold_s)


def _normalized_latency(sli: NormalizedLatencySLI, batch: EventBatch) -> Classified:
    return _within(normalized_latency_s(batch), sli.threshold_s)


def _streaming(sli: StreamingSLI, batch: EventBatch) -> Classified:
    return _within(tpot_request_s(batch), sli.pace_s)


def _itl(sli: ITLSLI, batch: EventBatch) -> Classified:
    if sli.per == "request":
        return _within(batch.column("itl_max_s"), sli.threshold_s)
    gaps = itl_gap_counts(batch)
    last_good = ITL_BUCKETS_S.index(sli.threshold_s)
    good = gaps[:, : last_good + 1].sum(axis=1, dtype=np.int64)
    return good, gaps.sum(axis=1, dtype=np.int64)


def _availability(sli: AvailabilitySLI, batch: EventBatch) -> Classified:
    outcome = batch.column("outcome")
    counted = batch.served.copy()
    for name in sli.bad_outcomes:
        counted |= outcome == _OUTCOME_BY_NAME[name]
    return batch.served, counted


def _quality(sli: QualitySLI, batch: EventBatch) -> Classified:
    served = batch.served
    if sli.mode == "tier":
        kept = batch.column("tier") == batch.column("intended_tier")
    else:
        kept = batch.column("quality_loss") <= sli.max_loss
    return served & kept, served


def _context(sli: ContextSLI, batch: EventBatch) -> Classified:
    served = batch.served
    broken = np.zeros(len(batch), dtype=bool)
    if sli.truncation:
        broken |= batch.column("truncated")
    if sli.max_preemptions is not None:
        broken |= batch.column("preemptions") > sli.max_preemptions
    if sli.length_cut:
        broken |= batch.column("reason") == _LENGTH
    return served & ~broken, served


_CLASSIFY: dict[str, Callable[[Any, EventBatch], Classified]] = {
    "ttft": _ttft,
    "itl": _itl,
    "e2e": _e2e,
    "normalized_latency": _normalized_latency,
    "availability": _availability,
    "quality": _quality,
    "context": _context,
    "streaming": _streaming,
}


def is_weighted(sli: Any) -> bool:
    """True when the SLI counts several events per request (ITL per token)."""
    return isinstance(sli, ITLSLI) and sli.per == "token"


def selector_mask(selectors: Selectors, spec: ServiceSpec, batch: EventBatch) -> np.ndarray | None:
    """The requests an SLO's selectors keep (None: all of them)."""
    if selectors.is_empty:
        return None

    def compute() -> np.ndarray:
        keep = np.ones(len(batch), dtype=bool)
        tiers = selectors.tier
        if selectors.model is not None:
            model_tiers = tuple(spec.tier_of_model(m) for m in selectors.model)
            tiers = model_tiers if tiers is None else tuple(set(tiers) & set(model_tiers))
        for field, wanted in (
            ("tenant", selectors.tenant),
            ("tier", tiers),
            ("intended_tier", selectors.intended_tier),
        ):
            if wanted is not None:
                keep &= np.isin(batch.column(field), wanted)
        return keep

    return batch.memo(("selectors", selectors), compute)


class SLIClassifier:
    """Classifies events for one SLO: per request, how many events are good and counted.

    Parameters
    ----------
    slo:
        An SLO with an ``llm`` SLI. For a fairness SLO this classifies its base SLI.
    spec:
        The spec (for model names in selectors).
    """

    def __init__(self, slo: SLOSpec, spec: ServiceSpec) -> None:
        sli = slo.sli.llm
        if sli is None:
            raise ValueError(f"SLO {slo.name!r} has no llm SLI to classify events with")
        self.slo = slo
        self.fairness = sli if isinstance(sli, FairnessSLI) else None
        self.sli = self.fairness.base if self.fairness is not None else sli
        self.weighted = is_weighted(self.sli)
        self._spec = spec
        self._classify = _CLASSIFY[self.sli.kind]

    def classify(self, batch: EventBatch) -> Classified:
        """Return ``(good, counted)`` per event: booleans, or event counts when weighted."""
        good, counted = self._classify(self.sli, batch)
        keep = selector_mask(self.slo.selectors, self._spec, batch)
        if keep is not None:
            good, counted = (
                (good * keep, counted * keep) if self.weighted else (good & keep, counted & keep)
            )
        return good, counted

    def classify_by_tenant(self, batch: EventBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`classify`, plus each event's tenant; tenants outside
        ``[0, max_tenants)`` of the fairness SLI are not counted."""
        good, counted = self.classify(batch)
        tenant = batch.column("tenant").astype(np.intp)
        if self.fairness is not None:
            inside = (tenant >= 0) & (tenant < self.fairness.max_tenants)
            good, counted = (
                (good * inside, counted * inside)
                if self.weighted
                else (good & inside, counted & inside)
            )
            tenant = np.where(inside, tenant, 0)
        return good, counted, tenant
