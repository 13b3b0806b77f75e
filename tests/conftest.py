"""Shared test configuration."""

from __future__ import annotations

import os

# Benchmarks pin their own threads; tests keep numba and BLAS to one thread so two test processes
# on a 2-core machine do not oversubscribe it.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
