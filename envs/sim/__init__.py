"""The fleet simulator: calibrated vLLM-like replicas, router, admission and failures.

Public API::

    from envs.sim import Simulator, SimConfig, Knobs, reference_config
    sim = Simulator(reference_config(), seed=0)
    events = sim.advance(30.0)  # REQUEST_EVENT_DTYPE of requests that ended in (0, 30]
    sim.set_knobs(sim.knobs.replace(offload_fraction=0.3))
"""

from envs.sim.config import (
    REFERENCE_RATE,
    REFERENCE_REPLICAS,
    AdmissionConfig,
    ConfigError,
    PoolConfig,
    RouterConfig,
    ScheduledFailure,
    SimConfig,
    TenantConfig,
    WorkloadConfig,
    reference_config,
)
from envs.sim.knobs import KNOB_DOCS, Knobs
from envs.sim.simulator import SERIES_DTYPE, FleetStats, RunSummary, Simulator, measure_capacity

__all__ = [
    "KNOB_DOCS",
    "REFERENCE_RATE",
    "REFERENCE_REPLICAS",
    "SERIES_DTYPE",
    "AdmissionConfig",
    "ConfigError",
    "FleetStats",
    "Knobs",
    "PoolConfig",
    "RouterConfig",
    "RunSummary",
    "ScheduledFailure",
    "SimConfig",
    "Simulator",
    "TenantConfig",
    "WorkloadConfig",
    "measure_capacity",
    "reference_config",
]
