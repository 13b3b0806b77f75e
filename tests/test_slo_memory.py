"""The budget engine's memory is bounded: about 1.8 MB for the default spec, however long it runs.

README: the fine ring covers the longest window (3 d of 30 s buckets), a coarse ring of 1 h
buckets covers the 30-day period, and rings of the same sizes keep the time without data. numpy
reports its allocations to :mod:`tracemalloc`, so the traced memory is what the engine holds.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from slo import BudgetEngine, default_spec
from slo.synthetic import synthetic_events

HOUR = 3600.0
#: README: "memory is bounded (about 1.8 MB for the default spec)".
README_BYTES = 1.8e6


def feed(engine: BudgetEngine, hours: np.ndarray, batch: np.ndarray) -> None:
    """``batch`` (events ending in the first hour) again in each interval between successive
    ``hours``, then a snapshot."""
    for start, end in zip(hours[:-1], hours[1:], strict=True):
        events = batch.copy()
        events["t_end"] = start * HOUR + (end - start) * events["t_end"]
        engine.ingest_events(events)
        engine.advance_to(end * HOUR)
    engine.snapshot()


def held_bytes() -> int:
    """Bytes allocated since tracing started and still held."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.slow
def test_the_default_spec_engine_holds_about_1_8_mb_however_long_it_runs():
    spec = default_spec()
    batch = synthetic_events(np.random.default_rng(0), 500, 0.0, HOUR)
    feed(BudgetEngine(spec), np.array([0.0, 1.0]), batch)  # compiles the classifiers untraced
    tracemalloc.start()
    try:
        engine = BudgetEngine(spec)
        feed(engine, np.array([0.0, 1.0]), batch)
        size = held_bytes()
        assert 0.9 * README_BYTES < size < 1.1 * README_BYTES
        # Past the fine ring (3 days) and the period (40 days), batches of 6 then 12 hours.
        feed(
            engine, np.concatenate([np.arange(1.0, 96.0, 6.0), np.arange(96.0, 960.0, 12.0)]), batch
        )
        assert held_bytes() - size < 64 * 1024
    finally:
        tracemalloc.stop()
