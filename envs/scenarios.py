"""The scenario suite: the situations a fleet governor must handle.

Every scenario governs one fleet, by default the reference two-tier fleet (a strong pool of
Llama-3-8B replicas and a cheap pool of one Llama-3.2-1B replica, both on A100-80GB, three
tenants of different priority; :data:`REFERENCE_FLEET`), or any fleet file's
(:meth:`GovernedFleet.from_config`), and differs in what happens to it. Load levels are
multiples of the fleet's capacity, so a scenario means the same on every fleet. Each draw is
randomised from a :class:`numpy.random.Generator`, so training sees a distribution of situations
and evaluation uses fixed seeds of the same distribution. Times are seconds from the start of
the controlled episode (after warm-up).

Scenarios marked ``held_out`` are never part of a training preset: they measure how a policy
trained on synthetic situations copes with real traces and with combinations it never saw.

A user's own trace replayed on the fleet (:func:`trace_scenario`, ``budgetpilot bench --trace``)
is a scenario too, but outside :data:`SCENARIOS`: never trained on, benchmarked only when asked
for, and in no group but its own.

Scenarios marked ``elastic`` (:data:`ELASTIC_SCENARIOS`) are the ones where scaling the pools
matters: their pools may grow to :data:`MAX_REPLICAS` and they are meant for
``LLMFleetEnv(elastic=True)`` (:func:`env_kwargs_for`), where the replica knobs scale them. In a
fixed environment they still run, with the replicas staying at their initial count. They are
neither training nor held-out scenarios.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from envs.contract import ROLES, FleetShape, neutral_knob_values, role_of_tier
from envs.sim import (
    AutoscalingConfig,
    PoolConfig,
    ScheduledFailure,
    SimConfig,
    Simulator,
    TenantConfig,
)
from envs.sim.config import TraceColumns
from envs.sim.knobs import Knobs
from envs.sim.workload import (
    TRACE_COLUMNS,
    Diurnal,
    FlashCrowd,
    LengthModel,
    MixedWorkload,
    Poisson,
    TraceReplay,
    Workload,
    get_length_model,
    make_workload,
)

#: Saturated throughput (req/s, Azure-conversation lengths) of one strong replica and of the cheap
#: replica, measured with ``envs.sim.measure_capacity`` (tests/test_scenarios.py re-measures).
STRONG_REPLICA_CAPACITY = 7.6
CHEAP_REPLICA_CAPACITY = 36.4
STRONG_REPLICAS = 2
#: The fleet's nominal capacity: what the strong tier serves alone. Admission limits and load
#: levels are expressed relative to it.
NOMINAL_CAPACITY = STRONG_REPLICA_CAPACITY * STRONG_REPLICAS

#: The three tenants: interactive traffic that pays, standard traffic, and batch traffic.
TENANTS = (
    TenantConfig(name="premium", share=0.3, priority=2, weight=1.0, patience_s=20.0),
    TenantConfig(name="standard", share=0.5, priority=1, weight=1.0, patience_s=60.0),
    TenantConfig(name="batch", share=0.2, priority=0, weight=1.0, patience_s=300.0),
)

#: The cheap tier answers as well as the strong one for requests up to this difficulty.
CHEAP_CAPABILITY = 0.6
#: The fleet's pools, strongest tier first.
POOL_NAMES: tuple[str, ...] = ("strong", "cheap")
#: Most replicas each pool of an elastic fleet may have (the GPUs it may claim); elastic
#: fleets start with the usual 2 strong and 1 cheap replicas.
MAX_REPLICAS: Mapping[str, int] = {"strong": 6, "cheap": 3}
#: Episode length of a scenario that does not set its own.
DEFAULT_EPISODE_HOURS = 2.0


@dataclass
class ScenarioSetup:
    """One draw of a scenario: the fleet, its traffic and the timeline of what happens.

    Parameters
    ----------
    config:
        The simulated fleet (pools, tenants, scheduled failures).
    workload:
        The request source.
    rollout_at_s:
        When a new cheap model is rolled out (a new budget phase), or ``None``.
    rollout_capability:
        The capability of the cheap tier after the rollout.
    parameters:
        The randomised values of this draw, for reports.
    """

    config: SimConfig
    workload: Workload | MixedWorkload
    rollout_at_s: float | None = None
    rollout_capability: float = CHEAP_CAPABILITY
    parameters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A named family of situations.

    Parameters
    ----------
    name:
        Identifier (also in the Gymnasium id).
    description:
        One sentence for reports.
    builder:
        ``builder(rng, warmup_s, fleet) -> ScenarioSetup`` (see :meth:`build`).
    held_out:
        Never used by training presets.
    needs_data:
        Replays a real trace from the reference data.
    elastic:
        Scaling the pools matters here (run it with ``LLMFleetEnv(elastic=True)``).
    episode_hours:
        The episode length the scenario needs (a day for a daily cycle); ``None``:
        :data:`DEFAULT_EPISODE_HOURS`. An environment given ``episode_hours`` overrides it.
    user_trace:
        Replays a user's own trace (:func:`trace_scenario`).
    """

    name: str
    description: str
    builder: Callable[[np.random.Generator, float, GovernedFleet], ScenarioSetup]
    held_out: bool = False
    needs_data: bool = False
    elastic: bool = False
    episode_hours: float | None = None
    user_trace: bool = False

    def build(
        self, rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet | None = None
    ) -> ScenarioSetup:
        """One draw of the scenario on ``fleet`` (default :data:`REFERENCE_FLEET`)."""
        return self.builder(rng, warmup_s, fleet or REFERENCE_FLEET)


