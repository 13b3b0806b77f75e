"""The Gymnasium environment: govern a simulated LLM fleet by its error budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.budget_kernel import CompiledIngest, CompiledSnapshot
from envs.contract import (
    DEFAULT_KNOBS,
    ActionContract,
    FleetSignals,
    FleetSignalTracker,
    ObservationContract,
    ReplicaGauges,
    elastic_knobs,
    neutral_knob_values,
    next_desired_replicas,
    replicas_knob_name,
)
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
    """

    burn: float = 0.02
    overspend: float = 0.1
    page: float = 1.0
    exhaustion: float = 10.0
    exhausted_multiplier: float = 2.0
    serving: float = 0.5
    offload_cpu_share: float = 0.2


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

    ## Action Space

    A ``Box(-1, 1, (7,))`` (``(9,)`` when elastic) decoded by
    :class:`envs.contract.ActionContract` into knobs:

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
    idle), since idle capacity is what scaling saves. The reward is minus the sum.

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
    ``info["fixed_knobs"]``). The elastic scenarios
    (:data:`envs.scenarios.ELASTIC_SCENARIOS`) are meant for ``elastic=True``; without it their
    replicas stay at their initial count. With it, every scenario's pools may scale.

    ## Version History

    * v0: initial version; later gained ``elastic`` and per-scenario episode lengths
      (``episode_hours=None``), leaving the fixed environment's contracts and dynamics as they
      were.
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
        fleet: SimConfig | str | Path | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        self.fleet = governed_fleet(fleet)
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
        self.reward_config = reward or RewardConfig()
        self.render_mode = render_mode
        self.elastic = bool(elastic)

        probe = BudgetEngine(self.slo_spec)
        self.slo_names = probe.slo_names
        self.slo_kinds = {s.name: s.sli.llm.kind for s in probe.slos}
        pools = tuple(p.name for p in self.fleet.config.pools)
        knobs = elastic_knobs(pools) if self.elastic else DEFAULT_KNOBS
        self.action_contract = ActionContract(knobs=knobs)
        caps = tuple(p.replica_slots for p in scalable(self.fleet.config).pools)
        self.observation_contract = ObservationContract(
            slo_names=self.slo_names,
            windows=("5m", "30m", "1h", "6h"),
            pools=pools,
            knob_names=self.action_contract.names,
            spec_digest=probe.spec_fingerprint(),
            nominal_capacity_rps=self.fleet.capacity_rps,
            max_replicas=caps if self.elastic else (),
        )
        self._window_index = [probe.windows.index(w) for w in self.observation_contract.windows]
        low_obs, high_obs = self.observation_contract.bounds()
        self.observation_space = spaces.Box(low_obs, high_obs, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (len(self.action_contract.knobs),), np.float32)

    # ------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if len(self.scenarios) > 1:
            self.scenario = self.scenarios[int(self.np_random.integers(len(self.scenarios)))]
        self.max_steps = self._episode_steps(self.scenario)
        self.setup: ScenarioSetup = self.scenario.build(self.np_random, self.warmup_s, self.fleet)
        if self.elastic:
            self.setup = replace(self.setup, config=scalable(self.setup.config))
        sim_seed = int(self.np_random.integers(2**63 - 1))
        self.sim = Simulator(self.setup.config, self.setup.workload, seed=sim_seed)
        self.engine = BudgetEngine(self.slo_spec)
        self._prices = self._pool_prices()
        self._snapshot = CompiledSnapshot(self.engine)
        self._feed = CompiledIngest(self.engine)
        self.knob_values = neutral_knob_values(self.action_contract.names)
        self._apply_knobs()
        self._contract_pool = np.array(
            [self.observation_contract.pools.index(n) for n in self.sim.pool_names]
        )
        self._replica_caps = self._check_replica_caps()
        self._provisioned_mark = (0.0, np.zeros(len(self.sim.pool_names)))
        self._signal_tracker = FleetSignalTracker(
            self.observation_contract, self.control_interval_s
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
        self.knob_values = self.fleet.in_force(self.action_contract.decode(action))
        self._apply_knobs()
        if self.elastic:
            self._scale_pools()
        good0, total0 = self.engine.cumulative_counts()
        cost = self._advance(self.sim.now + self.control_interval_s)
        good1, total1 = self.engine.cumulative_counts()
        step_burn = self._step_burn(good1 - good0, total1 - total0)
        components = self._reward_components(step_burn, cost)
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
    # Simulation

    def _episode_steps(self, scenario: Scenario) -> int:
        """Control steps of an episode of ``scenario``: ``episode_hours`` if given, else the
        scenario's own length, else the fleet's (:data:`envs.scenarios.DEFAULT_EPISODE_HOURS`
        for the reference fleet)."""
        hours = self.episode_hours or scenario.episode_hours or self.fleet.config.episode_hours
        return int(round(hours * 3600.0 / self.control_interval_s))

    def _check_replica_caps(self) -> list[int]:
        """Replica slots of every pool; an elastic fleet's must be the contract's caps (the
        replica features are relative to them)."""
        caps = [p.replica_slots for p in self.setup.config.pools]
        if not self.elastic:
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
        for pool, cap in zip(self.sim.pool_names, self._replica_caps, strict=True):
            change = self.knob_values[replicas_knob_name(pool)]
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

    def _apply_knobs(self) -> None:
        self.sim.set_knobs(sim_knobs(self.knob_values, self.fleet))

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

    def _reward_components(self, step_burn: np.ndarray, cost: float) -> dict[str, float]:
        rc = self.reward_config
        burn = np.minimum(step_burn, MAX_REWARD_BURN)
        exhausted = self.budget.budget_remaining <= 0.0
        newly = exhausted & ~self._exhausted
        self._exhausted = exhausted
        multiplier = np.where(exhausted, rc.exhausted_multiplier, 1.0)
        per_slo = multiplier * (rc.burn * burn + rc.overspend * np.maximum(burn - 1.0, 0.0))
        page = self.budget.page
        components = {f"burn/{n}": float(c) for n, c in zip(self.slo_names, per_slo, strict=True)}
        components["page"] = rc.page * float(page.sum())
        components["exhaustion"] = rc.exhaustion * float(newly.sum())
        components["serving"] = rc.serving * cost
        return components

    # ------------------------------------------------------------------------------------------
    # Observation

    def _observation(self) -> np.ndarray:
        burn = self.budget.burn_rates[:, self._window_index]
        alerts = np.where(self.budget.page, 1.0, np.where(self.budget.ticket, 0.5, 0.0))
        knob_units = {
            k.name: k.to_unit(self.knob_values[k.name]) for k in self.action_contract.knobs
        }
        return self.observation_contract.build(
            burn, self.budget.budget_remaining, alerts, self._fleet_signals(), knob_units
        )

    def _fleet_signals(self) -> FleetSignals:
        stats = self.stats
        desired = np.zeros(len(self.observation_contract.pools))
        desired[self._contract_pool] = stats.pool_desired
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
