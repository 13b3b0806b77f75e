"""The fleet simulator: calibrated vLLM-like replicas, router, admission, failures and scaling.

Public API::

    from envs.sim import Simulator, SimConfig, Knobs, reference_config
    sim = Simulator(reference_config(), seed=0)
    events = sim.advance(30.0)  # REQUEST_EVENT_DTYPE of requests that ended in (0, 30]
    sim.set_knobs(sim.knobs.replace(offload_fraction=0.3))
    sim.set_desired_replicas("strong", 6)  # drains two replicas (see PoolConfig.max_replicas)
"""

from envs.sim.config import (
    REFERENCE_RATE,
    REFERENCE_REPLICAS,
    AdmissionConfig,
    AutoscalingConfig,
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
from envs.sim.simulator import (
    SERIES_DTYPE,
    FleetStats,
    ReplicaState,
    RunSummary,
    Simulator,
    measure_capacity,
)

__all__ = [
    "KNOB_DOCS",
    "REFERENCE_RATE",
    "REFERENCE_REPLICAS",
    "SERIES_DTYPE",
    "AdmissionConfig",
    "AutoscalingConfig",
    "ConfigError",
    "FleetStats",
    "Knobs",
    "PoolConfig",
    "ReplicaState",
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