def fleet_config(failures: tuple[ScheduledFailure, ...] = ()) -> SimConfig:
    """The two-tier fleet every scenario governs."""
    return SimConfig(
        pools=[
            PoolConfig(name=POOL_NAMES[0], model="llama-3-8b", replicas=STRONG_REPLICAS),
            PoolConfig(
                name=POOL_NAMES[1],
                model="llama-3.2-1b",
                replicas=1,
                tier=1,
                capability=CHEAP_CAPABILITY,
            ),
        ],
        tenants=list(TENANTS),
        failures=list(failures),
        series_rows=1024,
    )


@dataclass(frozen=True)
class GovernedFleet:
    """The fleet the scenarios run on and the capacity their load levels are multiples of.

    Parameters
    ----------
    config:
        The fleet: pools, router, gateway, tenants, the traffic's length mix and, from a fleet
        file, its SLO spec, control interval and episode length (scenarios bring their own
        failures and arrivals).
    capacity_rps:
        Requests per second the fleet serves saturated (load 1): its nominal capacity.
    cheap_capacity_rps:
        Requests per second its cheap tier serves saturated, alone; ``None``: measured when
        first needed (:attr:`role_capacity_rps`).
    """

    config: SimConfig
    capacity_rps: float
    cheap_capacity_rps: float | None = None

    @classmethod
    def from_config(cls, config: SimConfig) -> GovernedFleet:
        """A fleet file's fleet, its capacity measured (or read from the cache) for its traffic's
        length mix (:func:`envs.sim.capacity.fleet_capacity`)."""
        from envs.sim.capacity import fleet_capacity

        return cls(config.model_copy(update={"failures": []}), fleet_capacity(config))

    @cached_property
    def role_capacity_rps(self) -> tuple[float, ...]:
        """Requests per second each role of :data:`envs.contract.ROLES` serves saturated: the
        strong one is the nominal capacity (measured with every request on the strong tier),
        the cheap one its pools' alone, measured (cached, see :func:`envs.sim.capacity.
        fleet_capacity`) unless given; 0 for a role the fleet lacks."""
        from envs.sim.capacity import fleet_capacity

        cheap = self.cheap_capacity_rps
        if cheap is None:
            alone = cheap_tier_alone(self.config)
            cheap = 0.0 if alone is None else fleet_capacity(alone)
        return (self.capacity_rps, float(cheap))

    def shape(self, config: SimConfig | None = None) -> FleetShape:
        """The :class:`envs.contract.FleetShape` a v3 observation of ``config`` (default: this
        fleet; a scalable copy of it has other caps) is relative to."""
        caps = [0] * len(ROLES)
        for pool in (config or self.config).pools:
            caps[ROLES.index(role_of_tier(pool.tier))] += pool.replica_slots
        return FleetShape(self.capacity_rps, self.role_capacity_rps, tuple(caps))

    def role_replicas(self, elastic: bool = False) -> dict[str, tuple[int, int]]:
        """Per role of :data:`envs.contract.ROLES` the fleet has, the fewest and most replicas
        it runs (all its pools of the role together): its replicas when fixed; when elastic
        (:func:`scalable`), from its pools' minimum (at least one, as the replica knobs keep)
        to their caps."""
        totals: dict[str, tuple[int, int]] = {}
        for pool in (scalable(self.config) if elastic else self.config).pools:
            if elastic:
                low, high = max(pool.min_replicas, 1), pool.replica_slots
            else:
                low = high = pool.replicas
            role = role_of_tier(pool.tier)
            before = totals.get(role, (0, 0))
            totals[role] = (before[0] + low, before[1] + high)
        return totals

    @property
    def model_names(self) -> tuple[str, ...]:
        """The models its pools serve (catalog names, or a ``config.json``'s model name)."""
        return tuple(sorted({p.model_spec().name for p in self.config.pools}))

    @property
    def gpu_names(self) -> tuple[str, ...]:
        """The GPU kinds its pools run on."""
        return tuple(sorted({p.gpu_spec().name for p in self.config.pools}))

    @property
    def strong_pool(self) -> str:
        """The first pool of tier 0 (the one scenarios fail replicas of)."""
        return next(p.name for p in self.config.pools if p.tier == 0)

    @cached_property
    def cheap_pool(self) -> str | None:
        """The first pool of the tier downgraded traffic goes to, ``None`` in a single tier."""
        if self.config.n_tiers == 1:
            return None
        return next(p.name for p in self.config.pools if p.tier == self.config.cheap_tier)

    @property
    def tenant_shares(self) -> tuple[float, ...]:
        return tuple(t.share for t in self.config.tenants)

    @property
    def main_tenant(self) -> int:
        """The tenant with the largest share of traffic (the first one among equals)."""
        return int(np.argmax(self.tenant_shares))

    @property
    def low_priority_tenant(self) -> int:
        """The tenant of the lowest priority (the last one among equals)."""
        priorities = [t.priority for t in self.config.tenants]
        return len(priorities) - 1 - int(np.argmin(priorities[::-1]))

    @property
    def lengths(self) -> LengthModel:
        """Prompt and output lengths of the fleet's traffic."""
        return self.config.workload.length_model

    @property
    def fixed_knobs(self) -> dict[str, str]:
        """Knobs without a counterpart in this fleet, held at their neutral value
        (:data:`envs.contract.NEUTRAL_KNOB_VALUES`): name -> why."""
        if self.cheap_pool is None:
            return {"cheap_tier_share": "a single-tier fleet has no cheap tier: fixed at 0"}
        return {}

    def roll_out(self, sim: Simulator, capability: float) -> None:
        """Serve a new cheap model of ``capability`` in ``sim`` (a single tier has none)."""
        if self.cheap_pool is not None:
            sim.set_capability(self.cheap_pool, capability)

    def with_failures(self, failures: tuple[ScheduledFailure, ...] = ()) -> SimConfig:
        """The fleet with these scheduled failures."""
        return self.config.model_copy(update={"failures": list(failures)})

    def stream(
        self,
        load: float,
        modulations: tuple[Modulation, ...] = (),
        tenant_shares: tuple[float, ...] | None = None,
        lengths: LengthModel | None = None,
    ) -> Workload:
        """Poisson arrivals at ``load`` times the capacity, modulated, over the fleet's tenants
        (or ``tenant_shares``) with its lengths (or ``lengths``)."""
        return Workload(
            Poisson(load * self.capacity_rps, modulations),
            lengths or self.lengths,
            tenant_shares or self.tenant_shares,
        )

    def in_force(self, values: Mapping[str, float]) -> dict[str, float]:
        """Knob values as they act on this fleet: :attr:`fixed_knobs` at their neutral value."""
        return dict(values) | neutral_knob_values(tuple(self.fixed_knobs))

    def knobs(self, values: Mapping[str, float]) -> Knobs:
        """The simulator's :class:`Knobs` for knob values of the :class:`ActionContract`:
        admission limits are multiples of the capacity, the low-priority weight applies to the
        tenants of the lowest priority, fixed knobs (:attr:`fixed_knobs`) stay neutral."""
        values = self.in_force(values)
        low = min(t.priority for t in self.config.tenants)
        weights = tuple(
            values["low_priority_weight"] if t.priority == low else t.weight
            for t in self.config.tenants
        )
        return Knobs(
            cheap_tier_share=values["cheap_tier_share"],
            offload_fraction=values["offload_fraction"],
            admission_rate_limit=values["admission_limit"] * self.capacity_rps,
            shed_priority_below=values["shed_priority_below"],
            max_context_tokens=values["max_context_tokens"],
            max_num_seqs_scale=values["max_num_seqs_scale"],
            tenant_weights=weights,
        )


