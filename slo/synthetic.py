"""Synthetic request events shaped like the simulator's, for tests and benchmarks of ``slo``.

The numbers are plausible for a healthy chat-serving fleet (TTFT around 0.3 s, 30 ms between
tokens, a few per mille of rejections and truncations, a few percent of downgrades) but are not
calibrated: the simulator in ``envs`` is the calibrated source of events.
"""

from __future__ import annotations

import numpy as np

from slo.events import ITL_BUCKETS_S, Outcome, Reason, empty_events

_OUTCOME_P = (0.9985, 0.0008, 0.0004, 0.0003)  # served, rejected, aborted, failed
_GAP_SIGMA = 0.35  # log-spread of a request's inter-token gaps around its own median


def synthetic_events(
    rng: np.random.Generator,
    n: int,
    t_start: float,
    t_end: float,
    *,
    n_tenants: int = 4,
    n_tiers: int = 2,
    n_replicas: int = 4,
    slowdown: float = 1.0,
    sort: bool = True,
) -> np.ndarray:
    """Return ``n`` request events finishing in ``(t_start, t_end]``.

    Parameters
    ----------
    rng:
        The random generator (the only source of randomness).
    n:
        Number of events.
    t_start, t_end:
        The events' ``t_end`` are uniform in this interval.
    n_tenants, n_tiers, n_replicas:
        Tenants, model tiers (0 = strongest) and replicas the events spread over.
    slowdown:
        Multiplies every latency: > 1 simulates an overloaded fleet that burns latency budget.
    sort:
        Sort the events by ``t_end`` (the simulator emits them in order).
    """
    events = empty_events(n)
    finish = t_end - rng.uniform(0.0, t_end - t_start, n)  # in (t_start, t_end]
    events["t_end"] = np.sort(finish) if sort else finish
    events["tenant"] = rng.integers(0, n_tenants, n)
    intended = rng.integers(0, n_tiers, n)
    events["intended_tier"] = intended
    outcome = rng.choice(len(_OUTCOME_P), size=n, p=_OUTCOME_P)
    events["outcome"] = outcome
    reached = (outcome == Outcome.SERVED) | (outcome == Outcome.ABORTED)
    downgraded = (rng.random(n) < 0.05) & (intended < n_tiers - 1)
    tier = np.where(reached, intended + downgraded, -1)
    events["tier"] = tier
    events["replica"] = np.where(reached, rng.integers(0, n_replicas, n), -1)
    events["reason"] = _reasons(rng, outcome)

    prompt = np.minimum(rng.lognormal(np.log(800), 1.0, n).astype(np.int32) + 1, 32000)
    events["original_prompt_tokens"] = prompt
    truncated = (rng.random(n) < 0.003) & (outcome == Outcome.SERVED)
    events["truncated"] = truncated
    events["prompt_tokens"] = np.where(truncated, prompt // 2, prompt)
    requested = np.minimum(rng.geometric(1 / 250, n), 4000).astype(np.int32)
    events["requested_output_tokens"] = requested
    events["preemptions"] = np.where(reached, rng.poisson(0.15, n), 0)
    difficulty = rng.random(n).astype(np.float32)
    events["difficulty"] = difficulty
    events["quality_loss"] = np.where(tier > intended, 0.3 * difficulty, 0.0)

    # Latencies: only requests that produced a first token (served, half of the aborted).
    started = (outcome == Outcome.SERVED) | ((outcome == Outcome.ABORTED) & (rng.random(n) < 0.5))
    length_cut = events["reason"] == Reason.LENGTH
    output = np.where(length_cut, np.maximum(requested // 2, 1), requested)
    output = np.where(started, output, 0)
    events["output_tokens"] = output
    ttft = rng.lognormal(np.log(0.3), 0.5, n) * slowdown
    median_gap = rng.lognormal(np.log(0.03), 0.3, n) * slowdown
    gaps = np.maximum(output - 1, 0)
    events["itl_hist"] = _gap_histograms(rng, gaps, median_gap)
    mean_gap = median_gap * np.exp(_GAP_SIGMA**2 / 2)
    events["ttft_s"] = np.where(started, ttft, np.nan)
    events["e2e_s"] = np.where(started, ttft + gaps * mean_gap, np.nan)
    events["itl_max_s"] = np.where(
        started & (gaps > 0), median_gap * np.exp(3 * _GAP_SIGMA), np.nan
    )
    return events


def _reasons(rng: np.random.Generator, outcome: np.ndarray) -> np.ndarray:
    n = len(outcome)
    served = np.where(rng.random(n) < 0.004, Reason.LENGTH, Reason.STOP)
    rejected = rng.choice([Reason.ADMISSION, Reason.TOO_LONG, Reason.NO_REPLICA], size=n)
    by_outcome = {
        Outcome.SERVED: served,
        Outcome.REJECTED: rejected,
        Outcome.ABORTED: np.full(n, Reason.TIMEOUT),
        Outcome.FAILED: np.full(n, Reason.REPLICA_FAILURE),
    }
    reason = np.zeros(n, dtype=np.int8)
    for code, values in by_outcome.items():
        reason = np.where(outcome == code, values, reason)
    return reason


def _gap_histograms(
    rng: np.random.Generator, gaps: np.ndarray, median_gap: np.ndarray
) -> np.ndarray:
    """Per request, ``gaps`` inter-token gaps drawn log-normally around ``median_gap``, counted
    per ITL bucket."""
    edges = np.log(np.asarray(ITL_BUCKETS_S))
    z = (edges[None, :] - np.log(median_gap)[:, None]) / _GAP_SIGMA
    cdf = 0.5 * (1.0 + _erf(z / np.sqrt(2.0)))
    probs = np.diff(
        np.concatenate([np.zeros((len(gaps), 1)), cdf, np.ones((len(gaps), 1))], axis=1), axis=1
    )
    probs = np.clip(probs, 0.0, None)
    probs /= probs.sum(axis=1, keepdims=True)
    return rng.multinomial(gaps, probs).astype(np.uint32)


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and scipy is not needed."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-x * x))
