"""The fleet simulator: pools of vLLM-like replicas behind a router and an admission gateway.

:class:`Simulator` owns the state of :mod:`envs.sim.kernel` and feeds it, one
:meth:`~Simulator.advance` at a time, with the workload's arrivals (truncated and tiered here,
vectorised) and the replica failures of the interval. It returns the request events of
:mod:`slo.events` for every request that ended in the interval.

Pools scale: every pool has ``max_replicas`` replica slots and a desired replica count
(:meth:`Simulator.set_desired_replicas`). Scaling up provisions stopped slots, which serve after
a provisioning delay; scaling down drains serving replicas, which stop when their requests have
ended. Provisioned replicas cost GPU-seconds from the start of provisioning until they stop
(:attr:`FleetStats.pool_provisioned_gpu_s`); spot-like interruptions take them away after a
notice. :class:`_Lifecycle` keeps the desired counts and the timers of these transitions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from envs.sim import kernel as K
from envs.sim.catalog import Deployment
from envs.sim.config import PoolConfig, SimConfig
from envs.sim.knobs import Knobs
from envs.sim.steptime import StepTimeModel
from envs.sim.workload import Workload
from slo.events import (
    ITL_BUCKETS_S,
    N_ITL_BUCKETS,
    REQUEST_EVENT_DTYPE,
    Outcome,
    Reason,
    empty_events,
)

GiB = 1024**3
_POLICIES = {
    "round-robin": K.ROUND_ROBIN,
    "least-outstanding": K.LEAST_OUTSTANDING,
    "kv-aware": K.KV_AWARE,
}
#: One row per advance call: fleet-wide figures of the interval that call covered.
SERIES_DTYPE = np.dtype(
    [
        ("t", "f8"),
        ("arrivals", "i8"),
        ("served", "i8"),
        ("rejected", "i8"),
        ("aborted", "i8"),
        ("failed", "i8"),
        ("running", "i8"),
        ("waiting", "i8"),
        ("kv_usage_mean", "f8"),
        ("preemptions", "i8"),  # cumulative, like the token counters
        ("prefill_tokens", "i8"),
        ("decode_tokens", "i8"),
        ("healthy", "i8"),  # serving replicas that are up: the ones the router may pick
        ("serving", "i8"),  # serving replicas, up or down
        ("provisioned_gpu_s", "f8"),  # cumulative, fleet-wide
    ]
)


class ReplicaState(IntEnum):
    """Lifecycle state of a replica slot (:attr:`FleetStats.lifecycle`)."""

    STOPPED = K.STOPPED
    PROVISIONING = K.PROVISIONING  # scaled up, not serving yet
    SERVING = K.SERVING
    DRAINING = K.DRAINING  # scaled down or interrupted: finishing its requests, taking no new ones


@dataclass(frozen=True)
class FleetStats:
    """A snapshot of every replica slot (arrays indexed by replica; ``pool`` maps them to pools)
    and of every pool (the ``pool_*`` arrays, indexed like ``pool_names``).

    ``kv_usage_mean`` and ``busy_fraction`` (share of time running iterations) are
    time-weighted over the interval since the previous :meth:`Simulator.fleet_stats` call.
    ``kv_peak_blocks`` is the most blocks any planned iteration used since the capacity last
    changed (it never exceeds ``kv_capacity_blocks``). The counters are cumulative; ``steps``
    counts scheduling points (events of the replica).

    ``lifecycle`` is each slot's :class:`ReplicaState`; only SERVING replicas receive requests
    (and only the ``healthy`` ones among them: failures are independent of the lifecycle).
    Per pool: ``pool_desired`` replicas, the replicas ``pool_provisioning``, ``pool_serving`` and
    ``pool_draining`` now, ``pool_provisioned_gpu_s`` (GPU-seconds of provisioned replicas, from
    the start of provisioning until they stop; cumulative) and ``pool_interruptions`` (spot
    interruptions; cumulative).
    """

    t: float
    pool_names: tuple[str, ...]
    pool: np.ndarray
    tier: np.ndarray
    healthy: np.ndarray
    kv_capacity_blocks: np.ndarray
    kv_used_blocks: np.ndarray
    kv_usage: np.ndarray
    kv_usage_mean: np.ndarray
    kv_peak_blocks: np.ndarray
    busy_fraction: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    swapped: np.ndarray
    max_num_seqs: np.ndarray
    preemptions: np.ndarray
    prefill_tokens: np.ndarray
    decode_tokens: np.ndarray
    iterations: np.ndarray
    steps: np.ndarray
    lifecycle: np.ndarray
    pool_desired: np.ndarray
    pool_provisioning: np.ndarray
    pool_serving: np.ndarray
    pool_draining: np.ndarray
    pool_provisioned_gpu_s: np.ndarray
    pool_interruptions: np.ndarray


def histogram_quantile(q: float, counts: np.ndarray, edges: np.ndarray) -> float:
    """Prometheus ``histogram_quantile``: linear inside the bucket holding quantile ``q``."""
    total = counts.sum()
    if total == 0:
        return math.nan
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, q * total))
    if b >= len(edges):
        return float(edges[-1])
    lo = 0.0 if b == 0 else float(edges[b - 1])
    below = 0 if b == 0 else cum[b - 1]
    return lo + (float(edges[b]) - lo) * (q * total - below) / counts[b]


class RunSummary:
    """Accumulates the request events of a run into the figures ``budgetpilot simulate`` prints."""

    def __init__(self) -> None:
        self.outcomes = np.zeros(len(Outcome), dtype=np.int64)
        self.itl_hist = np.zeros(N_ITL_BUCKETS, dtype=np.int64)
        self.preemptions = 0
        self.truncated = 0
        self.quality_loss = 0.0
        self._ttft: list[np.ndarray] = []
        self._e2e: list[np.ndarray] = []

    def add(self, events: np.ndarray) -> None:
        """Count one batch of request events."""
        self.outcomes += np.bincount(events["outcome"], minlength=len(Outcome))
        self.itl_hist += events["itl_hist"].sum(axis=0, dtype=np.int64)
        self.preemptions += int(events["preemptions"].sum())
        self.truncated += int(events["truncated"].sum())
        served = events[events["outcome"] == Outcome.SERVED]
        self.quality_loss += float(served["quality_loss"].sum(dtype=np.float64))
        self._ttft.append(served["ttft_s"])
        self._e2e.append(served["e2e_s"])

    def figures(self) -> dict[str, float | int | None]:
        """Counts and latency percentiles (seconds) of everything added so far."""
        ttft = np.concatenate(self._ttft) if self._ttft else np.empty(0, np.float32)
        e2e = np.concatenate(self._e2e) if self._e2e else np.empty(0, np.float32)
        edges = np.asarray(ITL_BUCKETS_S)

        def pct(values: np.ndarray, q: float) -> float | None:
            return float(np.percentile(values, q)) if len(values) else None

        def itl(q: float) -> float | None:
            value = histogram_quantile(q, self.itl_hist, edges)
            return None if math.isnan(value) else value

        served = int(self.outcomes[Outcome.SERVED])
        return {
            "ended": int(self.outcomes.sum()),
            "served": served,
            "rejected": int(self.outcomes[Outcome.REJECTED]),
            "aborted": int(self.outcomes[Outcome.ABORTED]),
            "failed": int(self.outcomes[Outcome.FAILED]),
            "truncated": self.truncated,
            "preemptions": self.preemptions,
            "quality_loss_mean": self.quality_loss / served if served else None,
            "ttft_p50_s": pct(ttft, 50),
            "ttft_p90_s": pct(ttft, 90),
            "ttft_p99_s": pct(ttft, 99),
            "itl_p50_s": itl(0.5),
            "itl_p99_s": itl(0.99),
            "e2e_p50_s": pct(e2e, 50),
            "e2e_p99_s": pct(e2e, 99),
        }


class _PoolLayout:
    """Static per-pool and per-replica-slot figures derived from the configuration: each pool
    has ``max_replicas`` slots, the first ``replicas`` of which serve from the start."""

    def __init__(self, config: SimConfig) -> None:
        self.names = tuple(p.name for p in config.pools)
        deployments = [p.deployment() for p in config.pools]
        slots = np.array([p.replica_slots for p in config.pools], dtype=np.int64)
        self.replica_pool = np.repeat(np.arange(len(config.pools), dtype=np.int64), slots)
        rank = np.arange(len(self.replica_pool)) - np.repeat(np.cumsum(slots) - slots, slots)
        initial = np.array([p.replicas for p in config.pools], dtype=np.int64)
        self.initially_serving = rank < initial[self.replica_pool]
        self.replica_tp = np.array([p.tp for p in config.pools], dtype=np.float64)[
            self.replica_pool
        ]
        self.replica_tier = np.array([p.tier for p in config.pools], dtype=np.int64)[
            self.replica_pool
        ]
        self.coeffs = np.stack([StepTimeModel.for_deployment(d).coeffs for d in deployments])
        self.capability = np.array([p.capability for p in config.pools], dtype=np.float64)
        self.pi = np.zeros((len(config.pools), K.N_PI), dtype=np.int64)
        for row, pool, dep in zip(self.pi, config.pools, deployments, strict=True):
            row[K.P_BLOCK_TOKENS] = pool.block_tokens
            row[K.P_GPU_BLOCKS] = dep.kv_capacity_blocks
            row[K.P_HOST_BLOCKS] = self._host_blocks(pool, dep, pool.offload_host_gib)
            row[K.P_SWAP_BLOCKS] = self._host_blocks(pool, dep, pool.swap_space_gib)
            row[K.P_MAX_NUM_SEQS] = pool.max_num_seqs
            row[K.P_MAX_BATCHED_TOKENS] = pool.max_num_batched_tokens
            row[K.P_CHUNKED_PREFILL] = pool.chunked_prefill
            row[K.P_SWAP_PREEMPTION] = pool.preemption_mode == "swap"
            row[K.P_MAX_MODEL_LEN] = pool.max_model_len or dep.kv_capacity_tokens

    @staticmethod
    def _host_blocks(pool: PoolConfig, deployment: Deployment, gib: float | None) -> int:
        """KV blocks that ``gib`` of host memory holds (default: the GPUs' share of host memory,
        less the swap space)."""
        if gib is None:
            nbytes = deployment.gpu.host_memory_bytes * deployment.tp - pool.swap_space_gib * GiB
        else:
            nbytes = gib * GiB
        per_token = deployment.kv_bytes_per_token_per_gpu * deployment.tp
        return max(int(nbytes // per_token) // pool.block_tokens, 0)

    def capacity_blocks(self, offload_fraction: float) -> np.ndarray:
        """KV blocks of each pool when ``offload_fraction`` of every sequence's KV is on the host:
        the GPU holds the rest, until host memory runs out."""
        gpu = self.pi[:, K.P_GPU_BLOCKS]
        if offload_fraction <= 0.0:
            return gpu.copy()
        spread = np.floor(gpu / (1.0 - offload_fraction)).astype(np.int64)
        return np.minimum(spread, gpu + self.pi[:, K.P_HOST_BLOCKS])


def _new_fleet(config: SimConfig, layout: _PoolLayout, slots: int) -> K.Fleet:
    """The kernel state of an empty, healthy fleet with ``slots`` request slots."""
    n_rep = len(layout.replica_pool)
    n_ten = len(config.tenants)
    leaves = 1 << max(n_rep - 1, 0).bit_length()
    tree_r = np.zeros(2 * leaves, dtype=np.int64)
    tree_r[leaves : leaves + n_rep] = np.arange(n_rep)
    ri = np.zeros((n_rep, K.N_RI), dtype=np.int64)
    ri[:, K.R_POOL] = layout.replica_pool
    ri[:, K.R_TIER] = layout.replica_tier
    ri[:, K.R_HEALTHY] = 1
    ri[:, K.R_CAP_BLOCKS] = layout.pi[layout.replica_pool, K.P_GPU_BLOCKS]
    ri[:, [K.R_SW_HEAD, K.R_SW_TAIL]] = -1
    ri[:, K.R_STATE] = np.where(layout.initially_serving, K.SERVING, K.STOPPED)
    rf = np.zeros((n_rep, K.N_RF))
    rf[:, K.R_NEXT_T] = np.inf
    n_tiers = config.n_tiers
    tier_slots = int(np.bincount(layout.replica_tier, minlength=n_tiers).max(initial=0))
    members = np.full((n_tiers, max(tier_slots, 1)), -1, dtype=np.int64)
    tier_i = np.zeros((n_tiers, K.N_TIER_I), dtype=np.int64)
    for tier in range(n_tiers):
        ids = np.flatnonzero((layout.replica_tier == tier) & layout.initially_serving)
        members[tier, : len(ids)] = ids
        tier_i[tier, K.TIER_N_MEMBERS] = len(ids)
    tf = np.zeros((n_ten, K.N_TF))
    tf[:, K.T_WEIGHT] = [t.weight for t in config.tenants]
    tf[:, K.T_PRIORITY] = [t.priority for t in config.tenants]
    tf[:, K.T_PATIENCE] = [t.patience_s for t in config.tenants]
    gf = np.full(K.N_GF, np.inf)
    gf[[K.G_NOW, K.G_BUCKET, K.G_BUCKET_T]] = 0.0
    gi = np.zeros(K.N_GI, dtype=np.int64)
    gi[K.G_FREE_TOP] = slots
    gi[K.G_POLICY] = _POLICIES[config.router.policy]
    gi[K.G_FALLBACK] = config.router.fallback
    width = max(p.max_num_seqs for p in config.pools)
    return K.Fleet(
        qi=np.zeros((slots, K.N_QI), dtype=np.int32),
        qf=np.zeros((slots, K.N_QF)),
        q_hist=np.zeros((slots, N_ITL_BUCKETS), dtype=np.int64),
        q_snap=np.zeros((slots, N_ITL_BUCKETS), dtype=np.int64),
        free=np.arange(slots - 1, -1, -1, dtype=np.int64),
        ri=ri,
        rf=rf,
        running=np.full((n_rep, width), -1, dtype=np.int64),
        wq_head=np.full((n_rep, n_ten), -1, dtype=np.int64),
        wq_tail=np.full((n_rep, n_ten), -1, dtype=np.int64),
        tenant_finish=np.zeros((n_rep, n_ten)),
        cum_hist=np.zeros((n_rep, N_ITL_BUCKETS), dtype=np.int64),
        pi=layout.pi,
        coeffs=layout.coeffs,
        capability=layout.capability.copy(),
        tf=tf,
        members=members,
        tier_i=tier_i,
        gf=gf,
        gi=gi,
        tree_t=np.full(2 * leaves, np.inf),
        tree_r=tree_r,
        itl_edges=np.asarray(ITL_BUCKETS_S, dtype=np.float64),
        scratch=np.zeros(int(layout.pi[:, K.P_BLOCK_TOKENS].max()) + 1, dtype=np.int64),
        out=empty_events(0),
    )


def _grow_slots(fleet: K.Fleet, slots: int) -> K.Fleet:
    """The same fleet with ``slots`` request slots (the new ones free)."""
    old = fleet.qi.shape[0]
    free = int(fleet.gi[K.G_FREE_TOP])
    grown = {}
    for name in ("qi", "qf", "q_hist", "q_snap"):
        array = getattr(fleet, name)
        grown[name] = np.zeros((slots, array.shape[1]), dtype=array.dtype)
        grown[name][:old] = array
    stack = np.empty(slots, dtype=np.int64)
    stack[:free] = fleet.free[:free]
    stack[free : free + slots - old] = np.arange(slots - 1, old - 1, -1)
    fleet.gi[K.G_FREE_TOP] = free + slots - old
    return fleet._replace(free=stack, **grown)


_EMPTY_FAILURES = K.Failures(np.empty(0), np.empty(0, dtype=np.int64), np.empty(0))

# Rows of _Lifecycle.timers, in the order simultaneous transitions apply.
_READY, _DRAIN_END, _NOTICE = range(3)


class _Lifecycle:
    """The scaling side of the replica slots: the desired replicas of every pool and the timers
    of the transitions the simulator decides (a provisioning replica is ready, a drain reaches
    its deadline, a spot interruption gives notice). The kernel holds the states
    (``ri[:, R_STATE]``) and applies every transition.

    Parameters
    ----------
    config: the fleet.
    layout: its replica slots.
    rng_provision: draws the provisioning delays.
    rng_spot: draws the spot interruptions.
    """

    def __init__(
        self,
        config: SimConfig,
        layout: _PoolLayout,
        rng_provision: np.random.Generator,
        rng_spot: np.random.Generator,
    ) -> None:
        pools = config.pools
        self.slot_pool = layout.replica_pool
        self.desired = np.array([p.replicas for p in pools], dtype=np.int64)
        self.cap = np.array([p.replica_slots for p in pools], dtype=np.int64)
        self.interruptions = np.zeros(len(pools), dtype=np.int64)
        self._delay_s = np.array([p.nominal_provisioning_s() for p in pools])
        self._jitter = np.array([p.autoscaling.provision_jitter for p in pools])
        self._drain_s = np.array([p.autoscaling.drain_timeout_s for p in pools])
        self._spot_per_s = np.array([p.autoscaling.spot_rate_per_hour / 3600.0 for p in pools])
        self._notice_s = np.array([p.autoscaling.spot_notice_s for p in pools])
        self._rng_provision, self._rng_spot = rng_provision, rng_spot
        self.timers = np.full((3, len(self.slot_pool)), np.inf)
        self._leaving = np.zeros(len(self.slot_pool), dtype=bool)  # interrupted: taken away
        #: Whether anything may happen besides the kernel's own events: the simulator then
        #: stops the kernel at every transition (a fixed fleet runs the kernel in one go).
        self.active = bool(np.any(self._spot_per_s > 0.0))
        for r in np.flatnonzero(layout.initially_serving):
            self._arm_interruption(r, 0.0)

    def next_event(self) -> tuple[float, int, int]:
        """(time, timer row, slot) of the next transition (time inf if none)."""
        i = int(np.argmin(self.timers))  # ties: by row, then by slot
        row, r = divmod(i, self.timers.shape[1])
        return float(self.timers[row, r]), row, r

    def fire(self, fleet: K.Fleet, row: int, r: int, t: float) -> None:
        """Apply the transition of timer ``row`` of slot ``r``, due at ``t``."""
        self.timers[row, r] = np.inf
        if row == _READY:
            K.transition(fleet, r, t, K.SERVING, 0, 0)
        elif row == _DRAIN_END:
            outcome, reason = (
                (Outcome.FAILED, Reason.REPLICA_FAILURE)
                if self._leaving[r]
                else (Outcome.ABORTED, Reason.TIMEOUT)
            )
            K.transition(fleet, r, t, K.STOPPED, int(outcome), int(reason))
        else:  # a spot interruption: drain for the notice, then go
            p = self.slot_pool[r]
            self.interruptions[p] += 1
            if fleet.ri[r, K.R_STATE] == K.PROVISIONING:  # nothing on it to drain
                K.transition(fleet, r, t, K.STOPPED, 0, 0)
                return
            self._leaving[r] = True
            self.timers[_DRAIN_END, r] = min(self.timers[_DRAIN_END, r], t + self._notice_s[p])
            if fleet.ri[r, K.R_STATE] == K.SERVING:
                K.transition(fleet, r, t, K.DRAINING, 0, 0)

    def reconcile(self, fleet: K.Fleet, t: float) -> None:
        """Bring every pool's provisioning and serving replicas to its desired count at ``t``,
        as far as its replica slots allow."""
        self._forget_stopped(fleet)
        state = fleet.ri[:, K.R_STATE]
        for p, desired in enumerate(self.desired):
            slots = np.flatnonzero(self.slot_pool == p)
            active = slots[(state[slots] == K.PROVISIONING) | (state[slots] == K.SERVING)]
            if len(active) < desired:
                self._scale_up(fleet, slots, desired - len(active), t)
            elif len(active) > desired:
                self._scale_down(fleet, active, len(active) - desired, t)
        self._forget_stopped(fleet)

    def _forget_stopped(self, fleet: K.Fleet) -> None:
        """Clear the timers of the slots that stopped."""
        stopped = fleet.ri[:, K.R_STATE] == K.STOPPED
        self.timers[:, stopped] = np.inf
        self._leaving[stopped] = False

    def _scale_up(self, fleet: K.Fleet, slots: np.ndarray, n: int, t: float) -> None:
        """Add ``n`` replicas among ``slots``: draining ones serve again at once (unless they
        are being taken away), then stopped slots start provisioning, healthy ones first."""
        ri = fleet.ri
        state = ri[slots, K.R_STATE]
        undrain = slots[(state == K.DRAINING) & ~self._leaving[slots]][:n]
        for r in undrain:
            self.timers[_DRAIN_END, r] = np.inf
            K.transition(fleet, r, t, K.SERVING, 0, 0)
        stopped = slots[state == K.STOPPED]
        order = np.argsort(ri[stopped, K.R_HEALTHY] == 0, kind="stable")
        for r in stopped[order][: n - len(undrain)]:
            p = self.slot_pool[r]
            delay = self._delay_s[p] * self._rng_provision.lognormal(0.0, self._jitter[p])
            self.timers[_READY, r] = t + delay
            self._arm_interruption(r, t)
            K.transition(fleet, r, t, K.PROVISIONING, 0, 0)

    def _scale_down(self, fleet: K.Fleet, active: np.ndarray, n: int, t: float) -> None:
        """Remove ``n`` of the ``active`` replicas: cancel provisioning ones (the latest to be
        ready first), then drain serving ones: failed first, then the least loaded, the newest
        slot first among equals."""
        ri = fleet.ri
        provisioning = active[ri[active, K.R_STATE] == K.PROVISIONING]
        cancel = provisioning[np.argsort(-self.timers[_READY, provisioning], kind="stable")][:n]
        for r in cancel:
            K.transition(fleet, r, t, K.STOPPED, 0, 0)
        serving = active[ri[active, K.R_STATE] == K.SERVING]
        order = np.lexsort((-serving, ri[serving, K.R_OUTSTANDING], ri[serving, K.R_HEALTHY]))
        for r in serving[order][: n - len(cancel)]:
            self.timers[_DRAIN_END, r] = t + self._drain_s[self.slot_pool[r]]
            K.transition(fleet, r, t, K.DRAINING, 0, 0)  # stops at once if it is empty

    def _arm_interruption(self, r: int, t: float) -> None:
        """Draw when the replica provisioned in slot ``r`` at ``t`` gets a spot notice."""
        rate = self._spot_per_s[self.slot_pool[r]]
        if rate > 0.0:
            self.timers[_NOTICE, r] = t + self._rng_spot.exponential(1.0 / rate)


class Simulator:
    """A fleet of LLM serving replicas, advanced in simulated time.

    Between :meth:`advance` calls a governor may turn the knobs (:meth:`set_knobs`), roll out a
    model (:meth:`set_capability`), schedule failures (:meth:`fail_replica`) and scale pools
    (:meth:`set_desired_replicas`); :meth:`fleet_stats` and :meth:`series` report the fleet.

    Parameters
    ----------
    config:
        The fleet, its router, tenants, failures, workload and initial knobs.
    workload:
        The request source; default: built from ``config.workload`` and the tenants' shares
        (a ``load`` taken relative to the fleet's measured capacity, see
        :mod:`envs.sim.capacity`).
    seed:
        Seeds every random draw (arrivals, router noise, failures, provisioning delays, spot
        interruptions; one stream each): the same seed and the same calls give identical events.
    """

    def __init__(self, config: SimConfig, workload: Workload | None = None, seed: int = 0):
        if workload is None and config.workload.load is not None:
            from envs.sim.capacity import with_load_resolved

            config = with_load_resolved(config)
        self.config = config
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
        self._rng_workload, self._rng_router, self._rng_failures = rngs[:3]
        self.workload = workload if workload is not None else config.build_workload()
        self._layout = _PoolLayout(config)
        self._fleet = _new_fleet(config, self._layout, slots=1024)
        self._lifecycle = _Lifecycle(config, self._layout, rngs[3], rngs[4])
        self._tenant_tier = np.array([t.tier for t in config.tenants], dtype=np.int64)
        self._check_timeouts = any(math.isfinite(t.patience_s) for t in config.tenants)
        self._estimates = np.empty(0)  # recent difficulty estimates (downgrade calibration)
        pool = self._layout.replica_pool
        self._mtbf = np.array([p.mtbf_s for p in config.pools])[pool]
        self._mttr = np.array([p.mttr_s for p in config.pools])[pool]
        self._next_failure = self._rng_failures.exponential(self._mtbf)
        self._scheduled: list[tuple[float, int, float]] = []
        for f in config.failures:
            self.fail_replica(f.pool, f.replica, f.at_s, f.duration_s)
        self._series = np.zeros(config.series_rows, dtype=SERIES_DTYPE)
        self._series_n = 0
        self._arrivals_total = 0
        self._stats_mark = self._usage_mark()
        self._series_mark = self._usage_mark()
        self._knobs = config.knobs
        self.set_knobs(config.knobs)

    # ----------------------------------------------------------------------------------------
    # Public API

    @property
    def now(self) -> float:
        """Simulated time (seconds) reached by the last :meth:`advance`."""
        return float(self._fleet.gf[K.G_NOW])

    @property
    def knobs(self) -> Knobs:
        """The knobs in force."""
        return self._knobs

    @property
    def pool_names(self) -> tuple[str, ...]:
        """Pool names, in configuration order."""
        return self._layout.names

    @property
    def arrivals(self) -> int:
        """Requests that arrived since the start (ended, turned away or in flight)."""
        return self._arrivals_total

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet ended."""
        return int(self._fleet.gi[K.G_OUTSTANDING])

    @property
    def desired_replicas(self) -> dict[str, int]:
        """Desired replicas of every pool (provisioning or serving, once the pool has caught
        up)."""
        return dict(zip(self._layout.names, self._lifecycle.desired.tolist(), strict=True))

    def set_desired_replicas(self, pool: str, n: int) -> int:
        """Scale ``pool`` to ``n`` replicas from now on; return the count applied: ``n`` clamped
        to ``[min_replicas, max_replicas]`` (0 leaves the pool's tier to the router's
        fallback).

        Scaling up first returns draining replicas to service (at once), then provisions
        stopped slots: each serves after its provisioning delay (drawn from the simulator's
        seeded stream) and costs GPU-seconds from now. Scaling down first cancels provisioning
        replicas, then drains serving ones (failed, then least loaded, then newest first): a
        draining replica receives no new requests, finishes the ones it holds and stops, or
        aborts them at the pool's ``drain_timeout_s``. The pool keeps its count through spot
        interruptions by provisioning replacements.
        """
        p = self._pool_index(pool)
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise TypeError(f"desired replicas of pool {pool!r} must be an integer, got {n!r}")
        applied = int(min(max(n, self.config.pools[p].min_replicas), self._lifecycle.cap[p]))
        self._lifecycle.desired[p] = applied
        self._lifecycle.active = True
        self._lifecycle.reconcile(self._fleet, self.now)
        return applied

    def set_knobs(self, knobs: Knobs) -> None:
        """Apply ``knobs`` from the current time on (decode runs in progress end with their
        current iteration, so that every replica re-plans under the new settings)."""
        tenants = self.config.tenants
        weights = knobs.tenant_weights
        if weights is not None and len(weights) != len(tenants):
            raise ValueError(
                f"tenant_weights has {len(weights)} entries for {len(tenants)} tenants"
            )
        fleet, now = self._fleet, self.now
        gf = fleet.gf
        rate = knobs.admission_rate_limit
        burst = max(1.0, rate * self.config.admission.burst_s) if math.isfinite(rate) else math.inf
        if math.isfinite(gf[K.K_RATE]):  # bring the bucket up to date under the old rate
            level = min(gf[K.K_BURST], gf[K.G_BUCKET] + (now - gf[K.G_BUCKET_T]) * gf[K.K_RATE])
        else:  # a newly enabled bucket starts full
            level = burst
        gf[K.G_BUCKET] = min(level, burst)
        gf[K.G_BUCKET_T] = now
        gf[K.K_OFFLOAD] = knobs.offload_fraction
        gf[K.K_RATE] = rate
        gf[K.K_BURST] = burst
        gf[K.K_CONCURRENCY] = knobs.concurrency_limit
        gf[K.K_SHED_BELOW] = knobs.shed_priority_below
        gf[K.K_MAX_OUTPUT] = knobs.max_output_tokens
        gf[K.K_SEQS_SCALE] = knobs.max_num_seqs_scale
        gf[K.K_WATERMARK] = knobs.kv_watermark
        fleet.tf[:, K.T_WEIGHT] = weights if weights is not None else [t.weight for t in tenants]
        capacity = self._layout.capacity_blocks(knobs.offload_fraction)[fleet.ri[:, K.R_POOL]]
        changed = capacity != fleet.ri[:, K.R_CAP_BLOCKS]
        fleet.ri[changed, K.R_KV_PEAK] = 0  # the peak is tracked against the capacity in force
        fleet.ri[:, K.R_CAP_BLOCKS] = capacity
        self._knobs = knobs
        K.interrupt_runs(fleet, now)

    def set_capability(self, pool: str, capability: float) -> None:
        """Change the answer quality of ``pool``'s model from now on (a model rollout): requests
        it serves from now are scored with the new capability (see ``quality_loss``)."""
        if not 0.0 <= capability <= 1.0:
            raise ValueError(f"capability must be in [0, 1], got {capability}")
        self._fleet.capability[self._pool_index(pool)] = capability

    def _pool_index(self, pool: str) -> int:
        if pool not in self._layout.names:
            raise ValueError(f"no pool named {pool!r}; pools: {', '.join(self._layout.names)}")
        return self._layout.names.index(pool)

    def fail_replica(self, pool: str, index: int, at_s: float, duration_s: float) -> None:
        """Schedule a failure of replica slot ``index`` of ``pool`` at ``at_s`` for
        ``duration_s``: the requests on it fail, and the router avoids it until it recovers (a
        stopped slot is not affected; a draining replica stops)."""
        ids = np.flatnonzero(self._layout.replica_pool == self._pool_index(pool))
        if not 0 <= index < len(ids):
            raise ValueError(f"pool {pool!r} has {len(ids)} replicas, no replica {index}")
        if at_s < self.now or not duration_s > 0:
            raise ValueError(
                f"failure at {at_s} s for {duration_s} s: needs at_s >= now ({self.now}) "
                "and duration_s > 0"
            )
        self._scheduled.append((float(at_s), int(ids[index]), float(duration_s)))
        self._scheduled.sort()

    def advance(self, until_s: float) -> np.ndarray:
        """Simulate up to ``until_s``; return the events (REQUEST_EVENT_DTYPE, sorted by ``t_end``)
        of the requests that ended in ``(now, until_s]``."""
        start = self.now
        if until_s < start:
            raise ValueError(f"cannot advance backwards: now={start}, until_s={until_s}")
        arrivals = self._arrivals(start, until_s)
        failures = self._failures(until_s)
        n_arr = len(arrivals.t)
        self._arrivals_total += n_arr
        fleet = self._fleet
        free = int(fleet.gi[K.G_FREE_TOP])
        if free < n_arr:
            old = fleet.qi.shape[0]
            fleet = _grow_slots(fleet, max(2 * old, old + n_arr - free))
        fleet = fleet._replace(out=np.empty(self.in_flight + n_arr, REQUEST_EVENT_DTYPE))
        fleet.gi[[K.G_N_OUT, K.G_NEXT_ARRIVAL, K.G_NEXT_FAILURE]] = 0
        self._fleet = fleet
        self._simulate(arrivals, failures, float(until_s))
        events = fleet.out[: fleet.gi[K.G_N_OUT]]
        events = events[np.argsort(events["t_end"], kind="stable")]
        self._record_series(until_s, n_arr, events)
        return events

    def fleet_stats(self) -> FleetStats:
        """Snapshot of every replica; the means cover the time since the previous call."""
        ri = self._fleet.ri
        t0, integral0, busy0 = self._stats_mark
        self._stats_mark = self._usage_mark()
        span = self.now - t0
        cap = np.maximum(ri[:, K.R_CAP_BLOCKS], 1)
        used = ri[:, K.R_USED_BLOCKS]
        if span > 0:
            mean = (self._stats_mark[1] - integral0) / (span * cap)
            busy = (self._stats_mark[2] - busy0) / span
        else:
            mean, busy = used / cap, np.zeros(len(cap))
        pool = ri[:, K.R_POOL]
        seqs = self._layout.pi[pool, K.P_MAX_NUM_SEQS] * self.knobs.max_num_seqs_scale
        state = ri[:, K.R_STATE]
        n_pools = len(self._layout.names)

        def per_pool(in_state: int) -> np.ndarray:
            return np.bincount(pool[state == in_state], minlength=n_pools)

        return FleetStats(
            t=self.now,
            pool_names=self._layout.names,
            pool=pool.copy(),
            tier=ri[:, K.R_TIER].copy(),
            healthy=ri[:, K.R_HEALTHY].astype(bool),
            kv_capacity_blocks=ri[:, K.R_CAP_BLOCKS].copy(),
            kv_used_blocks=used.copy(),
            kv_usage=used / cap,
            kv_usage_mean=mean,
            kv_peak_blocks=ri[:, K.R_KV_PEAK].copy(),
            busy_fraction=busy,
            running=ri[:, K.R_N_RUNNING].copy(),
            waiting=ri[:, K.R_N_WAITING].copy(),
            swapped=ri[:, K.R_N_SWAPPED].copy(),
            max_num_seqs=np.maximum(1, seqs.astype(np.int64)),
            preemptions=ri[:, K.R_PREEMPTIONS].copy(),
            prefill_tokens=ri[:, K.R_PREFILL_TOKENS].copy(),
            decode_tokens=ri[:, K.R_DECODE_TOKENS].copy(),
            iterations=ri[:, K.R_ITERATIONS].copy(),
            steps=ri[:, K.R_STEPS].copy(),
            lifecycle=state.copy(),
            pool_desired=self._lifecycle.desired.copy(),
            pool_provisioning=per_pool(K.PROVISIONING),
            pool_serving=per_pool(K.SERVING),
            pool_draining=per_pool(K.DRAINING),
            pool_provisioned_gpu_s=np.bincount(
                pool, weights=self._provisioned_gpu_s(), minlength=n_pools
            ),
            pool_interruptions=self._lifecycle.interruptions.copy(),
        )

    def series(self) -> np.ndarray:
        """The fleet time series (SERIES_DTYPE, one row per advance), oldest first, at most
        ``series_rows`` rows."""
        n, rows = self._series_n, len(self._series)
        if n <= rows:
            return self._series[:n].copy()
        return np.roll(self._series, -(n % rows))

    def run(
        self,
        hours: float,
        step_s: float = 60.0,
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, float | int | None]:
        """Advance ``hours`` of simulated time in ``step_s`` steps and return summary figures.

        Parameters
        ----------
        hours: simulated hours from now.
        step_s: simulated seconds per advance (events are summarised step by step).
        progress: called with the simulated seconds done after every step.
        """
        summary = RunSummary()
        t_start, wall0 = self.now, time.perf_counter()
        arrivals0, mark = self.arrivals, self._usage_mark()
        end = t_start + hours * 3600.0
        while self.now < end:
            summary.add(self.advance(min(end, self.now + step_s)))
            if progress is not None:
                progress(self.now - t_start)
        span = self.now - t_start
        cap = np.maximum(self._fleet.ri[:, K.R_CAP_BLOCKS], 1).sum()
        # No replica (or no time): no KV to use, so no mean usage rather than 0/0.
        usage = (self._usage_mark()[1] - mark[1]).sum() / (span * cap) if span * cap > 0 else None
        return {
            "requests": self.arrivals - arrivals0,
            **summary.figures(),
            "in_flight": self.in_flight,
            "kv_usage_mean": None if usage is None else float(usage),
            "sim_seconds": span,
            "wall_seconds": time.perf_counter() - wall0,
        }

    # ----------------------------------------------------------------------------------------
    # Internals

    def _simulate(self, arrivals: K.Arrivals, failures: K.Failures, until: float) -> None:
        """Run the kernel to ``until``; with a scaling fleet, stop it at every transition and
        every stop of a draining replica to apply them and bring the pools to their counts."""
        fleet, lifecycle = self._fleet, self._lifecycle
        if not lifecycle.active:
            K.advance(fleet, arrivals, failures, until, self._check_timeouts)
            return
        while True:
            t, row, r = lifecycle.next_event()
            K.advance(fleet, arrivals, failures, min(t, until), self._check_timeouts)
            if fleet.gi[K.G_STOPS]:  # a slot freed up: it may take a pending replacement
                lifecycle.reconcile(fleet, self.now)
            elif t <= until:
                lifecycle.fire(fleet, row, r, t)
                lifecycle.reconcile(fleet, t)
            else:
                return

    def _provisioned_gpu_s(self) -> np.ndarray:
        """GPU-seconds each replica slot has been provisioned since the start."""
        rf, state = self._fleet.rf, self._fleet.ri[:, K.R_STATE]
        current = np.where(state != K.STOPPED, self.now - rf[:, K.R_UP_T0], 0.0)
        return (rf[:, K.R_UP_S] + current) * self._layout.replica_tp

    def _usage_mark(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(now, KV integral, busy seconds) per replica, to difference later."""
        rf = self._fleet.rf
        return self.now, rf[:, K.R_KV_INTEGRAL].copy(), rf[:, K.R_BUSY_S].copy()

    def _arrivals(self, t0: float, t1: float) -> K.Arrivals:
        """The workload's requests in [t0, t1): tenants checked, prompts truncated, tiers chosen."""
        raw = self.workload.generate(self._rng_workload, t0, t1)
        tenant = raw["tenant"].astype(np.int64)
        if len(raw) and tenant.max() >= len(self._tenant_tier):
            raise ValueError(
                f"workload produced tenant {tenant.max()} but the configuration has "
                f"{len(self._tenant_tier)} tenants"
            )
        orig = raw["prompt_tokens"].astype(np.int64)
        prompt = orig
        if math.isfinite(self.knobs.max_context_tokens):
            prompt = np.minimum(orig, int(self.knobs.max_context_tokens))
        difficulty = raw["difficulty"].astype(np.float64)
        intended = self._tenant_tier[tenant]
        return K.Arrivals(
            t=raw["t_arrival"].astype(np.float64),
            prompt=prompt,
            orig_prompt=orig,
            requested=raw["output_tokens"].astype(np.int64),
            tenant=tenant,
            intended_tier=intended,
            tier=self._downgrade(difficulty, intended),
            difficulty=difficulty,
            truncated=prompt < orig,
        )

    def _downgrade(self, difficulty: np.ndarray, intended: np.ndarray) -> np.ndarray:
        """RouteLLM-style routing: the requests the router judges easiest go to the cheap tier,
        with the threshold set so that the knob's share of recent traffic goes there."""
        router, cheap = self.config.router, self.config.cheap_tier
        # Noise is drawn whatever the knob, so runs that differ only in knobs see the same draws.
        noise = self._rng_router.standard_normal(len(difficulty))
        estimate = difficulty + router.difficulty_noise * noise
        eligible = intended < cheap  # only requests meant for a stronger tier are downgraded
        window = np.concatenate([self._estimates, estimate[eligible]])
        self._estimates = window[-router.calibration_window :]
        tier = intended.copy()
        share = self.knobs.cheap_tier_share
        if share > 0.0 and len(self._estimates):
            threshold = np.quantile(self._estimates, share)
            tier[eligible & (estimate <= threshold)] = cheap
        return tier

    def _failures(self, until: float) -> K.Failures:
        """Failures starting by ``until``: random (MTBF/MTTR) and scheduled ones."""
        events = []
        for r in np.flatnonzero(self._next_failure <= until):
            while self._next_failure[r] <= until:
                duration = self._rng_failures.exponential(self._mttr[r])
                events.append((float(self._next_failure[r]), int(r), float(duration)))
                self._next_failure[r] += duration + self._rng_failures.exponential(self._mtbf[r])
        while self._scheduled and self._scheduled[0][0] <= until:
            events.append(self._scheduled.pop(0))
        if not events:
            return _EMPTY_FAILURES
        events.sort()
        t, r, d = zip(*events, strict=True)
        return K.Failures(np.array(t), np.array(r, dtype=np.int64), np.array(d))

    def _record_series(self, t: float, arrivals: int, events: np.ndarray) -> None:
        """Append the fleet-wide row of the interval that just ended."""
        ri = self._fleet.ri
        t0, integral0, _ = self._series_mark
        self._series_mark = self._usage_mark()
        span = t - t0
        cap = np.maximum(ri[:, K.R_CAP_BLOCKS], 1).sum()
        counts = np.bincount(events["outcome"], minlength=len(Outcome))
        row = self._series[self._series_n % len(self._series)]
        row["t"] = t
        row["arrivals"] = arrivals
        row["served"] = counts[Outcome.SERVED]
        row["rejected"] = counts[Outcome.REJECTED]
        row["aborted"] = counts[Outcome.ABORTED]
        row["failed"] = counts[Outcome.FAILED]
        row["running"] = ri[:, K.R_N_RUNNING].sum()
        row["waiting"] = ri[:, K.R_N_WAITING].sum()
        used = (self._series_mark[1] - integral0).sum()
        if cap == 0:  # no replica: unknown, not 0/0 with a warning
            row["kv_usage_mean"] = np.nan
        else:
            row["kv_usage_mean"] = used / (span * cap) if span > 0 else 0.0
        row["preemptions"] = ri[:, K.R_PREEMPTIONS].sum()
        row["prefill_tokens"] = ri[:, K.R_PREFILL_TOKENS].sum()
        row["decode_tokens"] = ri[:, K.R_DECODE_TOKENS].sum()
        serving = ri[:, K.R_STATE] == K.SERVING
        row["healthy"] = (ri[serving, K.R_HEALTHY] != 0).sum()
        row["serving"] = serving.sum()
        row["provisioned_gpu_s"] = self._provisioned_gpu_s().sum()
        self._series_n += 1


def measure_capacity(
    config: SimConfig,
    *,
    duration_s: float = 600.0,
    warmup_s: float = 120.0,
    seed: int = 0,
) -> float:
    """Requests per second the fleet serves when saturated.

    The workload of ``config`` (its length mix) is offered far above what the fleet can serve;
    a concurrency limit of twice every replica's ``max_num_seqs`` keeps a full queue at every
    replica while turning the excess away at random, so the served mix is the offered one.
    Served completions are counted after ``warmup_s`` for ``duration_s``. The offered rate starts
    at 20 req/s per replica and grows until the fleet saturates.

    Parameters
    ----------
    config: the fleet (its knobs are replaced by a neutral setting with the concurrency limit).
    duration_s, warmup_s: measurement window and the warm-up before it (simulated seconds).
    seed: seed of the saturating run.
    """
    replicas = sum(p.replicas for p in config.pools)
    if replicas == 0:
        return 0.0
    limit = 2 * sum(p.replicas * p.max_num_seqs for p in config.pools)
    rate = 20.0 * replicas
    while True:
        # Saturated at a steady rate and mix: rate curves would mix loads within the window.
        workload = config.workload.model_copy(
            update={"rate": rate, "load": None, "rate_curve": None}
        )
        saturating = config.model_copy(
            update={"workload": workload, "tenants": config.steady_tenants()}
            | {"knobs": Knobs(concurrency_limit=limit)}
        )
        sim = Simulator(saturating, seed=seed)
        sim.advance(warmup_s)
        served = 0
        while sim.now < warmup_s + duration_s:
            events = sim.advance(min(warmup_s + duration_s, sim.now + 60.0))
            served += int((events["outcome"] == Outcome.SERVED).sum())
        throughput = served / duration_s
        if throughput < 0.8 * rate:
            return throughput
        rate *= 4.0
