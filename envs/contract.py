"""The observation and action contract of environments, exported policies and the sidecar.

A policy trained in the simulator is only safe to run beside a real fleet if the sidecar builds
*exactly* the observation vector the policy saw in training and reads its actions the same way.
This module is that agreement, as plain data: which features, in which order, how each is scaled,
and which knobs, with which ranges. It depends on numpy only, so the sidecar can import it without
the simulator.

The contract is versioned: :attr:`ObservationContract.version` and :attr:`ActionContract.version`
change whenever a feature or knob changes meaning, and an exported policy carries both.

Observation v2 describes one fleet: its pools by name, its nominal capacity and replica caps are
part of the contract. Observation v3 (:func:`fleet_independent_contract`) describes any fleet:
pools are grouped by role (:data:`ROLES`, from their tier), every per-role signal is relative to
the role's replicas or measured capacity, and the fleet's numbers (capacities, replica caps) are
given at run time as a :class:`FleetShape`, so one policy can govern fleets of different sizes.
A role the fleet lacks has its features fixed at 0 and its ``present`` feature 0 (masked). The
action contract is the same for both (v1): its knobs already mean the same on every fleet
(admission relative to the fleet's capacity, knobs without a counterpart held neutral); with v3
the replica knobs are named by role.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np

OBSERVATION_VERSION = "budgetpilot.observation/v2"
#: The fleet-independent observation contract (see the module docstring).
OBSERVATION_VERSION_V3 = "budgetpilot.observation/v3"
ACTION_VERSION = "budgetpilot.action/v1"

#: Burn rates are observed as log2(1 + burn rate), clipped here: 2**8 - 1 = 255x burn.
MAX_LOG_BURN = 8.0
#: Alert states as numbers: no alert, ticket, page.
ALERT_LEVELS = {"none": 0.0, "ticket": 0.5, "page": 1.0}


@dataclass(frozen=True)
class KnobSpec:
    """One control knob: its range, how the policy's [-1, 1] maps onto it, and its real counterpart.

    Parameters
    ----------
    name:
        Knob name, as in :class:`envs.sim.knobs.Knobs` and the sidecar's decisions.
    low, high:
        The range of the knob in its own unit.
    scale:
        ``"linear"`` or ``"log"`` (geometric between ``low`` and ``high``, for knobs spanning
        orders of magnitude).
    counterpart:
        The real-world setting an operator changes for it.
    integer:
        Whether the knob takes whole values (rounded after mapping).
    """

    name: str
    low: float
    high: float
    scale: Literal["linear", "log"] = "linear"
    counterpart: str = ""
    integer: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(
                f"knob {self.name!r}: low ({self.low}) must be below high ({self.high})"
            )
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"knob {self.name!r}: a log-scaled knob needs low > 0, got {self.low}")

    def from_unit(self, unit: float) -> float:
        """Map a policy output in [-1, 1] (clipped; NaN is the midpoint) to the knob's range."""
        u = 0.0 if math.isnan(unit) else min(1.0, max(-1.0, float(unit)))
        frac = (u + 1.0) / 2.0
        if self.scale == "log":
            value = math.exp(math.log(self.low) + frac * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + frac * (self.high - self.low)
        value = min(self.high, max(self.low, value))
        return float(round(value)) if self.integer else value

    def to_unit(self, value: float) -> float:
        """Map a knob value back to [-1, 1] (clipped to the range first)."""
        v = min(self.high, max(self.low, float(value)))
        if self.scale == "log":
            frac = (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        else:
            frac = (v - self.low) / (self.high - self.low)
        return 2.0 * frac - 1.0


#: The knobs of the v1 action contract, in action-vector order.
DEFAULT_KNOBS: tuple[KnobSpec, ...] = (
    KnobSpec(
        "cheap_tier_share", 0.0, 0.8,
        counterpart="router weights to the cheap model (llm-d InferenceModelRewrite, RouteLLM "
        "threshold)",
    ),
    KnobSpec(
        "offload_fraction", 0.0, 0.5,
        counterpart="share of decode KV cache and attention moved to host memory (NEO-style CPU "
        "offload; vLLM KV offloading)",
    ),
    KnobSpec(
        "admission_limit", 0.3, 3.0, scale="log",
        counterpart="gateway rate limit as a multiple of the fleet's nominal capacity (flow "
        "control token bucket); the top of the range leaves admission effectively open",
    ),
    KnobSpec(
        "shed_priority_below", 0.0, 2.0, integer=True,
        counterpart="shed requests whose InferenceObjective priority is below this level "
        "(0 sheds nobody)",
    ),
    KnobSpec(
        "max_context_tokens", 1024.0, 16384.0, scale="log",
        counterpart="prompt truncation limit (vLLM truncate_prompt_tokens)",
    ),
    KnobSpec(
        "max_num_seqs_scale", 0.25, 1.0,
        counterpart="batch limit as a fraction of the engine's max_num_seqs (vLLM --max-num-seqs)",
    ),
    KnobSpec(
        "low_priority_weight", 0.05, 1.0, scale="log",
        counterpart="queue weight of the lowest-priority tenant against the others (QLM-style "
        "weighted fair queueing; InferenceObjective priority)",
    ),
)  # fmt: skip


#: The knob settings of an untouched vLLM fleet: no routing, no offload, open admission, no
#: shedding, no truncation below the model's context, full batches, equal tenant weights.
NEUTRAL_KNOB_VALUES: dict[str, float] = {
    "cheap_tier_share": 0.0,
    "offload_fraction": 0.0,
    "admission_limit": 3.0,
    "shed_priority_below": 0.0,
    "max_context_tokens": 16384.0,
    "max_num_seqs_scale": 1.0,
    "low_priority_weight": 1.0,
}

#: Replica knobs (elastic fleets): the largest relative change of a pool's desired replicas in
#: one control interval, and the dead band below which a change is ignored.
REPLICA_CHANGE_LIMIT = 0.5
REPLICA_CHANGE_DEAD_BAND = 0.1
#: The replica knobs' neutral value: keep the desired replicas.
REPLICA_CHANGE_NEUTRAL = 0.0
#: A replica knob is named after its pool with this suffix (``strong_replicas_change``).
REPLICAS_KNOB_SUFFIX = "_replicas_change"


def replicas_knob_name(pool: str) -> str:
    """Name of the knob that scales ``pool`` (``strong_replicas_change``)."""
    return f"{pool}{REPLICAS_KNOB_SUFFIX}"


def replicas_knob(pool: str) -> KnobSpec:
    """The knob that scales ``pool``: a relative change of its desired replicas per control
    interval, in [-:data:`REPLICA_CHANGE_LIMIT`, +:data:`REPLICA_CHANGE_LIMIT`] (see
    :func:`next_desired_replicas`)."""
    return KnobSpec(
        replicas_knob_name(pool),
        -REPLICA_CHANGE_LIMIT,
        REPLICA_CHANGE_LIMIT,
        counterpart="desired replicas of the pool's Deployment (HPA/KEDA target); relative "
        "change per control interval",
    )


def elastic_knobs(pools: Sequence[str]) -> tuple[KnobSpec, ...]:
    """The knobs of an elastic fleet: :data:`DEFAULT_KNOBS`, then one replica knob per pool."""
    return DEFAULT_KNOBS + tuple(replicas_knob(p) for p in pools)


def neutral_knob_values(knob_names: Sequence[str]) -> dict[str, float]:
    """Neutral values of the given knobs: :data:`NEUTRAL_KNOB_VALUES`, and
    :data:`REPLICA_CHANGE_NEUTRAL` for replica knobs (the replicas stay where they are)."""
    values = {}
    for name in knob_names:
        if name in NEUTRAL_KNOB_VALUES:
            values[name] = NEUTRAL_KNOB_VALUES[name]
        elif name.endswith(REPLICAS_KNOB_SUFFIX):
            values[name] = REPLICA_CHANGE_NEUTRAL
        else:
            raise KeyError(f"knob {name!r} has no neutral value")
    return values


def next_desired_replicas(desired: int, change: float, max_replicas: int) -> int:
    """The desired replicas after a replica knob's ``change``.

    A change inside the dead band (``|change| <`` :data:`REPLICA_CHANGE_DEAD_BAND`, or NaN)
    keeps ``desired``; any other moves it by ``max(1, round(|change| * desired))`` replicas in
    the change's direction (rounding halves up), within ``[1, max_replicas]``.
    """
    if not abs(change) >= REPLICA_CHANGE_DEAD_BAND:  # NaN too
        return int(desired)
    step = max(1, math.floor(abs(change) * desired + 0.5))
    moved = desired + step if change > 0 else desired - step
    return int(min(max_replicas, max(1, moved)))


def replica_change_toward(desired: int, target: int) -> float:
    """The replica knob value that moves ``desired`` replicas toward ``target`` as far as one
    control interval allows (:func:`next_desired_replicas` inverted): 0 when they are equal."""
    if target == desired:
        return REPLICA_CHANGE_NEUTRAL
    relative = (target - desired) / max(desired, 1)
    magnitude = min(REPLICA_CHANGE_LIMIT, max(REPLICA_CHANGE_DEAD_BAND, abs(relative)))
    return math.copysign(magnitude, relative)


def _digest(payload: Mapping) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ActionContract:
    """The action vector: one entry per knob, each in [-1, 1]."""

    knobs: tuple[KnobSpec, ...] = DEFAULT_KNOBS
    version: str = ACTION_VERSION

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def decode(self, action: Sequence[float] | np.ndarray) -> dict[str, float]:
        """Map a policy's action vector to knob values (always within the knobs' ranges)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape[0] != len(self.knobs):
            raise ValueError(
                f"action has {action.shape[0]} entries, the contract {len(self.knobs)}"
            )
        return {k.name: k.from_unit(a) for k, a in zip(self.knobs, action, strict=True)}

    def encode(self, values: Mapping[str, float]) -> np.ndarray:
        """Map knob values to the action vector that decodes to them."""
        missing = [k.name for k in self.knobs if k.name not in values]
        if missing:
            raise KeyError(f"knob values missing for {missing}")
        return np.array([k.to_unit(values[k.name]) for k in self.knobs], dtype=np.float32)

    def to_dict(self) -> dict:
        return {"version": self.version, "knobs": [asdict(k) for k in self.knobs]}

    @classmethod
    def from_dict(cls, data: Mapping) -> ActionContract:
        return cls(knobs=tuple(KnobSpec(**k) for k in data["knobs"]), version=data["version"])

    @property
    def digest(self) -> str:
        return _digest(self.to_dict())


#: Per-pool fleet signals, each readable from real engines' metrics (vLLM gauges and counters),
#: with the range each is clipped to.
POOL_FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "kv_usage_mean": (0.0, 1.0),
    "kv_usage_max": (0.0, 1.0),
    "waiting_per_replica": (0.0, 12.0),
    "running_per_replica": (0.0, 1.0),
    "healthy_fraction": (0.0, 1.0),
}
FLEET_FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "arrival_rate_trend": (-8.0, 8.0),
    "load_per_capacity": (0.0, 20.0),
    "preemptions_per_replica_s": (0.0, 12.0),
}
POOL_FEATURES: tuple[str, ...] = (
    "kv_usage_mean",  # mean of vllm:kv_cache_usage_perc over the pool's healthy replicas
    "kv_usage_max",
    "waiting_per_replica",  # log1p of vllm:num_requests_waiting per healthy replica
    "running_per_replica",  # vllm:num_requests_running per replica / max_num_seqs
    "healthy_fraction",  # replicas answering their scrape / replicas serving or draining
)
#: Per-pool replica counts of elastic fleets (:attr:`ObservationContract.max_replicas`), each
#: divided by the pool's ``max_replicas``.
REPLICA_FEATURES: tuple[str, ...] = (
    "replicas_serving",  # ready pods of the pool's Deployment
    "replicas_provisioning",  # pods scaled up, not ready yet (node, weights, engine start)
    "replicas_draining",  # pods terminating: finishing their requests, taking no new ones
    "replicas_desired",  # the Deployment's spec.replicas
)
REPLICA_FEATURE_BOUNDS: dict[str, tuple[float, float]] = dict.fromkeys(REPLICA_FEATURES, (0.0, 1.0))
#: Fleet-wide signals.
FLEET_FEATURES: tuple[str, ...] = (
    "arrival_rate_trend",  # log2(arrivals in the last interval / mean over the last hour), clipped
    "load_per_capacity",  # arrivals per second / the fleet's nominal capacity
    "preemptions_per_replica_s",  # log1p of vllm:num_preemptions_total rate per replica
)

#: Pool roles of the v3 contract: the strong tier (tier 0) and the cheap one (every other tier,
#: where the router downgrades to).
ROLES: tuple[str, ...] = ("strong", "cheap")
#: Per-role signals of the v3 contract, beyond :data:`POOL_FEATURES` (over the role's pools).
ROLE_FEATURES: tuple[str, ...] = (
    "present",  # 1 when the fleet has a pool of this role, 0 when its features are masked
    "capacity_share",  # the role's measured capacity / the fleet's nominal capacity
    "queue_s",  # log1p of the role's waiting requests / its capacity: seconds of queue
)
ROLE_FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "present": (0.0, 1.0),
    "capacity_share": (0.0, 16.0),
    "queue_s": (0.0, 12.0),
}


def role_of_tier(tier: int) -> str:
    """The v3 role of a pool of ``tier``: ``strong`` for tier 0, else ``cheap``."""
    return ROLES[0] if tier == 0 else ROLES[1]


@dataclass(frozen=True)
class FleetShape:
    """The numbers of the governed fleet a v3 observation is relative to, by role
    (:data:`ROLES` order).

    Parameters
    ----------
    capacity_rps:
        The fleet's nominal capacity (requests/s its strong tier serves saturated).
    role_capacity_rps:
        Requests/s each role serves saturated (0 for a role the fleet lacks).
    role_max_replicas:
        Most replicas each role may have (its pools' replica slots; 0 for a role it lacks).
    """

    capacity_rps: float
    role_capacity_rps: tuple[float, ...]
    role_max_replicas: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.capacity_rps > 0:
            raise ValueError(f"capacity_rps must be > 0, got {self.capacity_rps}")
        for name in ("role_capacity_rps", "role_max_replicas"):
            if len(getattr(self, name)) != len(ROLES):
                raise ValueError(f"{name} must give one value per role {list(ROLES)}")

    def present(self, role: int) -> bool:
        """Whether the fleet has a pool of role ``role`` (an index into :data:`ROLES`)."""
        return self.role_max_replicas[role] > 0


@dataclass(frozen=True)
class FleetSignals:
    """The non-budget part of an observation, produced by the simulator or by scraped metrics.

    ``pools`` maps each pool name to its :data:`POOL_FEATURES` values (already in the scale the
    comments above give); ``fleet`` maps :data:`FLEET_FEATURES` to values.
    """

    pools: Mapping[str, Mapping[str, float]]
    fleet: Mapping[str, float]


class ReplicaLifecycle(IntEnum):
    """Lifecycle state of a replica in :class:`ReplicaGauges` (the codes of
    ``envs.sim.ReplicaState``). On Kubernetes: no pod, a pod not ready yet, a ready pod, a
    terminating pod."""

    STOPPED = 0
    PROVISIONING = 1
    SERVING = 2
    DRAINING = 3


#: Replicas that hold requests and answer scrapes: the ones the load features describe.
_REPORTING = (ReplicaLifecycle.SERVING, ReplicaLifecycle.DRAINING)


@dataclass(frozen=True)
class ReplicaGauges:
    """What each replica reports now, as arrays indexed by replica.

    The simulator fills them from :class:`envs.sim.FleetStats`; the sidecar from each engine's
    ``/metrics`` (a replica that does not answer its scrape is not ``healthy``).

    Parameters
    ----------
    pool:
        Index of the replica's pool in :attr:`ObservationContract.pools`.
    healthy:
        Whether the replica serves (answers its scrape).
    kv_usage:
        KV-cache usage now, in [0, 1] (``vllm:kv_cache_usage_perc``).
    kv_usage_mean:
        KV-cache usage averaged over the last control interval (the sidecar, which samples the
        gauge, passes the mean of its samples).
    waiting, running:
        Requests queued and running (``vllm:num_requests_waiting`` / ``..._running``).
    max_num_seqs:
        The batch limit in force (engines do not export it: the sidecar knows it from config).
    lifecycle:
        Each replica's :class:`ReplicaLifecycle` (``None``: all serving, a fixed fleet).
        Stopped and provisioning replicas hold no requests: the load features leave them out.
    pool_desired:
        Desired replicas of each pool of :attr:`ObservationContract.pools` (the Deployments'
        ``spec.replicas``). An elastic contract needs it and ``lifecycle``.
    """

    pool: np.ndarray
    healthy: np.ndarray
    kv_usage: np.ndarray
    kv_usage_mean: np.ndarray
    waiting: np.ndarray
    running: np.ndarray
    max_num_seqs: np.ndarray
    lifecycle: np.ndarray | None = None
    pool_desired: np.ndarray | None = None


class FleetSignalTracker:
    """Turns per-interval replica gauges and counts into :class:`FleetSignals`.

    The environment and the sidecar both use it, which is what makes a policy see the same
    features in training and in production. It keeps the last hour of arrival rates (for the
    trend feature).

    Parameters
    ----------
    contract:
        The observation contract (pool names and the nominal capacity).
    control_interval_s:
        Seconds between two :meth:`update` calls.
    shape:
        The fleet's capacities and replica caps by role: required by a v3 contract (whose
        gauges give each replica's role as its ``pool``), unused by v2.
    """

    def __init__(
        self,
        contract: ObservationContract,
        control_interval_s: float,
        shape: FleetShape | None = None,
    ) -> None:
        if control_interval_s <= 0:
            raise ValueError(f"control_interval_s must be > 0, got {control_interval_s}")
        if contract.by_role and shape is None:
            raise ValueError(f"a {contract.version} contract needs the fleet's FleetShape")
        self.contract = contract
        self.shape = shape
        self.capacity_rps = (
            shape.capacity_rps if contract.by_role else contract.nominal_capacity_rps
        )
        self.control_interval_s = float(control_interval_s)
        self._rates: deque[float] = deque(maxlen=max(1, int(3600.0 / control_interval_s)))

    def reset(self) -> None:
        self._rates.clear()

    def update(self, gauges: ReplicaGauges, arrivals: float, preemptions: float) -> FleetSignals:
        """Signals for the interval that just ended.

        Parameters
        ----------
        gauges:
            Every configured replica's gauges.
        arrivals, preemptions:
            Requests that arrived and preemptions that happened during the interval.
        """
        # Fleets are small (tens of replicas): plain Python beats many tiny numpy calls here.
        columns = [
            np.asarray(a).tolist()
            for a in (gauges.pool, gauges.healthy, gauges.kv_usage, gauges.kv_usage_mean)
            + (gauges.waiting, gauges.running, gauges.max_num_seqs)
        ]
        replicas = list(zip(*columns, strict=True))
        lifecycle = self._lifecycle(gauges)
        reporting = [r for r, state in zip(replicas, lifecycle, strict=True) if state in _REPORTING]
        pools = {
            name: _pool_features([r for r in reporting if r[0] == p])
            for p, name in enumerate(self.contract.pools)
        }
        if self.contract.by_role:
            for r, name in enumerate(self.contract.pools):
                pools[name] |= _role_features([x for x in reporting if x[0] == r], self.shape, r)
        if self.contract.elastic:
            desired = self._pool_desired(gauges)
            for p, name in enumerate(self.contract.pools):
                states = [s for r, s in zip(replicas, lifecycle, strict=True) if r[0] == p]
                cap = self._max_replicas(p)
                pools[name] |= _replica_features(states, desired[p], cap)
        rate = max(float(arrivals), 0.0) / self.control_interval_s
        self._rates.append(rate)
        mean_rate = sum(self._rates) / len(self._rates)
        per_replica_s = max(float(preemptions), 0.0) / max(len(reporting), 1)
        fleet = {
            "arrival_rate_trend": math.log2((rate + 1e-3) / (mean_rate + 1e-3)),
            "load_per_capacity": rate / self.capacity_rps,
            "preemptions_per_replica_s": math.log1p(per_replica_s / self.control_interval_s),
        }
        return FleetSignals(pools=pools, fleet=fleet)

    def _max_replicas(self, pool: int) -> int:
        """The replica cap the replica features of contract pool ``pool`` are relative to (a
        role the fleet lacks: 1, its features are 0 anyway)."""
        if self.contract.by_role:
            return max(self.shape.role_max_replicas[pool], 1)
        return self.contract.max_replicas[pool]

    def _lifecycle(self, gauges: ReplicaGauges) -> list[int]:
        """Each replica's lifecycle state (all serving when the gauges do not say)."""
        n = len(gauges.pool)
        if gauges.lifecycle is None:
            if self.contract.elastic:
                raise ValueError("an elastic observation contract needs ReplicaGauges.lifecycle")
            return [ReplicaLifecycle.SERVING] * n
        lifecycle = np.asarray(gauges.lifecycle).tolist()
        if len(lifecycle) != n:
            raise ValueError(f"ReplicaGauges.lifecycle has {len(lifecycle)} entries, not {n}")
        return lifecycle

    def _pool_desired(self, gauges: ReplicaGauges) -> list[float]:
        """The desired replicas of every contract pool."""
        if gauges.pool_desired is None:
            raise ValueError("an elastic observation contract needs ReplicaGauges.pool_desired")
        desired = np.asarray(gauges.pool_desired, dtype=np.float64).tolist()
        if len(desired) != len(self.contract.pools):
            raise ValueError(
                f"ReplicaGauges.pool_desired has {len(desired)} entries, one per pool "
                f"{list(self.contract.pools)} expected"
            )
        return desired


def _replica_features(states: list[int], desired: float, max_replicas: int) -> dict[str, float]:
    """:data:`REPLICA_FEATURES` of one pool from its replicas' lifecycle states."""
    return {
        "replicas_serving": states.count(ReplicaLifecycle.SERVING) / max_replicas,
        "replicas_provisioning": states.count(ReplicaLifecycle.PROVISIONING) / max_replicas,
        "replicas_draining": states.count(ReplicaLifecycle.DRAINING) / max_replicas,
        "replicas_desired": desired / max_replicas,
    }


def _role_features(replicas: list[tuple], shape: FleetShape, role: int) -> dict[str, float]:
    """:data:`ROLE_FEATURES` of one role from its reporting replicas' rows (as
    :func:`_pool_features` reads them); all 0 for a role the fleet lacks."""
    capacity = shape.role_capacity_rps[role]
    if not shape.present(role) or capacity <= 0:
        return dict.fromkeys(ROLE_FEATURES, 0.0)
    return {
        "present": 1.0,
        "capacity_share": capacity / shape.capacity_rps,
        "queue_s": math.log1p(sum(r[4] for r in replicas) / capacity),
    }


def _pool_features(replicas: list[tuple]) -> dict[str, float]:
    """Features of one pool from its replicas' ``(pool, healthy, kv_usage, kv_usage_mean,
    waiting, running, max_num_seqs)`` rows."""
    healthy = [r for r in replicas if r[1]]
    waiting = math.log1p(sum(r[4] for r in replicas) / max(len(healthy), 1))
    if not healthy:
        return dict.fromkeys(POOL_FEATURES, 0.0) | {"waiting_per_replica": waiting}
    n = len(healthy)
    return {
        "kv_usage_mean": sum(r[3] for r in healthy) / n,
        "kv_usage_max": max(r[2] for r in healthy),
        "waiting_per_replica": waiting,
        "running_per_replica": sum(r[5] / max(r[6], 1) for r in healthy) / n,
        "healthy_fraction": n / len(replicas),
    }


@dataclass(frozen=True)
class ObservationContract:
    """The observation vector, feature by feature.

    Parameters
    ----------
    slo_names:
        The SLOs of the spec the policy governs, in order.
    windows:
        Burn-rate windows observed for each SLO (names such as ``"5m"``), in order.
    pools:
        Replica pools whose signals are observed (``"strong"``, ``"cheap"``).
    knob_names:
        Knobs whose current setting is part of the observation (in [-1, 1]).
    spec_digest:
        Hash of the SLO spec the contract was built for: a policy refuses another spec.
    nominal_capacity_rps:
        Requests/s the fleet is sized for: the load feature (and the ``admission_limit`` knob)
        are relative to it.
    max_replicas:
        For an elastic fleet, the most replicas each pool may have (in :attr:`pools` order):
        every pool then also has the :data:`REPLICA_FEATURES`, relative to it. Empty (the
        default): a fixed fleet, without them. Always empty in v3.
    scales:
        v3 only: the pools scale, every role has the :data:`REPLICA_FEATURES`, relative to the
        live fleet's caps (:class:`FleetShape`).

    With ``version`` :data:`OBSERVATION_VERSION_V3` (see :func:`fleet_independent_contract`)
    ``pools`` are the :data:`ROLES`, each with the :data:`ROLE_FEATURES` too, and neither
    ``nominal_capacity_rps`` nor ``max_replicas`` is part of the contract: the fleet gives them
    at run time.
    """

    slo_names: tuple[str, ...]
    windows: tuple[str, ...] = ("5m", "30m", "1h", "6h", "1d")
    pools: tuple[str, ...] = ("strong", "cheap")
    knob_names: tuple[str, ...] = tuple(k.name for k in DEFAULT_KNOBS)
    spec_digest: str = ""
    nominal_capacity_rps: float = 1.0
    version: str = OBSERVATION_VERSION
    max_replicas: tuple[int, ...] = ()
    scales: bool = False
    feature_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.by_role and (tuple(self.pools) != ROLES or self.max_replicas):
            raise ValueError(
                f"a {OBSERVATION_VERSION_V3} contract observes the roles {list(ROLES)} and has "
                "no max_replicas (the fleet gives its caps)"
            )
        if self.scales and not self.by_role:
            raise ValueError(f"scales is a {OBSERVATION_VERSION_V3} setting; v2 has max_replicas")
        if not self.nominal_capacity_rps > 0:
            raise ValueError(f"nominal_capacity_rps must be > 0, got {self.nominal_capacity_rps}")
        caps = tuple(int(n) for n in self.max_replicas)
        if caps and (len(caps) != len(self.pools) or min(caps) < 1):
            raise ValueError(
                f"max_replicas must give one count >= 1 per pool {list(self.pools)}, got "
                f"{list(self.max_replicas)}"
            )
        object.__setattr__(self, "max_replicas", caps)
        names: list[str] = []
        for slo in self.slo_names:
            names += [f"slo.{slo}.log_burn_rate.{w}" for w in self.windows]
            names += [f"slo.{slo}.budget_remaining", f"slo.{slo}.alert"]
        names += [f"pool.{p}.{f}" for p in self.pools for f in self.pool_features]
        names += [f"fleet.{f}" for f in FLEET_FEATURES]
        names += [f"knob.{k}" for k in self.knob_names]
        object.__setattr__(self, "feature_names", tuple(names))
        object.__setattr__(self, "_bounds", self._feature_bounds())

    @property
    def by_role(self) -> bool:
        """Whether the pools are roles, fleet-independent (v3)."""
        return self.version == OBSERVATION_VERSION_V3

    @property
    def elastic(self) -> bool:
        """Whether the pools scale (and the replica features are observed)."""
        return bool(self.max_replicas) or self.scales

    @property
    def pool_features(self) -> tuple[str, ...]:
        """The features of every pool (role), in order."""
        roles = ROLE_FEATURES if self.by_role else ()
        return POOL_FEATURES + roles + (REPLICA_FEATURES if self.elastic else ())

    @property
    def size(self) -> int:
        return len(self.feature_names)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``(low, high)`` range of every feature (observations are clipped to it)."""
        low, high = self._bounds
        return low.copy(), high.copy()

    def _feature_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        per_slo = [(0.0, MAX_LOG_BURN)] * len(self.windows) + [(-1.0, 1.0), (0.0, 1.0)]
        ranges = per_slo * len(self.slo_names)
        bounds = POOL_FEATURE_BOUNDS | ROLE_FEATURE_BOUNDS | REPLICA_FEATURE_BOUNDS
        ranges += [bounds[f] for _ in self.pools for f in self.pool_features]
        ranges += [FLEET_FEATURE_BOUNDS[f] for f in FLEET_FEATURES]
        ranges += [(-1.0, 1.0)] * len(self.knob_names)
        low, high = np.array(ranges, dtype=np.float32).T
        return low, high

    def build(
        self,
        burn_rates: np.ndarray,
        budget_remaining: np.ndarray,
        alert_levels: np.ndarray,
        signals: FleetSignals,
        knob_units: Mapping[str, float],
    ) -> np.ndarray:
        """Assemble the float32 observation.

        Parameters
        ----------
        burn_rates:
            ``[n_slo, n_windows]`` burn rates in the contract's SLO and window order (NaN, when a
            window saw no request, is observed as 0: nothing was spent).
        budget_remaining:
            ``[n_slo]`` fraction of the period's budget left (may be negative when overspent).
        alert_levels:
            ``[n_slo]`` values of :data:`ALERT_LEVELS`.
        signals:
            Fleet signals for every pool of the contract.
        knob_units:
            The knobs in force, each in [-1, 1].
        """
        n_windows = len(self.windows)
        per_slo = np.empty((len(self.slo_names), n_windows + 2))
        # fmax maps NaN (a window without requests: nothing spent) to 0.
        per_slo[:, :n_windows] = np.log2(1.0 + np.fmax(burn_rates, 0.0))
        # np.where, not np.nan_to_num (5x its cost on arrays this small); infinities are
        # clipped below as nan_to_num's largest floats would be.
        per_slo[:, n_windows] = np.where(np.isnan(budget_remaining), 1.0, budget_remaining)
        per_slo[:, n_windows + 1] = alert_levels
        rest = [signals.pools[p][f] for p in self.pools for f in self.pool_features]
        rest += [signals.fleet[f] for f in FLEET_FEATURES]
        rest += [knob_units[k] for k in self.knob_names]
        obs = np.concatenate([per_slo.reshape(-1), np.array(rest, dtype=np.float64)])
        return np.clip(np.where(np.isnan(obs), 0.0, obs), *self._bounds).astype(np.float32)

    def to_dict(self) -> dict:
        data = {
            "version": self.version,
            "slo_names": list(self.slo_names),
            "windows": list(self.windows),
            "pools": list(self.pools),
            "knob_names": list(self.knob_names),
            "spec_digest": self.spec_digest,
            "nominal_capacity_rps": self.nominal_capacity_rps,
            "feature_names": list(self.feature_names),
        }
        if self.by_role:  # fleet-independent: the fleet's numbers are given at run time
            del data["nominal_capacity_rps"]
            data["scales"] = self.scales
        elif self.elastic:  # absent for fixed fleets: their dicts and digests stay as they were
            data["max_replicas"] = list(self.max_replicas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ObservationContract:
        contract = cls(
            slo_names=tuple(data["slo_names"]),
            windows=tuple(data["windows"]),
            pools=tuple(data["pools"]),
            knob_names=tuple(data["knob_names"]),
            spec_digest=data.get("spec_digest", ""),
            nominal_capacity_rps=float(data.get("nominal_capacity_rps", 1.0))
            if data["version"] == OBSERVATION_VERSION_V3
            else float(data["nominal_capacity_rps"]),
            version=data["version"],
            max_replicas=tuple(data.get("max_replicas", ())),
            scales=bool(data.get("scales", False)),
        )
        if "feature_names" in data and list(data["feature_names"]) != list(contract.feature_names):
            raise ValueError("observation contract: feature_names do not match its definition")
        return contract

    @property
    def digest(self) -> str:
        return _digest(self.to_dict())


def fleet_independent_contract(
    slo_names: Sequence[str],
    windows: Sequence[str],
    knob_names: Sequence[str],
    spec_digest: str,
    scales: bool = False,
) -> ObservationContract:
    """The v3 observation contract (:data:`OBSERVATION_VERSION_V3`): pools by role, nothing of
    one fleet's size in it."""
    return ObservationContract(
        slo_names=tuple(slo_names),
        windows=tuple(windows),
        pools=ROLES,
        knob_names=tuple(knob_names),
        spec_digest=spec_digest,
        version=OBSERVATION_VERSION_V3,
        scales=scales,
    )
