"""The Gymnasium environment: govern a simulated LLM fleet by its error budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.action_filter import ActionRateLimit
from envs.budget_kernel import CompiledIngest, CompiledSnapshot
from envs.contract import (
    DEFAULT_KNOBS,
    ROLES,
    ActionContract,
    FleetSignals,
    FleetSignalTracker,
    ObservationContract,
    ReplicaGauges,
    elastic_knobs,
    fleet_independent_contract,
    neutral_knob_values,
    next_desired_replicas,
    replicas_knob_name,
    role_of_tier,
)
from envs.domain import DomainRandomisation, RandomisedFleet
from envs.scenarios import (
    REFERENCE_FLEET,
    GovernedFleet,
    Scenario,
    ScenarioSetup,
    get_scenario,
    governed_fleet,
    scalable,
)
from envs.sim import FleetStats, Knobs, ReplicaState, SimConfig, Simulator
from slo import BudgetEngine, ServiceSpec, default_spec, load_spec
from slo.engine import AlertLevel

#: Burn rates above this count as this in the reward (100% errors on a 99% SLO is 100x).
MAX_REWARD_BURN = 50.0
#: The SLI kinds of :mod:`slo.spec`, which :attr:`RewardConfig.overload_weights` are keyed by.
SLI_KINDS = (
    "ttft",
    "itl",
    "e2e",
    "normalized_latency",
    "streaming",
    "availability",
    "quality",
    "context",
    "fairness",
)


#: A fleet as environments take it: ``None`` (the reference fleet), a fleet file's path or
#: its loaded :class:`envs.sim.SimConfig`.
FleetArgument = SimConfig | str | Path | None


def _governed_fleets(
    fleet: FleetArgument, fleets: Sequence[FleetArgument] | None, contract: int
) -> tuple[GovernedFleet, ...]:
    """The fleets of an environment: ``fleet``, or ``fleets`` to draw from at each reset (v3
    only: a v2 contract is one fleet's), all with the same SLO spec."""
    if fleets is None:
        return (governed_fleet(fleet),)
    if fleet is not None:
        raise ValueError("give fleet or fleets, not both")
    if not fleets:
        raise ValueError("fleets: give a non-empty list of fleet files")
    if contract != 3:
        raise ValueError("fleets: drawing fleets needs contract=3 (v2 observes one fleet)")
    drawn = tuple(governed_fleet(f) for f in fleets)
    specs = {str(f.config.slo_spec) for f in drawn}
    if len(specs) > 1:
        raise ValueError(f"fleets: they name different SLO specs {sorted(specs)}: give one")
    return drawn


def fleet_name(fleet: FleetArgument) -> str:
    """The name ``info["fleet"]`` gives a fleet: a fleet file's stem, ``reference`` for the
    reference fleet, ``custom`` for a configuration given as an object."""
    if fleet is None:
        return "reference"
    return "custom" if isinstance(fleet, SimConfig) else Path(fleet).stem


def sim_knobs(values: Mapping[str, float], fleet: GovernedFleet = REFERENCE_FLEET) -> Knobs:
    """The simulator's :class:`Knobs` for knob values of the :class:`ActionContract` on
    ``fleet`` (what the environment, the engine twin's control API and the sidecar's twin
    actuator all apply; see :meth:`envs.scenarios.GovernedFleet.knobs`)."""
    return fleet.knobs(values)


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the error-budget economics the agent is rewarded by (all costs, per step).

    Parameters
    ----------
    burn:
        Cost per unit of step burn rate, for every SLO (spending is never free).
    overspend:
        Extra cost per unit of step burn rate above 1 (spending faster than the budget allows).
    page:
        Cost per SLO whose page alert fires, per step.
    exhaustion:
        One-off cost when an SLO's period budget becomes exhausted.
    exhausted_multiplier:
        Burn costs of an SLO whose budget is already exhausted are multiplied by this.
    serving:
        Cost of one step of the strong pool's initial replicas fully busy (GPU-seconds at the
        GPU's price); busy GPU time of every pool (provisioned GPU time in an elastic
        environment) and CPU offload are charged relative to it.
    offload_cpu_share:
        Price of offloaded KV per replica, as a share of the replica's GPU price at offload 1.
    smoothness:
        Cost per unit of the step's mean absolute change of the knobs in force, in action units
        (what the benchmark reports as action change per step); 0 leaves flipping free.
    overload_weights:
        Per SLI kind (``ttft``, ``availability``, ``quality``...), a factor on the burn and
        exhaustion costs of its SLOs in overloaded steps, those whose arrivals reach
        ``overload_load`` times the fleet's nominal capacity: e.g. latency and availability
        above 1 and quality below it make exhausting a latency budget under overload cost more
        than spending the quality budget that the cheap tier would spend to save it. Empty:
        every SLO costs the same.
    overload_load:
        Arrivals per second, relative to the nominal capacity, from which a step is overloaded.
    """

    burn: float = 0.02
    overspend: float = 0.1
    page: float = 1.0
    exhaustion: float = 10.0
    exhausted_multiplier: float = 2.0
    serving: float = 0.5
    offload_cpu_share: float = 0.2
    smoothness: float = 0.0
    overload_weights: Mapping[str, float] = field(default_factory=dict)
    overload_load: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overload_weights) - set(SLI_KINDS))
        if unknown:
            raise ValueError(
                f"reward.overload_weights: unknown SLI kind(s) {unknown}; known: {list(SLI_KINDS)}"
            )
        negative = [k for k, w in self.overload_weights.items() if not w >= 0.0]
        if negative or not self.smoothness >= 0.0 or not self.overload_load > 0.0:
            raise ValueError(
                "reward: smoothness and overload_weights must be >= 0 and overload_load > 0, "
                f"got smoothness {self.smoothness}, overload_load {self.overload_load}, "
                f"weights {dict(self.overload_weights)}"
            )

    @classmethod
    def from_mapping(cls, data: RewardConfig | Mapping[str, Any] | None) -> RewardConfig:
        """The weights of a preset's or ``run.json``'s ``reward`` mapping (defaults for the
        rest); an unknown field is refused, naming it."""
        if data is None or isinstance(data, cls):
            return data or cls()
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"reward: unknown field(s) {unknown}; known: {known}")
        values = {k: v if k == "overload_weights" else float(v) for k, v in data.items()}
        return cls(**values)


class LLMFleetEnv(gym.Env):
    """Govern a two-tier LLM serving fleet by its multi-dimensional error budgets.

    ## Description

    A fleet of LLM replicas (a strong pool of Llama-3-8B and a cheap pool of Llama-3.2-1B on
    A100-80GB, simulated by :class:`envs.sim.Simulator`) serves three tenants. An SLO spec
    (:func:`slo.default_spec` unless given) defines one error budget per dimension: time to first
    token, inter-token latency, normalised latency, availability, quality, fairness, context
    integrity and streaming experience. Every ``control_interval_s`` the agent sets the serving
    knobs; each one spends some budgets to save others.

    ## Observation Space

    A ``Box`` of float32 laid out by :class:`envs.contract.ObservationContract` (its
    ``feature_names`` name every entry): per SLO, log2(1 + burn rate) over the windows 5m, 30m,
    1h and 6h, the period budget remaining and the alert state (0, 0.5 ticket, 1 page); per pool,
    KV usage (mean, max), waiting and running requests per replica and the healthy share of
    replicas (of the serving and draining ones); fleet-wide, the arrival-rate trend, load
    relative to nominal capacity and the preemption rate; and the knobs in force, in [-1, 1].
    With ``elastic=True`` every pool also has its replicas serving, provisioning, draining and
    desired, each divided by the pool's ``max_replicas``. All of these can be computed from real
    engines' metrics (and the Deployments' status), which is how the sidecar rebuilds the same
    vector.

    That is contract v2 (``contract=2``, the default): one fleet's, its pools by name, load
    relative to its capacity, the replica features relative to its caps. Contract v3
    (``contract=3``, what training presets of fixed fleets use by default;
    :func:`envs.contract.fleet_independent_contract`) is the same for every fleet, whatever its
    size, GPUs and models: pools are grouped by role, ``strong`` (tier 0) and ``cheap`` (the
    other tiers), each role's features taken over all its pools' replicas, and every role also
    has ``present`` (1, or 0 when the fleet has no pool of that role: its features are then all
    0, masked), ``capacity_share`` (the role's measured capacity over the fleet's nominal one,
    :attr:`envs.scenarios.GovernedFleet.role_capacity_rps`) and ``queue_s`` (log1p of the
    role's waiting requests over its capacity: seconds of queue). Load stays relative to the
    fleet's nominal capacity and the replica features to each role's caps, both given at run
    time (:class:`envs.contract.FleetShape`), not by the contract.

    ## Action Space

    A ``Box(-1, 1, (7,))`` (``(9,)`` when elastic) decoded by
    :class:`envs.contract.ActionContract` into knobs (the same for contracts v2 and v3, whose
    replica knobs are named by role and move every pool of the role):

    ====================  ===============  =====================================================
    knob                  range            real-world counterpart
    ====================  ===============  =====================================================
    cheap_tier_share      0 - 0.8          router weights to the cheap model (llm-d
                                           InferenceModelRewrite; RouteLLM threshold)
    offload_fraction      0 - 0.5          KV cache and decode attention on the host (NEO)
    admission_limit       0.3x - 3x (log)  gateway rate limit as a multiple of nominal capacity
    shed_priority_below   0 - 2 (integer)  shed InferenceObjective priorities below this
    max_context_tokens    1k - 16k (log)   prompt truncation (vLLM truncate_prompt_tokens)
    max_num_seqs_scale    0.25 - 1         batch limit (vLLM --max-num-seqs)
    low_priority_weight   0.05 - 1 (log)   queue weight of the batch tenant (QLM-style)
    <pool>_replicas_      -0.5 - 0.5       elastic only, one per pool (``strong``, ``cheap``):
    change                                 relative change of the pool's desired replicas (its
                                           Deployment's HPA/KEDA target) this interval
    ====================  ===============  =====================================================

    A replica change inside the dead band (``|change| < 0.1``) keeps the desired replicas; any
    other moves them by ``max(1, round(|change| * desired))`` within ``[1, max_replicas]``
    (:func:`envs.contract.next_desired_replicas`). New replicas serve after their provisioning
    delay (about 3 minutes); removed ones drain first.

    ## Rewards

    Error-budget economics (:class:`RewardConfig`), each component reported in
    ``info["reward_components"]``: for every SLO, ``burn * b + overspend * max(0, b - 1)``
    where ``b`` is the step's burn rate (doubled once the budget is exhausted); ``page`` per SLO
    whose page alert fires; ``exhaustion`` once when a budget runs out; and the serving cost:
    busy GPU time at each GPU's price plus the CPU cost of offload, relative to the strong pool's
    initial replicas fully busy, times ``serving``. When elastic, the GPU time charged is the
    *provisioned* one (every replica from the start of its provisioning until it stops, busy or
    idle), since idle capacity is what scaling saves. Optionally (both off by default):
    ``smoothness`` times the step's mean absolute change of the knobs in force, and factors per
    SLI kind on the burn and exhaustion costs of overloaded steps (``overload_weights``). The
    reward is minus the sum.

    ## Starting State

    A scenario draw (:mod:`envs.scenarios`) from ``self.np_random``; the fleet runs
    ``warmup_s`` with neutral knobs so the short windows hold data; each budget starts with a
    fraction uniformly drawn from ``initial_budget_spent`` already spent.

    ## Episode End

    No terminal state (a fleet is never "done"); the episode is truncated after
    ``episode_hours`` of simulated time.

    ## Arguments

    ``scenario`` (name from :data:`envs.scenarios.SCENARIOS`, or a list of names: each reset
    draws one of them from ``self.np_random``, for domain randomisation), ``spec`` (SLO spec or
    path; default: the fleet file's, else :func:`slo.default_spec`), ``control_interval_s``
    (``None``: the fleet file's, 30 for the reference fleet), ``episode_hours`` (``None``: the
    drawn scenario's own length, 24 h for ``elastic-diurnal``, else the fleet file's, 2 for the
    reference fleet), ``warmup_s`` (600),
    ``initial_budget_spent`` ((0, 0.6)), ``reward`` (:class:`RewardConfig`), ``render_mode``
    (``"ansi"`` or ``"rgb_array"``), ``elastic`` (False; True: the pools scale up to
    :data:`envs.scenarios.MAX_REPLICAS` under the replica knobs, the observation has the
    replica features and the serving cost counts provisioned GPU time), ``fleet`` (``None``:
    the reference fleet; a fleet file's :class:`envs.sim.SimConfig` or path: its pools, router,
    tenants, SLO spec, interval and episode length, with scenario loads relative to its measured
    capacity; knobs it has no counterpart for are held neutral and listed in
    ``info["fixed_knobs"]``), ``randomisation`` (``None``; a
    :class:`envs.domain.DomainRandomisation` or its mapping: load, lengths, tenant mix and
    failure rate drawn around the scenario at each reset), ``action_filter`` (``None``; an
    :class:`envs.action_filter.ActionRateLimit` or its mapping, ``{"max_step": 0.1}``: each
    knob moves at most that far per step from the value in force, an integer knob one level,
    the way an exported policy's graph limits it), ``contract`` (2: the observation contract
    v2, one fleet's; 3: v3, any fleet's, see above), ``fleets`` (with ``contract=3``, instead
    of ``fleet``: a list of fleets, each reset draws one from ``self.np_random``; they must
    share one SLO spec, and the first gives the control interval when not given). ``reward``
    may also be a mapping of :class:`RewardConfig`'s fields. The elastic scenarios
    (:data:`envs.scenarios.ELASTIC_SCENARIOS`) are meant for ``elastic=True``; without it their
    replicas stay at their initial count. With it, every scenario's pools may scale.

    ## Version History

    * v0: initial version; later gained ``elastic`` and per-scenario episode lengths
      (``episode_hours=None``), leaving the fixed environment's contracts and dynamics as they
      were; then fleet files (``fleet``), the observation contract v3 (``contract=3``) with
      fleets drawn per episode (``fleets``), the default contract staying v2 so that policies
      trained on it still load; then ``randomisation``, ``action_filter`` and the optional
      reward terms, leaving the contracts and, with them off, the dynamics as they were;
      then ``info["fleet"]``, the name of the episode's fleet.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        scenario: str | Sequence[str] = "steady",
        spec: ServiceSpec | str | None = None,
        control_interval_s: float | None = None,
        episode_hours: float | None = None,
        warmup_s: float = 600.0,
        initial_budget_spent: tuple[float, float] = (0.0, 0.6),
        reward: RewardConfig | None = None,
        render_mode: str | None = None,
        elastic: bool = False,
        fleet: FleetArgument = None,
        randomisation: DomainRandomisation | Mapping[str, Any] | None = None,
        action_filter: ActionRateLimit | Mapping[str, Any] | None = None,
        contract: int = 2,
        fleets: Sequence[FleetArgument] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        if contract not in (2, 3):
            raise ValueError(f"contract must be 2 or 3 (the observation contract), got {contract}")
        self.fleets = _governed_fleets(fleet, fleets, contract)
        self.fleet_names = tuple(fleet_name(f) for f in (fleets or [fleet]))
        self.fleet, self.fleet_name = self.fleets[0], self.fleet_names[0]
        if control_interval_s is None:
            control_interval_s = self.fleet.config.control_interval_s
        hours_ok = episode_hours is None or episode_hours > 0
        if control_interval_s <= 0 or not hours_ok or warmup_s < 0:
            raise ValueError("control_interval_s and episode_hours must be > 0, warmup_s >= 0")
        low, high = initial_budget_spent
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"initial_budget_spent must satisfy 0 <= low <= high <= 1, got {low}, {high}"
            )
        names = (scenario,) if isinstance(scenario, str) else tuple(scenario)
        if not names:
            raise ValueError("scenario: give a scenario name or a non-empty list of names")
        self.scenarios = tuple(get_scenario(name) for name in names)
        self.scenario = self.scenarios[0]
        spec = spec if spec is not None else self.fleet.config.slo_spec
        self.slo_spec = load_spec(spec) if spec is not None else default_spec()
        self.control_interval_s = float(control_interval_s)
        self.episode_hours = episode_hours
        self.max_steps = self._episode_steps(self.scenario)
        self.warmup_s = float(warmup_s)
        self.initial_budget_spent = (float(low), float(high))
        self.reward_config = RewardConfig.from_mapping(reward)
        self.randomisation = (
            None if randomisation is None else DomainRandomisation.from_mapping(randomisation)
        )
        self.render_mode = render_mode
        self.elastic = bool(elastic)

        probe = BudgetEngine(self.slo_spec)
        self.slo_names = probe.slo_names
        self.slo_kinds = {s.name: s.sli.llm.kind for s in probe.slos}
        self.observation_contract = self._contracts(contract, probe.spec_fingerprint())
        self._window_index = [probe.windows.index(w) for w in self.observation_contract.windows]
        low_obs, high_obs = self.observation_contract.bounds()
        self.observation_space = spaces.Box(low_obs, high_obs, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (len(self.action_contract.knobs),), np.float32)
        self._init_action_shaping(action_filter)

    def _contracts(self, version: int, spec_digest: str) -> ObservationContract:
        """Set the action contract and return the observation contract of ``version``: v2
        observes this fleet's pools by name, v3 (:func:`envs.contract.
        fleet_independent_contract`) any fleet's by role."""
        pools = ROLES if version == 3 else tuple(p.name for p in self.fleet.config.pools)
        knobs = elastic_knobs(pools) if self.elastic else DEFAULT_KNOBS
        self.action_contract = ActionContract(knobs=knobs)
        windows = ("5m", "30m", "1h", "6h")
        names = self.action_contract.names
        if version == 3:
            return fleet_independent_contract(
                self.slo_names, windows, names, spec_digest, scales=self.elastic
            )
        caps = tuple(p.replica_slots for p in scalable(self.fleet.config).pools)
        return ObservationContract(
            slo_names=self.slo_names,
            windows=windows,
            pools=pools,
            knob_names=names,
            spec_digest=spec_digest,
            nominal_capacity_rps=self.fleet.capacity_rps,
            max_replicas=caps if self.elastic else (),
        )

    # ------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if len(self.scenarios) > 1:
            self.scenario = self.scenarios[int(self.np_random.integers(len(self.scenarios)))]
        if len(self.fleets) > 1:
            drawn = int(self.np_random.integers(len(self.fleets)))
            self.fleet, self.fleet_name = self.fleets[drawn], self.fleet_names[drawn]
        self.max_steps = self._episode_steps(self.scenario)
        self.setup: ScenarioSetup = self._build_scenario()
        if self.elastic:
            self.setup = replace(self.setup, config=scalable(self.setup.config))
        sim_seed = int(self.np_random.integers(2**63 - 1))
        self.sim = Simulator(self.setup.config, self.setup.workload, seed=sim_seed)
        self.engine = BudgetEngine(self.slo_spec)
        self._prices = self._pool_prices()
        self._snapshot = CompiledSnapshot(self.engine)
        self._feed = CompiledIngest(self.engine)
        self._set_knobs(neutral_knob_values(self.action_contract.names))
        self._contract_pool = self._observed_pools()
        self._replica_caps = self._check_replica_caps()
        self._provisioned_mark = (0.0, np.zeros(len(self.sim.pool_names)))
        shape = self.fleet.shape(self.setup.config) if self.observation_contract.by_role else None
        self._signal_tracker = FleetSignalTracker(
            self.observation_contract, self.control_interval_s, shape
        )
        self._arrivals_seen = 0
        self._preemptions_seen = 0
        self._rolled_out = False
        self.steps = 0
        self.sim.fleet_stats()  # start the time-weighted means here
        self._advance(self.warmup_s)
        spent = self.np_random.uniform(*self.initial_budget_spent, len(self.slo_names))
        self.engine.set_budget_spent(spent, assumed_total_events=self._period_events())
        self.budget = self._snapshot()
        self._exhausted = self.budget.budget_remaining <= 0.0
        self._last_info = self._info(np.zeros(len(self.slo_names)), {}, 0.0)
        return self._observation(), dict(self._last_info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        previous = self._knob_units
        self._set_knobs(self.fleet.in_force(self.action_contract.decode(self._filter(action))))
        if self.elastic:
            self._scale_pools()
        good0, total0 = self.engine.cumulative_counts()
        arrivals0 = self.sim.arrivals
        cost = self._advance(self.sim.now + self.control_interval_s)
        good1, total1 = self.engine.cumulative_counts()
        step_burn = self._step_burn(good1 - good0, total1 - total0)
        components = self._reward_components(step_burn, cost, self._overloaded(arrivals0))
        components["smoothness"] = self._smoothness_cost(previous)
        reward = -float(sum(components.values()))
        self.steps += 1
        truncated = self.steps >= self.max_steps
        self._last_info = self._info(step_burn, components, cost)
        return self._observation(), reward, False, truncated, dict(self._last_info)

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            return self._render_text()
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        return None

    # ------------------------------------------------------------------------------------------
    # Domain randomisation and action shaping

    def _build_scenario(self) -> ScenarioSetup:
        """This episode's draw of the scenario, on a fleet drawn by :attr:`randomisation`
        (its draws added to the setup's parameters) or on the governed fleet itself."""
        if self.randomisation is None:
            return self.scenario.build(self.np_random, self.warmup_s, self.fleet)
        fleet: RandomisedFleet = self.randomisation.sample(self.np_random, self.fleet)
        setup = self.scenario.build(self.np_random, self.warmup_s, fleet)
        setup.parameters.update(fleet.parameters or {})
        return setup

    def _init_action_shaping(self, action_filter: ActionRateLimit | Mapping | None) -> None:
        """The action filter, and the per-SLO factors of :attr:`RewardConfig.overload_weights`."""
        if action_filter is not None and not isinstance(action_filter, ActionRateLimit):
            action_filter = ActionRateLimit.from_mapping(action_filter)
        self.action_filter: ActionRateLimit | None = action_filter
        if action_filter is not None:
            self._step_limits = action_filter.step_limits(self.action_contract)
        weights = self.reward_config.overload_weights
        self._overload_factors = np.array(
            [weights.get(self.slo_kinds[n], 1.0) for n in self.slo_names]
        )

    def _filter(self, action: np.ndarray) -> np.ndarray:
        """The action that acts: through :attr:`action_filter` from the knobs in force (those
        the observation shows), when there is one."""
        if self.action_filter is None:
            return action
        return self.action_filter.apply(action, self._knob_units, self._step_limits)

    def _smoothness_cost(self, previous: np.ndarray) -> float:
        """:attr:`RewardConfig.smoothness` times the mean absolute change of the knobs in force
        since they were ``previous`` (both in action units)."""
        change = float(np.mean(np.abs(self._knob_units - previous)))
        return self.reward_config.smoothness * change

    def _overloaded(self, arrivals_before: int) -> bool:
        """Whether the step's arrivals reached :attr:`RewardConfig.overload_load` times the
        nominal capacity."""
        rate = (self.sim.arrivals - arrivals_before) / self.control_interval_s
        return rate >= self.reward_config.overload_load * self.fleet.capacity_rps

    # ------------------------------------------------------------------------------------------
    # Simulation

    def _episode_steps(self, scenario: Scenario) -> int:
        """Control steps of an episode of ``scenario``: ``episode_hours`` if given, else the
        scenario's own length, else the fleet's (:data:`envs.scenarios.DEFAULT_EPISODE_HOURS`
        for the reference fleet)."""
        hours = self.episode_hours or scenario.episode_hours or self.fleet.config.episode_hours
        return int(round(hours * 3600.0 / self.control_interval_s))

    def _observed_pools(self) -> np.ndarray:
        """Index of each simulated pool among the observation contract's pools: its own name's
        in v2, its role's in v3."""
        if self.observation_contract.by_role:
            roles = [role_of_tier(p.tier) for p in self.setup.config.pools]
            return np.array([ROLES.index(r) for r in roles])
        return np.array([self.observation_contract.pools.index(n) for n in self.sim.pool_names])

    def _check_replica_caps(self) -> list[int]:
        """Replica slots of every pool; an elastic v2 fleet's must be the contract's caps (the
        replica features are relative to them; v3's to the fleet's own)."""
        caps = [p.replica_slots for p in self.setup.config.pools]
        if not self.elastic or self.observation_contract.by_role:
            return caps
        expected = [self.observation_contract.max_replicas[i] for i in self._contract_pool]
        if caps != expected:
            raise ValueError(
                f"scenario {self.scenario.name!r}: pools {list(self.sim.pool_names)} have "
                f"max_replicas {caps}, the elastic contract {expected}"
            )
        return caps

    def _scale_pools(self) -> None:
        """Apply the replica knobs: each moves its pool's desired replicas (a change inside the
        dead band leaves the pool alone)."""
        desired = self.sim.desired_replicas
        knob_pools = [self.observation_contract.pools[i] for i in self._contract_pool]
        for pool, knob_pool, cap in zip(
            self.sim.pool_names, knob_pools, self._replica_caps, strict=True
        ):
            change = self.knob_values[replicas_knob_name(knob_pool)]
            target = next_desired_replicas(desired[pool], change, cap)
            if target != desired[pool]:
                self.sim.set_desired_replicas(pool, target)

    def _period_events(self) -> np.ndarray:
        """Per SLO, the events a period holds at this scenario's mean rate (the weight of the
        spent prior): requests times the SLO's events per request seen in the warm-up, which
        is about 1 for most SLOs but the output length for per-token ITL (1 without a warm-up).
        """
        _, counted = self.engine.cumulative_counts()
        arrivals = self.sim.arrivals
        per_request = np.where(counted > 0, counted / max(arrivals, 1), 1.0)
        return per_request * self.setup.workload.mean_rate * self.slo_spec.budgetpilot.period

    def _set_knobs(self, values: dict[str, float]) -> None:
        """Put knob ``values`` in force in the simulator; the action units they encode to are
        kept for the filter, the smoothness cost and the observation."""
        self.knob_values = values
        self._knob_units = self.action_contract.encode(values)
        self.sim.set_knobs(sim_knobs(values, self.fleet))

    def _advance(self, until: float) -> float:
        """Simulate to ``until`` (applying the scenario's rollout), feed the budget engine, and
        return the serving cost of the interval relative to the strong pool fully busy."""
        rollout = self.setup.rollout_at_s
        if rollout is not None and not self._rolled_out and rollout <= until:
            self._ingest(self.sim.advance(max(rollout, self.sim.now)))
            self.fleet.roll_out(self.sim, self.setup.rollout_capability)
            self.engine.start_phase("rollout", self.sim.now)
            self._rolled_out = True
        self._ingest(self.sim.advance(until))
        self.engine.advance_to(until)
        self.budget = self._snapshot()
        self.stats = self.sim.fleet_stats()
        return self._serving_cost(self.stats)

    def _ingest(self, events: np.ndarray) -> None:
        self._feed(events)

    def _serving_cost(self, stats: FleetStats) -> float:
        """GPU time (busy, or provisioned when elastic) and CPU offload at their prices since the
        previous call, per second, relative to the strong pool's initial replicas fully busy."""
        pools = self.setup.config.pools
        gpu_price, replica_price = self._prices
        prices = replica_price[stats.pool]
        offload = self.knob_values["offload_fraction"] * self.reward_config.offload_cpu_share
        strong_up = (stats.pool == 0) & (stats.lifecycle != ReplicaState.STOPPED)
        if self.elastic:
            gpu = self._provisioned_gpu_rate(stats) @ gpu_price
        else:
            gpu = np.sum(prices * stats.busy_fraction)
        spent = float(gpu + offload * np.sum(prices[strong_up]))
        return spent / float(replica_price[0] * pools[0].replicas)

    def _pool_prices(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pool, the price of a GPU and of a replica (its ``tp`` GPUs), per hour (read once
        per episode: a pool's GPUs never change within one)."""
        pools = self.setup.config.pools
        gpu_price = np.array([p.gpu_spec().cost_per_hour for p in pools])
        return gpu_price, gpu_price * np.array([p.tp for p in pools])

    def _provisioned_gpu_rate(self, stats: FleetStats) -> np.ndarray:
        """Per pool, GPUs provisioned on average since the previous call."""
        t0, gpu_s0 = self._provisioned_mark
        self._provisioned_mark = (stats.t, stats.pool_provisioned_gpu_s)
        span = stats.t - t0
        if span <= 0:
            return np.zeros(len(gpu_s0))
        return (stats.pool_provisioned_gpu_s - gpu_s0) / span

    def _step_burn(self, good: np.ndarray, total: np.ndarray) -> np.ndarray:
        bad = np.maximum(total - good, 0.0)
        ratio = np.divide(bad, total, out=np.zeros_like(bad), where=total > 0)
        return ratio / (1.0 - self.engine.objectives)

    def _reward_components(
        self, step_burn: np.ndarray, cost: float, overloaded: bool = False
    ) -> dict[str, float]:
        rc = self.reward_config
        burn = np.minimum(step_burn, MAX_REWARD_BURN)
        exhausted = self.budget.budget_remaining <= 0.0
        newly = exhausted & ~self._exhausted
        self._exhausted = exhausted
        multiplier = np.where(exhausted, rc.exhausted_multiplier, 1.0)
        weight = self._overload_factors if overloaded else 1.0
        per_slo = (
            weight * multiplier * (rc.burn * burn + rc.overspend * np.maximum(burn - 1.0, 0.0))
        )
        page = self.budget.page
        components = {f"burn/{n}": float(c) for n, c in zip(self.slo_names, per_slo, strict=True)}
        components["page"] = rc.page * float(page.sum())
        components["exhaustion"] = rc.exhaustion * float(np.sum(weight * newly))
        components["serving"] = rc.serving * cost
        return components

    # ------------------------------------------------------------------------------------------
    # Observation

    def _observation(self) -> np.ndarray:
        burn = self.budget.burn_rates[:, self._window_index]
        alerts = np.where(self.budget.page, 1.0, np.where(self.budget.ticket, 0.5, 0.0))
        knob_units = dict(zip(self.action_contract.names, self._knob_units.tolist(), strict=True))
        return self.observation_contract.build(
            burn, self.budget.budget_remaining, alerts, self._fleet_signals(), knob_units
        )

    def _fleet_signals(self) -> FleetSignals:
        stats = self.stats
        desired = np.zeros(len(self.observation_contract.pools))
        np.add.at(desired, self._contract_pool, stats.pool_desired)  # v3: a role's pools
        gauges = ReplicaGauges(
            pool=self._contract_pool[stats.pool],
            healthy=stats.healthy > 0,
            kv_usage=stats.kv_usage,
            kv_usage_mean=stats.kv_usage_mean,
            waiting=stats.waiting,
            running=stats.running,
            max_num_seqs=stats.max_num_seqs,
            lifecycle=stats.lifecycle,  # the codes of envs.contract.ReplicaLifecycle
            pool_desired=desired,
        )
        arrivals = self.sim.arrivals - self._arrivals_seen
        self._arrivals_seen = self.sim.arrivals
        preemptions = int(stats.preemptions.sum())
        new_preemptions = preemptions - self._preemptions_seen
        self._preemptions_seen = preemptions
        return self._signal_tracker.update(gauges, arrivals, new_preemptions)

    # ------------------------------------------------------------------------------------------
    # Info and rendering

    def _info(self, step_burn: np.ndarray, components: dict[str, float], cost: float) -> dict:
        info = {
            "time_s": self.sim.now,
            "step_burn_rates": dict(zip(self.slo_names, step_burn.tolist(), strict=True)),
            "budget_remaining": dict(
                zip(self.slo_names, self.budget.budget_remaining.tolist(), strict=True)
            ),
            "alerts": {
                n: AlertLevel(a).name.lower()
                for n, a in zip(self.slo_names, self.budget.alert_levels.tolist(), strict=True)
            },
            "reward_components": components,
            "knobs": dict(self.knob_values),
            "serving_cost": cost,
            "scenario": self.scenario.name,
            "fleet": self.fleet_name,
            "scenario_parameters": dict(self.setup.parameters),
            "fixed_knobs": dict(self.fleet.fixed_knobs),
        }
        if self.elastic:
            info["replicas"] = self._replica_counts()
        return info

    def _replica_counts(self) -> dict[str, dict[str, int]]:
        """Per pool, its replicas desired, provisioning, serving and draining now."""
        stats = self.stats
        counts = {
            "desired": stats.pool_desired,
            "provisioning": stats.pool_provisioning,
            "serving": stats.pool_serving,
            "draining": stats.pool_draining,
        }
        return {
            pool: {state: int(n[p]) for state, n in counts.items()}
            for p, pool in enumerate(stats.pool_names)
        }

    def _render_text(self) -> str:
        info = self._last_info
        lines = [f"t={info['time_s']:8.0f}s  scenario={self.scenario.name}"]
        for name in self.slo_names:
            remaining = info["budget_remaining"][name]
            bar = "#" * int(max(0.0, min(1.0, remaining)) * 20)
            lines.append(
                f"  {name:28s} budget {remaining:6.1%} |{bar:20s}| "
                f"step burn {info['step_burn_rates'][name]:6.2f}  alert {info['alerts'][name]}"
            )
        knobs = ", ".join(f"{k}={v:.3g}" for k, v in info["knobs"].items())
        lines.append(f"  knobs: {knobs}")
        return "\n".join(lines)

    def _render_rgb(self) -> np.ndarray:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        info = self._last_info
        fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
        remaining = [info["budget_remaining"][n] for n in self.slo_names]
        colors = ["tab:red" if r <= 0.25 else "tab:green" for r in remaining]
        ax.barh(self.slo_names, remaining, color=colors)
        ax.set_xlim(-0.2, 1.0)
        ax.set_xlabel("budget remaining")
        ax.set_title(f"{self.scenario.name}  t={info['time_s']:.0f}s")
        fig.tight_layout()
        fig.canvas.draw()
        image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
        return image
