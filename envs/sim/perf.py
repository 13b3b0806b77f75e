"""Speed and fidelity figures of the simulator (``budgetpilot perf sim``).

Speed is measured on the reference workload (one simulated hour) after a short warm-up that
loads or compiles the numba kernel, so compile time is excluded; each figure is the fastest of a
few identical runs, since other processes on the machine can only slow a run down. The kernel
is single-threaded (no parallel loops): the figures are for one core whatever
``NUMBA_NUM_THREADS`` says.
Scaling runs multiply replicas and arrival rate together: the cost per request should stay flat.
"""

from __future__ import annotations

import time

from envs.sim.config import REFERENCE_REPLICAS, reference_config
from envs.sim.simulator import Simulator


def _timed_run(replicas: int, hours: float, seed: int, repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` identical runs (other processes only ever slow a run down)."""
    wall = float("inf")
    for _ in range(repeats):
        sim = Simulator(reference_config(replicas=replicas), seed=seed)
        start = time.perf_counter()
        summary = sim.run(hours, step_s=60.0)
        wall = min(wall, time.perf_counter() - start)
    return {
        "replicas": replicas,
        "requests": summary["requests"],
        "sim_seconds": summary["sim_seconds"],
        "wall_seconds": wall,
        "requests_per_wall_s": summary["requests"] / wall,
        "sim_s_per_wall_s": summary["sim_seconds"] / wall,
    }


def benchmark(
    hours: float = 1.0,
    scaling: tuple[int, ...] = (1, 4, 16),
    scaling_hours: float = 0.25,
    seed: int = 0,
    repeats: int = 3,
) -> dict:
    """Measure simulation speed on the reference workload and gather the step-time fidelity.

    Parameters
    ----------
    hours: simulated hours of the headline run.
    scaling: load multipliers (replicas and rate scaled together).
    scaling_hours: simulated hours of each scaling run.
    seed: seed of every run.
    repeats: runs of each measurement; the fastest counts.
    """
    from envs.sim.fidelity import fidelity_report

    Simulator(reference_config(), seed=seed).advance(1.0)  # load or compile the kernel
    headline = _timed_run(REFERENCE_REPLICAS, hours, seed, repeats)
    rows = [_timed_run(REFERENCE_REPLICAS * f, scaling_hours, seed, repeats) for f in scaling]
    base = rows[0]["requests_per_wall_s"]
    for factor, row in zip(scaling, rows, strict=True):
        row["load_factor"] = factor
        row["cost_per_request_vs_1x"] = base / row["requests_per_wall_s"]
    fidelity = fidelity_report()
    result = {
        "workload": f"reference: Poisson, azure-conv lengths, {REFERENCE_REPLICAS} x "
        "llama-2-7b on a100-80gb",
        "threads": 1,
        "requests": headline["requests"],
        "sim_seconds": headline["sim_seconds"],
        "wall_seconds": headline["wall_seconds"],
        "requests_per_wall_s": headline["requests_per_wall_s"],
        "sim_s_per_wall_s": headline["sim_s_per_wall_s"],
        "scaling": rows,
        "prompt_time_mape": fidelity.get("prompt_time_mape_percent"),
        "token_time_mape": fidelity.get("token_time_mape_percent"),
        "mape_unit": "percent",
    }
    if fidelity.get("reason"):
        result["fidelity_reason"] = fidelity["reason"]
    return result