def cheap_tier_alone(config: SimConfig) -> SimConfig | None:
    """The pools of ``config`` beyond tier 0 as a fleet of their own (renumbered from tier 0,
    every tenant on it), whose capacity is the cheap role's; ``None`` for a single tier."""
    cheap = [p for p in config.pools if p.tier > 0]
    if not cheap:
        return None
    lowest = min(p.tier for p in cheap)
    pools = [p.model_copy(update={"tier": p.tier - lowest}) for p in cheap]
    tenants = [t.model_copy(update={"tier": 0}) for t in config.tenants]
    router = config.router.model_copy(update={"cheap_tier": None})
    update = {"pools": pools, "tenants": tenants, "router": router, "failures": []}
    return config.model_copy(update=update | {"capacity_rps": None})


def governed_fleet(fleet: SimConfig | str | Path | None) -> GovernedFleet:
    """The fleet an environment governs: the reference one, or a fleet file's (a path or a
    loaded :class:`envs.sim.SimConfig`) with its capacity measured."""
    if fleet is None:
        return REFERENCE_FLEET
    config = fleet if isinstance(fleet, SimConfig) else SimConfig.from_yaml(fleet)
    return GovernedFleet.from_config(config)


def scalable(config: SimConfig, autoscaling: AutoscalingConfig | None = None) -> SimConfig:
    """``config`` with pools that may scale: every pool without its own ``max_replicas`` gets
    :data:`MAX_REPLICAS` (at least its initial replicas), and ``autoscaling`` if given."""
    pools = []
    for pool in config.pools:
        update: dict[str, object] = {}
        if pool.max_replicas is None:
            update["max_replicas"] = max(MAX_REPLICAS.get(pool.name, 0), pool.replicas)
        if autoscaling is not None:
            update["autoscaling"] = autoscaling.model_dump()
        pools.append(PoolConfig.model_validate(pool.model_dump() | update))
    return config.model_copy(update={"pools": pools})


