"""Benchmark of the error-budget engine (``budgetpilot perf slo``)."""

from __future__ import annotations

import itertools
import time

import numpy as np

from slo.engine import BudgetEngine
from slo.spec import default_spec
from slo.synthetic import synthetic_events

_BLOCK_EVENTS = 131072  # one simulated minute of a busy fleet (~2,200 requests/s)
_BLOCK_SECONDS = 60.0
_STEP_EVENTS = 350  # one 30 s environment step of the steady scenario
_STEP_SECONDS = 30.0


def benchmark(
    n_events: int = 2_097_152, batch_events: int = 8192, n_queries: int = 2000, seed: int = 0
) -> dict[str, float | int]:
    """Time batch ingestion of simulator-like events and full queries on the default spec.

    Parameters
    ----------
    n_events:
        Events to ingest (a block of one simulated minute, replayed minute after minute).
    batch_events:
        Events per :meth:`~slo.engine.BudgetEngine.ingest_events` call (one environment step).
    n_queries:
        Query calls per timing repeat (the best of five repeats is reported).
    seed:
        Seed of the synthetic events.
    """
    engine = BudgetEngine(default_spec())
    block = synthetic_events(np.random.default_rng(seed), _BLOCK_EVENTS, 0.0, _BLOCK_SECONDS)
    BudgetEngine(default_spec()).ingest_events(block[:batch_events])  # numba's first call
    ingested, elapsed = 0, 0.0
    while ingested < n_events:
        for start in range(0, len(block), batch_events):
            batch = block[start : start + batch_events]
            began = time.perf_counter()
            engine.ingest_events(batch)
            elapsed += time.perf_counter() - began
            ingested += len(batch)
        block["t_end"] += _BLOCK_SECONDS
    return {
        "events_per_s": ingested / elapsed,
        "query_us": _best_us(engine.burn_rates, n_queries),
        "snapshot_us": _best_us(engine.snapshot, n_queries // 4),
        "small_batch_ingest_us": _small_batch_us(block, n_queries // 4),
        "n_events": ingested,
        "batch_events": batch_events,
        "n_slos": len(engine.slo_names),
        "n_windows": len(engine.windows),
    }


def _small_batch_us(block: np.ndarray, n_steps: int) -> float:
    """One environment step's engine work: ingest ``_STEP_EVENTS`` events spread over the
    next ``_STEP_SECONDS``, advance the clock to the step's end and take a snapshot."""
    engine = BudgetEngine(default_spec())
    batch = block[:_STEP_EVENTS].copy()
    offsets = np.linspace(0.0, _STEP_SECONDS, _STEP_EVENTS + 1)[1:]
    steps = itertools.count()

    def step() -> None:
        start = next(steps) * _STEP_SECONDS
        batch["t_end"] = start + offsets
        engine.ingest_events(batch)
        engine.advance_to(start + _STEP_SECONDS)
        engine.snapshot()

    return _best_us(step, n_steps)


def _best_us(call, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - began) / n)
    return best * 1e6
