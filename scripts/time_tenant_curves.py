"""What tenants' own rate curves (``tenants[].rate_curve``) cost the simulator.

On the reference fleet (three tenants) with the fleet rate curve 4, 12, 2 requests/s in
10-minute blocks, measures the CPU microseconds per simulated second of the arrivals
(``Workload.generate`` in calls of 0.1, 1 and 30 s: the twin's and the environments' grains)
and of the whole simulator (``advance`` by 60 s), for each variant asked for:

* ``none``: no tenant curve (the tenant draw of before tenant curves existed);
* ``flat``: every tenant a curve of equal blocks (the same mix: the tenant draw's own cost);
* ``varying``: premium 1, 3, 1, 1 in 5-minute blocks, batch 2, 1 in 7.5-minute blocks.

The variants run in interleaved rounds and each figure is the fastest round's: on a machine
shared with other work, other processes only ever slow a round down.

Usage: ``python scripts/time_tenant_curves.py [none] [flat] [varying]`` (default: all three).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import yaml

from envs.paths import EXAMPLE_FLEETS_DIR
from envs.sim.config import SimConfig
from envs.sim.simulator import Simulator

ROUNDS = 9
VARIANTS = ("none", "flat", "varying")


def fleet(variant: str) -> SimConfig:
    """The reference fleet under the fleet curve, with the tenant curves of ``variant``."""
    data = yaml.safe_load((EXAMPLE_FLEETS_DIR / "reference.yaml").read_text())
    data["workload"] = {"kind": "poisson", "rate_curve": {"step_s": 600, "rates": [4, 12, 2]}}
    premium, _, batch = data["tenants"]
    if variant == "flat":
        for tenant in data["tenants"]:
            tenant["rate_curve"] = {"step_s": 300, "rates": [1, 1, 1, 1]}
    elif variant == "varying":
        premium["rate_curve"] = {"step_s": 300, "rates": [1, 3, 1, 1]}
        batch["rate_curve"] = {"step_s": 450, "rates": [2, 1]}
    return SimConfig.from_dict(data, f"reference fleet ({variant} tenant curves)")


def arrivals_cost(config: SimConfig, call_s: float, seconds: float) -> float:
    """CPU microseconds per simulated second of the arrivals drawn in calls of ``call_s``."""
    workload = Simulator(config, seed=0).workload
    rng = np.random.default_rng(0)
    start = time.process_time()
    for t in np.arange(0.0, seconds, call_s):
        workload.generate(rng, t, t + call_s)
    return (time.process_time() - start) / seconds * 1e6


def simulator_cost(config: SimConfig, seconds: float = 1800.0) -> float:
    """CPU microseconds per simulated second of the whole simulator, advancing 60 s a call."""
    sim = Simulator(config, seed=0)
    start = time.process_time()
    sim.run(seconds / 3600.0, step_s=60.0)
    return (time.process_time() - start) / seconds * 1e6


MEASURES: dict[str, Callable[[SimConfig], float]] = {
    "generate in 0.1-s calls": lambda c: arrivals_cost(c, 0.1, 600.0),
    "generate in 1-s calls": lambda c: arrivals_cost(c, 1.0, 3600.0),
    "generate in 30-s calls": lambda c: arrivals_cost(c, 30.0, 3600.0),
    "simulator, 60-s advances": simulator_cost,
}


def main(variants: list[str]) -> None:
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    configs = {v: fleet(v) for v in variants}
    Simulator(configs[variants[0]], seed=0).advance(1.0)  # load or compile the kernel
    best = {(m, v): float("inf") for m in MEASURES for v in variants}
    for _ in range(ROUNDS):
        for name, measure in MEASURES.items():
            for v in variants:
                best[name, v] = min(best[name, v], measure(configs[v]))
    print("CPU microseconds per simulated second (fastest of", ROUNDS, "rounds)")
    for name in MEASURES:
        print(f"{name:26s}", "  ".join(f"{v}: {best[name, v]:7.1f}" for v in variants))


if __name__ == "__main__":
    main(sys.argv[1:] or list(VARIANTS))