TENANT_SHARES = tuple(t.share for t in TENANTS)
CONV_LENGTHS = get_length_model("azure-conv")
#: The reference fleet at its nominal capacity: what every environment governs by default.
REFERENCE_FLEET = GovernedFleet(fleet_config(), NOMINAL_CAPACITY)


class Ramp:
    """A slow change of the rate: the multiplier goes linearly from 1 at ``start_s`` to
    ``final_multiplier`` at ``start_s + duration_s`` and stays there (a modulation like
    :class:`envs.sim.workload.Diurnal`).

    Parameters
    ----------
    start_s, duration_s: the ramp in simulated seconds.
    final_multiplier: rate factor at the end of the ramp (> 0).
    """

    # The warp integrates the multiplier at cell midpoints, exact for a linear piece: the ramp
    # needs no grid besides its two breakpoints.
    resolution_s = math.inf

    def __init__(self, start_s: float, duration_s: float, final_multiplier: float) -> None:
        if duration_s <= 0 or final_multiplier <= 0:
            raise ValueError(
                f"Ramp duration_s and final_multiplier must be > 0, got {duration_s}, "
                f"{final_multiplier}"
            )
        self.start_s, self.duration_s = start_s, duration_s
        self.final_multiplier = final_multiplier

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Rate multiplier at times ``t``."""
        end = self.start_s + self.duration_s
        return np.interp(t, [self.start_s, end], [1.0, self.final_multiplier])

    def breakpoints(self, t0: float, t1: float) -> np.ndarray:
        """Times in ``(t0, t1)`` where the multiplier's slope changes."""
        edges = np.array([self.start_s, self.start_s + self.duration_s])
        return edges[(edges > t0) & (edges < t1)]


Modulation = Diurnal | FlashCrowd | Ramp


def poisson_stream(
    load: float,
    modulations: tuple[Modulation, ...] = (),
    tenant_shares: tuple[float, ...] = TENANT_SHARES,
    lengths: LengthModel = CONV_LENGTHS,
) -> Workload:
    """Poisson arrivals at ``load`` times the reference fleet's nominal capacity, modulated."""
    return REFERENCE_FLEET.stream(load, modulations, tenant_shares, lengths)


def _flash(
    rng: np.random.Generator, warmup_s: float, multiplier: tuple[float, float]
) -> FlashCrowd:
    return FlashCrowd(
        start_s=warmup_s + float(rng.uniform(900.0, 4800.0)),
        duration_s=float(rng.uniform(300.0, 900.0)),
        multiplier=float(rng.uniform(*multiplier)),
    )


def _diurnal_cycle(rng: np.random.Generator) -> Diurnal:
    return Diurnal(
        period_s=7200.0,
        amplitude=float(rng.uniform(0.3, 0.6)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
    )


def _describe(load: float, *modulations: Modulation) -> dict[str, float]:
    parameters = {"load": load}
    for m in modulations:
        parameters |= {f"{type(m).__name__.lower()}_{k}": v for k, v in vars(m).items()}
    return parameters


def _steady(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    load = float(rng.uniform(0.6, 0.95))
    return ScenarioSetup(fleet.with_failures(), fleet.stream(load), parameters=_describe(load))


def _diurnal(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    load, cycle = float(rng.uniform(0.55, 0.8)), _diurnal_cycle(rng)
    return ScenarioSetup(
        fleet.with_failures(), fleet.stream(load, (cycle,)), parameters=_describe(load, cycle)
    )


def _flash_crowd(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    load, flash = float(rng.uniform(0.5, 0.7)), _flash(rng, warmup_s, (1.8, 3.0))
    return ScenarioSetup(
        fleet.with_failures(), fleet.stream(load, (flash,)), parameters=_describe(load, flash)
    )


def long_context_lengths(scale: float, base: LengthModel = CONV_LENGTHS) -> LengthModel:
    """``base`` lengths (Azure-conversation ones by default) with prompts ``scale`` times longer
    (RAG, documents)."""
    return LengthModel(
        base.z_grid, base.prompt_quantiles * scale, base.output_quantiles, base.correlation
    )


def _per_tenant(fleet: GovernedFleet, load: float, **overrides: Workload) -> MixedWorkload:
    """Every tenant's share of ``load`` as its own Poisson stream (labelled with its tenant id),
    some replaced by name."""
    tenants = fleet.config.tenants
    total = sum(fleet.tenant_shares)
    streams = [
        overrides.get(t.name) or fleet.stream(load * t.share / total, tenant_shares=(1.0,))
        for t in tenants
    ]
    return MixedWorkload(list(enumerate(streams)))


def _long_context_surge(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    load, flash = float(rng.uniform(0.5, 0.7)), _flash(rng, warmup_s, (15.0, 30.0))
    scale = float(rng.uniform(3.0, 6.0))
    workload = _per_tenant(fleet, load)
    # The main tenant's document product: rare long prompts, then a burst of them.
    lengths = long_context_lengths(scale, fleet.lengths)
    documents = fleet.stream(0.02, (flash,), (1.0,), lengths)
    workload.components.append((fleet.main_tenant, documents))
    return ScenarioSetup(
        fleet.with_failures(),
        workload,
        parameters={**_describe(load, flash), "prompt_scale": scale},
    )


def _heavy_prompts(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    # A fleet sized in requests meets traffic heavy in tokens (agents, code, long chats): the
    # request rate is normal, the prefill and KV demand are not, for the whole episode.
    load, scale = float(rng.uniform(0.5, 0.8)), float(rng.uniform(1.5, 2.5))
    return ScenarioSetup(
        fleet.with_failures(),
        fleet.stream(load, lengths=long_context_lengths(scale, fleet.lengths)),
        parameters={"load": load, "prompt_scale": scale},
    )


def _replica_failure(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    load = float(rng.uniform(0.55, 0.75))
    at = warmup_s + float(rng.uniform(600.0, 3600.0))
    duration = float(rng.uniform(600.0, 1800.0))
    failure = ScheduledFailure(pool=fleet.strong_pool, replica=0, at_s=at, duration_s=duration)
    return ScenarioSetup(
        fleet.with_failures((failure,)),
        fleet.stream(load),
        parameters={"load": load, "failure_at_s": at, "failure_duration_s": duration},
    )


def _noisy_tenant(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    load, flash = float(rng.uniform(0.5, 0.7)), _flash(rng, warmup_s, (4.0, 8.0))
    noisy = fleet.config.tenants[fleet.low_priority_tenant]
    share = noisy.share / sum(fleet.tenant_shares)
    stream = fleet.stream(load * share, (flash,), tenant_shares=(1.0,))
    return ScenarioSetup(
        fleet.with_failures(),
        _per_tenant(fleet, load, **{noisy.name: stream}),
        parameters=_describe(load, flash),
    )


def _model_rollout(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    load = float(rng.uniform(0.6, 0.9))
    at = warmup_s + float(rng.uniform(1200.0, 4800.0))
    capability = float(rng.uniform(0.35, 0.8))
    return ScenarioSetup(
        fleet.with_failures(),
        fleet.stream(load),
        rollout_at_s=at,
        rollout_capability=capability,
        parameters={"load": load, "rollout_at_s": at, "rollout_capability": capability},
    )


def _trace(kind: str) -> Callable[[np.random.Generator, float, GovernedFleet], ScenarioSetup]:
    def build(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
        load = float(rng.uniform(0.6, 0.9))
        shares = fleet.tenant_shares
        workload = make_workload(
            kind, load * fleet.capacity_rps, tenants=len(shares), tenant_shares=shares
        )
        return ScenarioSetup(fleet.with_failures(), workload, parameters={"load": load})

    return build


def _mixed(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    load, cycle = float(rng.uniform(0.5, 0.7)), _diurnal_cycle(rng)
    flash = _flash(rng, warmup_s, (1.5, 2.5))
    at = warmup_s + float(rng.uniform(600.0, 5400.0))
    strong = next(p for p in fleet.config.pools if p.name == fleet.strong_pool)
    replica = min(1, strong.replica_slots - 1)
    failure = ScheduledFailure(pool=strong.name, replica=replica, at_s=at, duration_s=900.0)
    return ScenarioSetup(
        fleet.with_failures((failure,)),
        fleet.stream(load, (cycle, flash)),
        parameters={**_describe(load, cycle, flash), "failure_at_s": at},
    )


def _elastic_fleet(fleet: GovernedFleet, **autoscaling: float) -> SimConfig:
    """The fleet, with pools that may scale (see :func:`scalable`)."""
    return scalable(fleet.with_failures(), AutoscalingConfig(**autoscaling))


def _elastic_diurnal(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    # Peaks of up to ~1.9x nominal need 5 strong replicas; troughs of ~0.25x leave one busy.
    load = float(rng.uniform(0.8, 1.1))
    cycle = Diurnal(
        period_s=86400.0,
        amplitude=float(rng.uniform(0.5, 0.7)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
    )
    return ScenarioSetup(
        _elastic_fleet(fleet), fleet.stream(load, (cycle,)), parameters=_describe(load, cycle)
    )


def _slow_ramp(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
    start, end = float(rng.uniform(0.45, 0.55)), float(rng.uniform(1.5, 1.7))
    ramp = Ramp(
        start_s=warmup_s + float(rng.uniform(0.0, 900.0)),
        duration_s=float(rng.uniform(2.5, 3.5)) * 3600.0,
        final_multiplier=end / start,
    )
    return ScenarioSetup(
        _elastic_fleet(fleet), fleet.stream(start, (ramp,)), parameters=_describe(start, ramp)
    )


def _short_flash_crowd(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    load = float(rng.uniform(0.6, 0.8))
    flash = FlashCrowd(
        start_s=warmup_s + float(rng.uniform(300.0, 3000.0)),
        duration_s=float(rng.uniform(60.0, 180.0)),
        multiplier=float(rng.uniform(2.0, 4.0)),
    )
    # A 4-minute provisioning delay (Llama-3-8B: 180 s + 60 s of weights) with little jitter:
    # replicas asked for when the crowd starts serve after it has gone.
    elastic = _elastic_fleet(fleet, provision_base_s=180.0, provision_jitter=0.1)
    return ScenarioSetup(elastic, fleet.stream(load, (flash,)), parameters=_describe(load, flash))


def _spot_interruptions(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    load, rate = float(rng.uniform(0.6, 0.85)), float(rng.uniform(0.5, 1.0))
    elastic = _elastic_fleet(fleet, spot_rate_per_hour=rate, spot_notice_s=120.0)
    return ScenarioSetup(
        elastic,
        fleet.stream(load),
        parameters={"load": load, "spot_rate_per_hour": rate, "spot_notice_s": 120.0},
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", "Poisson traffic at 60-95% of nominal capacity.", _steady),
        Scenario("diurnal", "Load swings with a compressed two-hour day.", _diurnal),
        Scenario("flash-crowd", "Traffic jumps 1.8-3x for 5-15 minutes.", _flash_crowd),
        Scenario(
            "long-context-surge",
            "A burst of prompts 3-6x longer than usual fills the KV cache.",
            _long_context_surge,
        ),
        Scenario(
            "heavy-prompts",
            "Prompts 1.5-2.5x longer than usual all episode: overloaded in tokens, not requests.",
            _heavy_prompts,
        ),
        Scenario("replica-failure", "A strong replica fails for 10-30 minutes.", _replica_failure),
        Scenario(
            "noisy-tenant", "The batch tenant's traffic jumps 4-8x for a while.", _noisy_tenant
        ),
        Scenario(
            "model-rollout",
            "A new cheap model is rolled out: a new budget phase and a shifted quality.",
            _model_rollout,
        ),
        Scenario(
            "trace-conv",
            "Replay of the real Azure conversation trace (2023), rescaled to the fleet.",
            _trace("azure-conv"),
            held_out=True,
            needs_data=True,
        ),
        Scenario(
            "trace-code",
            "Replay of the real Azure code-completion trace (2023), rescaled to the fleet.",
            _trace("azure-code"),
            held_out=True,
            needs_data=True,
        ),
        Scenario(
            "mixed",
            "A compressed day with a flash crowd and a replica failure on top.",
            _mixed,
            held_out=True,
        ),
        Scenario(
            "elastic-diurnal",
            "A 24-hour day between ~0.25x and ~1.9x nominal load: scale with it.",
            _elastic_diurnal,
            elastic=True,
            episode_hours=24.0,
        ),
        Scenario(
            "slow-ramp",
            "Load rises from ~0.5x to ~1.6x nominal over about three hours.",
            _slow_ramp,
            elastic=True,
            episode_hours=4.0,
        ),
        Scenario(
            "short-flash-crowd",
            "Traffic jumps 2-4x for 1-3 minutes, shorter than the 4-minute provisioning delay: "
            "replicas asked for then come too late, only headroom or the other knobs help.",
            _short_flash_crowd,
            elastic=True,
        ),
        Scenario(
            "spot-interruptions",
            "Spot GPUs: 0.5-1 interruptions per replica-hour, each with a 2-minute notice.",
            _spot_interruptions,
            elastic=True,
        ),
    )
}

#: Scenarios a training preset may draw from.
TRAINING_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if not (s.held_out or s.elastic))
#: Scenarios kept for evaluation only.
HELD_OUT_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if s.held_out)
#: Scenarios where scaling the pools matters (run them with ``LLMFleetEnv(elastic=True)``).
ELASTIC_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if s.elastic)


def _fleet_traffic(
    rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
) -> ScenarioSetup:
    """The fleet file's own ``workload`` as written: its rate (or load of the measured
    capacity), rate curves (starting with the episode, after the warm-up), lengths or trace."""
    from envs.sim.capacity import with_load_resolved

    config = with_load_resolved(fleet.config).curves_starting_at(warmup_s)
    rate = config.workload.rate
    parameters = {} if rate is None else {"rate": rate}
    return ScenarioSetup(fleet.with_failures(), config.build_workload(), parameters=parameters)


#: The fleet file's own traffic (what ``budgetpilot fit`` wrote, rate curve included): outside
#: :data:`SCENARIOS`, so never a training, default-benchmark or held-out scenario.
FLEET_TRAFFIC = Scenario(
    "fleet-traffic",
    "The fleet file's own traffic as written: its rate or load, rate curve, lengths or trace.",
    _fleet_traffic,
    user_trace=True,
)

#: Scenarios replaying a user's trace in this process (:func:`register_trace_scenario`).
_TRACE_SCENARIOS: dict[str, Scenario] = {}


def get_scenario(name: str) -> Scenario:
    """Look a scenario up by name (a registered trace's too); the error lists the known ones."""
    own = {FLEET_TRAFFIC.name: FLEET_TRAFFIC}
    scenario = SCENARIOS.get(name) or _TRACE_SCENARIOS.get(name) or own.get(name)
    if scenario is None:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join([*SCENARIOS, *own])}")
    return scenario


def env_kwargs_for(scenario: str) -> dict[str, bool]:
    """The :class:`envs.fleet_env.LLMFleetEnv` arguments a scenario needs: ``{"elastic": True}``
    for an elastic scenario, none otherwise (tuning and the benchmark build envs with them)."""
    return {"elastic": True} if get_scenario(scenario).elastic else {}


@dataclass(frozen=True)
class TraceTraffic:
    """A user's request trace replayed on a fleet: the builder of :func:`trace_scenario`.

    Parameters
    ----------
    path:
        The trace CSV (see :class:`envs.sim.workload.TraceReplay`).
    columns:
        Its timestamp, prompt-token and output-token columns.
    time_scale:
        Factor on its times (0.001 for milliseconds).
    load:
        Replay at this multiple of the fleet's capacity for this trace's traffic; ``None``: at
        the load the trace carries (its own rate over that capacity).
    """

    path: str
    columns: tuple[str, str, str] = TRACE_COLUMNS
    time_scale: float = 1.0
    load: float | None = None

    @property
    def name(self) -> str:
        """The scenario's name: ``trace-`` and the file's stem."""
        return f"trace-{Path(self.path).stem}"

    def replay(self) -> TraceReplay:
        """The trace at its own rate (parsing it: a bad row raises ValueError naming it)."""
        return TraceReplay(self.path, time_scale=self.time_scale, columns=self.columns)

    def capacity_rps(self, fleet: GovernedFleet) -> float:
        """Requests per second ``fleet`` serves saturated by this trace's lengths (measured
        once, then cached: :func:`envs.sim.capacity.fleet_capacity`)."""
        from envs.sim.capacity import fleet_capacity

        columns = TraceColumns(**dict(zip(TraceColumns.model_fields, self.columns, strict=True)))
        workload = fleet.config.workload.model_copy(
            update={"kind": "trace", "trace": str(Path(self.path).resolve()), "rate": None}
            | {"load": None, "columns": columns, "time_scale": self.time_scale}
            | {"rate_curve": None}  # a replay follows the trace's own rate
        )
        # A capacity the fleet file states holds for its own traffic, not for this trace.
        return fleet_capacity(
            fleet.config.model_copy(update={"workload": workload} | {"capacity_rps": None})
        )

    def load_on(self, fleet: GovernedFleet) -> tuple[float, float]:
        """``(load, capacity)``: the load of the replay (stated, or the trace's own rate over
        the capacity) and ``fleet``'s capacity for this trace (:meth:`capacity_rps`)."""
        capacity = self.capacity_rps(fleet)
        return (self.replay().mean_rate / capacity if self.load is None else self.load), capacity

    def __call__(
        self, rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet
    ) -> ScenarioSetup:
        load, capacity = self.load_on(fleet)
        # Every seed replays the trace from its own point, so seeds sample different stretches.
        start = float(rng.uniform(0.0, 1.0))
        shares = fleet.tenant_shares
        workload = make_workload(
            "trace",
            load * capacity,
            trace=self.path,
            trace_columns=self.columns,
            trace_time_scale=self.time_scale,
            trace_start=start,
            tenants=len(shares),
            tenant_shares=shares,
        )
        parameters = {"load": load, "capacity_rps": capacity, "trace_start": start}
        return ScenarioSetup(fleet.with_failures(), workload, parameters=parameters)


def trace_scenario(traffic: TraceTraffic, description: str | None = None) -> Scenario:
    """The scenario replaying ``traffic`` on the fleet (outside :data:`SCENARIOS`: never a
    training, default-benchmark or held-out scenario)."""
    how = "at the load it carries" if traffic.load is None else f"at load {traffic.load:g}"
    return Scenario(
        traffic.name,
        description or f"Replay of the user's trace {traffic.path} {how}.",
        traffic,
        user_trace=True,
    )


def register_trace_scenario(traffic: TraceTraffic, description: str | None = None) -> str:
    """Make the scenario of ``traffic`` known to :func:`get_scenario` in this process (every
    process running it registers it) and return its name. A later trace of the same name
    replaces it; the same trace again keeps its description unless given a new one."""
    known = _TRACE_SCENARIOS.get(traffic.name)
    if description is not None or known is None or known.builder != traffic:
        _TRACE_SCENARIOS[traffic.name] = trace_scenario(traffic, description)
    return traffic.name
