"""The autoscalers: baselines that scale pools, as operators of LLM fleets run them.

=====================  ==========================================================================
autoscaler             rule
=====================  ==========================================================================
``hpa``                the Kubernetes Horizontal Pod Autoscaler on every pool: replicas for a
                       target KV-cache usage or queue depth, with its tolerance and its
                       scale-up and scale-down stabilisation windows
``budget-autoscaler``  scale the strong pool by its budgets: one replica up on a latency or
                       availability page (or a lasting ticket), one down once every budget has
                       burnt slowly for a while
``wva``                llm-d's Workload Variant Autoscaler in saturation mode: a replica up on the
                       cheapest variant when the spare KV-cache or queue capacity of the
                       non-saturated replicas runs low, a replica down on the most expensive one
                       when the others can absorb its load
``kpa``                Knative's Pod Autoscaler (as AIBrix offers it for LLM serving): replicas
                       for a target concurrency averaged over a stable window, a panic mode on a
                       short window that scales up fast and never down, a scale-down delay
=====================  ==========================================================================

They set only the replica knobs (the others stay neutral) and need an elastic environment
(``LLMFleetEnv(elastic=True)``). WVA's and KPA's parameters carry their upstream names and
documented defaults and ranges (:class:`UpstreamParams`); a parameter dict with an unknown name
or a value out of range is refused, naming the parameter. Each autoscaler's
:meth:`~ScalingController.frontier_sweep` varies its main target over a documented range, for the
benchmark's cost-against-budget frontiers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

import numpy as np

from agents.base import LATENCY_KINDS, ControlContext, Controller, ObservationView, params_grid
from envs.contract import replica_change_toward, replicas_knob_name
from slo.durations import parse_duration

#: vLLM's default ``max_num_seqs``, every replica of the simulated fleets: the observation gives
#: running requests relative to it, KPA's concurrency counts them.
VLLM_MAX_NUM_SEQS = 256


def setting(
    default: Any,
    low: float = -math.inf,
    high: float = math.inf,
    upstream: str | None = None,
    *,
    above: bool = False,
    duration: bool = False,
    choices: tuple = (),
) -> Any:
    """A parameter of an :class:`UpstreamParams` dataclass: its default, documented range
    (``[low, high]``, or ``(low, high]`` with ``above``), upstream name (default: the field's)
    and whether it is a duration (seconds, or a string such as ``"60s"``)."""
    meta = {"range": (low, high), "upstream": upstream, "above": above, "duration": duration}
    return field(default=default, metadata=meta | {"choices": choices})


@dataclass(frozen=True)
class UpstreamParams:
    """Parameters named as upstream names them, checked against their documented ranges.

    :meth:`as_dict` and :meth:`from_dict` use the upstream names (``"stable-window"``); a value
    outside its range or an unknown name raises ``ValueError`` naming the parameter.
    """

    #: The autoscaler's name, for messages.
    autoscaler: ClassVar[str] = "autoscaler"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("duration") and isinstance(value, str):
                value = self._duration(f, value)
                object.__setattr__(self, f.name, value)
            self._check(f, value)

    @classmethod
    def upstream_name(cls, f: Field) -> str:
        return f.metadata.get("upstream") or f.name

    def _duration(self, f: Field, value: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(self._message(f, f"must be a duration: {exc}")) from None

    def _message(self, f: Field, problem: str) -> str:
        return f"{self.autoscaler} parameter {self.upstream_name(f)!r} {problem}"

    def _check(self, f: Field, value: Any) -> None:
        choices = f.metadata.get("choices")
        if choices:
            if value not in choices:
                raise ValueError(self._message(f, f"must be one of {list(choices)}, got {value!r}"))
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(self._message(f, f"must be a number, got {value!r}"))
        low, high = f.metadata["range"]
        above = f.metadata["above"]
        if not (value > low if above else value >= low) or not value <= high:
            shown = f"{'(' if above else '['}{low:g}, {high:g}]"
            raise ValueError(self._message(f, f"must be in {shown}, got {value!r}"))

    def as_dict(self) -> dict[str, Any]:
        """The parameters by upstream name."""
        return {self.upstream_name(f): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UpstreamParams:
        """Parameters from a dict by upstream name; unknown names are refused."""
        names = {cls.upstream_name(f): f.name for f in fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for autoscaler "
                f"{cls.autoscaler!r}; known: {', '.join(names)}"
            )
        return cls(**{names[key]: value for key, value in values.items()})


class ScalingController(Controller):
    """Base of the baselines that scale pools through the replica knobs.

    Parameters
    ----------
    context:
        Contracts of the governed fleet; they must have the replica knob of every pool in
        ``pools`` (an elastic environment), else ``ValueError`` names the missing knob.
    pools:
        The pools this controller scales.
    """

    needs_elastic = True
    #: The parameter :meth:`frontier_sweep` varies (its name in the parameter dicts).
    frontier_parameter: ClassVar[str] = ""

    def __init__(self, context: ControlContext, pools: Sequence[str]) -> None:
        super().__init__(context)
        for pool in pools:
            knob = replicas_knob_name(pool)
            if knob not in context.action.names:
                raise ValueError(
                    f"baseline {self.name!r} scales pool {pool!r} through knob {knob!r}, which "
                    f"the action contract lacks (knobs: {', '.join(context.action.names)}): "
                    "run it in an elastic environment, LLMFleetEnv(elastic=True)"
                )
        self.pools = tuple(pools)

    def scale_to(self, view: ObservationView, targets: Mapping[str, int]) -> np.ndarray:
        """The action moving each pool's desired replicas toward its target (as far as one
        interval allows), every other knob neutral."""
        return self.knobs_to_action(
            {
                replicas_knob_name(pool): replica_change_toward(
                    view.replicas(pool, "desired"), target
                )
                for pool, target in targets.items()
            }
        )

    def bounded(self, pool: str, replicas: int, min_first: int = 1) -> int:
        """``replicas`` within ``[minimum, max_replicas]`` of ``pool``: the minimum is
        ``min_first`` for the first (strong) pool, 1 for the others (with routing neutral the
        cheap pool serves only fallback traffic)."""
        cap = self.context.observation.max_replicas[self.context.observation.pools.index(pool)]
        floor = min_first if pool == self.context.observation.pools[0] else 1
        return min(cap, max(floor, replicas))

    @staticmethod
    def frontier_values(params: object) -> tuple[float, ...]:
        """The documented range of the main target swept for the cost-against-budget frontier
        (it may depend on ``params``, e.g. on the metric)."""
        raise NotImplementedError

    @classmethod
    def frontier_sweep(cls, params: object) -> list[object]:
        """``params`` with the main target (:attr:`frontier_parameter`) set to every value of
        :meth:`frontier_values` but its own: the other points of the autoscaler's frontier."""
        own = getattr(params, cls.frontier_parameter)
        return [
            replace(params, **{cls.frontier_parameter: value})
            for value in cls.frontier_values(params)
            if not math.isclose(value, own)
        ]


@dataclass(frozen=True)
class HpaParams(UpstreamParams):
    """Settings of :class:`HorizontalPodAutoscaler` (windows in control intervals: 10 = 300 s,
    Kubernetes' default scale-down window, at the environment's 30 s interval).
    ``min_replicas`` is the strong pool's ``minReplicas`` (the first pool of the contract); the
    cheap pool's is 1 (with routing neutral it serves only fallback traffic)."""

    autoscaler: ClassVar[str] = "hpa"

    metric: Literal["kv_usage", "waiting"] = setting("kv_usage", choices=("kv_usage", "waiting"))
    target: float = setting(0.3, 0.0, above=True)
    tolerance: float = setting(0.1, 0.0, 1.0)
    scale_up_window: int = setting(0, 0)
    scale_down_window: int = setting(10, 0)
    min_replicas: int = setting(1, 1)


class HorizontalPodAutoscaler(ScalingController):
    """The Kubernetes HPA algorithm on every pool, fed by the observation's pool features.

    Each interval, per pool: the metric is the KV-cache usage averaged over the pool's serving
    replicas (``kv_usage``, what ``vllm:kv_cache_usage_perc`` gives) or the requests waiting per
    replica (``waiting``, ``vllm:num_requests_waiting``, a KEDA-style queue target). Within
    ``tolerance`` of the target the recommendation is the current desired count; otherwise it is
    ``ceil(serving * metric / target)``, in ``[minReplicas, max_replicas]`` (replicas still
    provisioning count as using nothing, as HPA treats pods that are not ready on a scale-up).
    The stabilisation then scales up to the *lowest* recommendation of the last
    ``scale_up_window`` intervals and down to the *highest* of the last ``scale_down_window``
    (both counting this one), and the replica knob moves toward it, at most 50% per interval.
    An episode starts as if the autoscaler had recommended the current count all along (it ran
    during the warm-up), so it does not scale down at once on an empty history.
    """

    name = "hpa"

    def __init__(self, context: ControlContext, params: HpaParams | None = None) -> None:
        super().__init__(context, context.observation.pools)
        self.params = params or HpaParams()
        self.reset()

    def reset(self) -> None:
        self._horizon = max(self.params.scale_up_window, self.params.scale_down_window, 1)
        self._history: dict[str, deque[int]] = {
            pool: deque(maxlen=self._horizon) for pool in self.pools
        }

    def act(self, observation: np.ndarray) -> np.ndarray:
        view = self.view(observation)
        targets = {}
        for pool in self.pools:
            desired = view.replicas(pool, "desired")
            history = self._history[pool]
            if not history:
                history.extend([desired] * self._horizon)
            history.append(self._recommendation(view, pool, desired))
            up = min(list(history)[-max(self.params.scale_up_window, 1) :])
            down = max(list(history)[-max(self.params.scale_down_window, 1) :])
            targets[pool] = up if desired < up else down if desired > down else desired
        return self.scale_to(view, targets)

    def _recommendation(self, view: ObservationView, pool: str, desired: int) -> int:
        p = self.params
        serving = view.replicas(pool, "serving")
        if p.metric == "kv_usage":
            metric = view.pool(pool, "kv_usage_mean")
        else:
            metric = math.expm1(view.pool(pool, "waiting_per_replica"))
        ratio = metric / p.target
        if serving == 0 or abs(ratio - 1.0) <= p.tolerance:
            return desired
        # Observations are float32: without the slack, 2 * 0.6 / 0.3 would round up to 5.
        return self.bounded(pool, math.ceil(serving * ratio - 1e-6), p.min_replicas)

    #: The targets of the grid and of the frontier sweep, per metric.
    TARGETS: ClassVar[dict[str, tuple[float, ...]]] = {
        "kv_usage": (0.05, 0.1, 0.2, 0.4),
        "waiting": (0.25, 1.0, 4.0),
    }
    frontier_parameter = "target"

    @staticmethod
    def frontier_values(params: HpaParams) -> tuple[float, ...]:
        """KV-usage targets 2.5-40 %, or 0.25-4 requests waiting per replica."""
        if params.metric == "kv_usage":
            return (0.025, *HorizontalPodAutoscaler.TARGETS["kv_usage"])
        return HorizontalPodAutoscaler.TARGETS[params.metric]

    @staticmethod
    def param_grid() -> Iterator[HpaParams]:
        for metric, targets in HorizontalPodAutoscaler.TARGETS.items():
            yield from params_grid(
                HpaParams,
                metric=(metric,),
                target=targets,
                scale_down_window=(10, 40),
                min_replicas=(1, 2),
            )


@dataclass(frozen=True)
class BudgetAutoscalerParams:
    """Settings of :class:`BudgetAutoscaler` (durations in control intervals)."""

    ticket_intervals: int = 20  # 0: tickets never scale up
    cooldown: int = 0
    calm_burn: float = 1.0
    calm_window: str = "30m"
    hold: int = 20


class BudgetAutoscaler(ScalingController):
    """Scale the strong pool by its error budgets, as an SRE would.

    - Scale up one replica when a latency or availability SLO pages, or has had a ticket or a
      page for ``ticket_intervals`` intervals in a row; only when no replica of the pool is
      still provisioning and ``cooldown`` intervals after the previous scale-up.
    - Scale down one replica when every SLO's burn rate over ``calm_window`` has stayed below
      ``calm_burn`` for ``hold`` intervals in a row since the last scale (then count again).
    """

    name = "budget-autoscaler"
    pool = "strong"

    def __init__(
        self, context: ControlContext, params: BudgetAutoscalerParams | None = None
    ) -> None:
        super().__init__(context, (self.pool,))
        self.params = params or BudgetAutoscalerParams()
        self._alerting = context.slos_of_kind(LATENCY_KINDS | {"availability"})
        self._slos = tuple(context.slo_kinds)
        self.reset()

    def reset(self) -> None:
        self._alert_run = 0
        self._calm_run = 0
        self._since_up = math.inf

    def act(self, observation: np.ndarray) -> np.ndarray:
        p, view = self.params, self.view(observation)
        alert = max((view.alert(s) for s in self._alerting), default=0.0)
        self._alert_run = self._alert_run + 1 if alert > 0.0 else 0
        calm = view.max_burn_rate(self._slos, p.calm_window) < p.calm_burn
        self._calm_run = self._calm_run + 1 if calm else 0
        self._since_up += 1
        desired = view.replicas(self.pool, "desired")
        lasting = p.ticket_intervals > 0 and self._alert_run >= p.ticket_intervals
        ready = view.replicas(self.pool, "provisioning") == 0 and self._since_up >= p.cooldown
        target = desired
        if (alert >= 1.0 or lasting) and ready:
            target, self._since_up, self._alert_run, self._calm_run = desired + 1, 0, 0, 0
        elif self._calm_run >= p.hold:
            target, self._calm_run = desired - 1, 0
        return self.scale_to(view, {self.pool: target})

    frontier_parameter = "calm_burn"

    @staticmethod
    def frontier_values(params: BudgetAutoscalerParams) -> tuple[float, ...]:
        """Calm burn rates 0.25-2 (below them for ``hold`` intervals, a replica goes)."""
        return (0.25, 0.5, 1.0, 2.0)

    @staticmethod
    def param_grid() -> Iterator[BudgetAutoscalerParams]:
        return params_grid(
            BudgetAutoscalerParams,
            ticket_intervals=(0, 20),
            cooldown=(0, 10),
            calm_burn=(0.5, 1.0, 2.0),
            hold=(2, 4, 10, 40),
        )


@dataclass(frozen=True)
class WvaParams(UpstreamParams):
    """The saturation-scaling configuration of llm-d's Workload Variant Autoscaler (its
    ``saturation-scaling-config`` ConfigMap), with WVA's names, defaults and validation: a
    replica is saturated at ``kvCacheThreshold`` KV-cache usage or ``queueLengthThreshold``
    waiting requests; the non-saturated replicas need on average ``kvSpareTrigger`` spare KV
    usage and ``queueSpareTrigger`` spare queue slots, else a replica is added. ``variantCost``
    is the cost WVA reads from a ``VariantAutoscaling`` (its default, 10, for every pool)."""

    autoscaler: ClassVar[str] = "wva"

    kvCacheThreshold: float = setting(0.80, 0.0, 1.0)
    queueLengthThreshold: float = setting(5.0, 0.0)
    kvSpareTrigger: float = setting(0.10, 0.0, 1.0)
    queueSpareTrigger: float = setting(3.0, 0.0)
    variantCost: float = setting(10.0, 0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kvSpareTrigger > self.kvCacheThreshold:
            raise ValueError(
                f"wva parameter 'kvSpareTrigger' ({self.kvSpareTrigger}) must not exceed "
                f"'kvCacheThreshold' ({self.kvCacheThreshold})"
            )


@dataclass(frozen=True)
class Variant:
    """One variant (a Deployment of one model on one accelerator) as WVA's saturation analysis
    sees it: its cost, replicas ready (reporting metrics), current (existing) and desired, and
    the ``(kv_usage, waiting)`` of every ready replica."""

    name: str
    cost: float
    ready: int
    current: int
    desired: int
    replicas: tuple[tuple[float, float], ...]


def saturation_capacity(replicas: Sequence[tuple[float, float]], p: WvaParams) -> tuple[bool, bool]:
    """``(scale up, scale down is safe)`` for the ready replicas of one model.

    The non-saturated replicas (KV usage and queue both below their thresholds) give the spare
    capacity; scale up when its average falls below a trigger (or no replica has spare
    capacity). Scaling down is safe when their total load spread over one replica fewer still
    leaves both triggers' spare capacity (and two non-saturated replicas remain to spread it).
    """
    free = [
        (kv, queue)
        for kv, queue in replicas
        if kv < p.kvCacheThreshold and queue < p.queueLengthThreshold
    ]
    if not free:
        return True, False
    spare_kv = p.kvCacheThreshold - sum(kv for kv, _ in free) / len(free)
    spare_queue = p.queueLengthThreshold - sum(q for _, q in free) / len(free)
    up = spare_kv < p.kvSpareTrigger or spare_queue < p.queueSpareTrigger
    if len(free) < 2:
        return up, False
    rest = len(free) - 1
    safe = (
        p.kvCacheThreshold - sum(kv for kv, _ in free) / rest >= p.kvSpareTrigger
        and p.queueLengthThreshold - sum(q for _, q in free) / rest >= p.queueSpareTrigger
    )
    return up, safe


def saturation_targets(variants: Sequence[Variant], p: WvaParams) -> dict[str, int]:
    """WVA's capacity targets for the variants of one model.

    A variant whose desired replicas differ from its current ones keeps its desired count (a
    decision still in flight). Otherwise, when the model's capacity needs it, the *cheapest*
    such variant gets one replica more than it has ready (ties: alphabetically first), or, when
    scaling down is safe, the *most expensive* one gets one fewer, never below one (ties:
    alphabetically last); the others keep their desired count.
    """
    up, safe = saturation_capacity([r for v in variants for r in v.replicas], p)
    targets = {v.name: v.desired for v in variants}
    free = sorted((v for v in variants if v.desired == v.current), key=lambda v: (v.cost, v.name))
    if up and free:
        targets[free[0].name] = max(free[0].desired, free[0].ready + 1)
    elif safe and free:
        targets[free[-1].name] = max(1, min(free[-1].desired, free[-1].ready - 1))
    return targets


class WorkloadVariantAutoscaler(ScalingController):
    """llm-d's Workload Variant Autoscaler (WVA) in saturation mode, on every pool.

    What the simulator has of WVA's inputs, and how it is mapped:

    - *Variants.* WVA scales the variants of one model (the same model on different
      accelerators, each a Deployment with a cost) and picks the cheapest variant to grow and
      the most expensive to shrink (:func:`saturation_targets`). The pools here serve different
      models (the strong and the cheap tier), so each pool is a model with one variant, at WVA's
      default cost: the cost rule is implemented but has a single candidate.
    - *Replica metrics.* WVA reads each replica's ``vllm:kv_cache_usage_perc`` and
      ``vllm:num_requests_waiting`` (peaks over a minute). The observation has the pool's mean KV
      usage over the interval and its mean waiting requests per replica: every serving replica
      is taken at those means.
    - *Ready and current replicas.* Ready: serving; current: serving and provisioning (pods that
      exist and are not terminating); desired: the pool's desired replicas.
    - *Actuation.* WVA publishes its desired replicas (``wva_desired_replicas``) for an HPA or
      KEDA, which the environment's replica knob plays here, one interval later.
    """

    name = "wva"
    frontier_parameter = "kvCacheThreshold"

    def __init__(self, context: ControlContext, params: WvaParams | None = None) -> None:
        super().__init__(context, context.observation.pools)
        self.params = params or WvaParams()

    def variant(self, view: ObservationView, pool: str) -> Variant:
        """The pool as WVA's variant, its serving replicas at the pool's mean signals."""
        serving = view.replicas(pool, "serving")
        signals = (
            view.pool(pool, "kv_usage_mean"),
            math.expm1(view.pool(pool, "waiting_per_replica")),
        )
        return Variant(
            name=pool,
            cost=self.params.variantCost,
            ready=serving,
            current=serving + view.replicas(pool, "provisioning"),
            desired=view.replicas(pool, "desired"),
            replicas=(signals,) * serving,
        )

    def act(self, observation: np.ndarray) -> np.ndarray:
        view = self.view(observation)
        targets = {}
        for pool in self.pools:  # one model per pool
            targets |= saturation_targets([self.variant(view, pool)], self.params)
        return self.scale_to(view, {p: self.bounded(p, n) for p, n in targets.items()})

    @staticmethod
    def frontier_values(params: WvaParams) -> tuple[float, ...]:
        """KV-cache thresholds 10-80 % (never below ``kvSpareTrigger``)."""
        return tuple(v for v in (0.1, 0.2, 0.4, 0.8) if v >= params.kvSpareTrigger)

    @staticmethod
    def param_grid() -> Iterator[WvaParams]:
        return params_grid(
            WvaParams,
            # Dense below 0.4: every scenario's best lay at the lowest of (0.2, 0.4, 0.8).
            kvCacheThreshold=(0.1, 0.15, 0.2, 0.3, 0.4, 0.8),
            queueLengthThreshold=(3.0, 5.0, 10.0),
            queueSpareTrigger=(1.0, 3.0),
        )


@dataclass(frozen=True)
class KpaParams(UpstreamParams):
    """The Knative Pod Autoscaler's settings (``config-autoscaler`` keys, as AIBrix's KPA takes
    them) with Knative's defaults and documented ranges. ``target`` is the concurrency per
    replica aimed at (``container-concurrency-target-default``, Knative's ``target``
    annotation), of which ``target-utilization-percentage`` is used in the steady state.
    Durations are in seconds (or strings such as ``"60s"``). ``min-scale`` is the strong pool's
    (Knative's default 0 scales to zero; the pools here keep a replica; the cheap pool's is 1)."""

    autoscaler: ClassVar[str] = "kpa"

    target: float = setting(100.0, 0.01)
    target_utilization_percentage: float = setting(
        70.0, 1.0, 100.0, "target-utilization-percentage"
    )
    stable_window: float = setting(60.0, 6.0, 3600.0, "stable-window", duration=True)
    panic_window_percentage: float = setting(10.0, 1.0, 100.0, "panic-window-percentage")
    panic_threshold_percentage: float = setting(200.0, 110.0, 1000.0, "panic-threshold-percentage")
    max_scale_up_rate: float = setting(1000.0, 1.0, upstream="max-scale-up-rate", above=True)
    max_scale_down_rate: float = setting(2.0, 1.0, upstream="max-scale-down-rate", above=True)
    scale_down_delay: float = setting(0.0, 0.0, 3600.0, "scale-down-delay", duration=True)
    min_scale: int = setting(1, 1, upstream="min-scale")


class KnativePodAutoscaler(ScalingController):
    """Knative's Pod Autoscaler (KPA) on every pool, on concurrency.

    Each interval, per pool: the observed concurrency is the requests in flight on the pool
    (running and waiting, over its serving replicas). Desired replicas are the concurrency
    averaged over the *stable window*, and over the *panic window* (``panic-window-percentage``
    of it), divided by ``target x target-utilization-percentage``, rounded up, and held within
    what ``max-scale-up-rate`` and ``max-scale-down-rate`` allow from the ready replicas. When
    the panic desired count reaches ``panic-threshold-percentage`` of the ready replicas the
    autoscaler panics: it follows the panic window and never scales down, until a stable window
    has passed without reaching the threshold again. A scale-down then waits for
    ``scale-down-delay`` (the highest desired count of that window is kept).

    Mapping: the observation is one sample per decision interval (30 s), so windows count whole
    intervals, at least one: the 60 s stable window is the last two samples, a 6 s panic window
    the last one. Running requests are observed relative to ``max_num_seqs``
    (:data:`VLLM_MAX_NUM_SEQS`) and waiting ones per replica. An episode starts as if the
    autoscaler had seen its first sample all along (it ran during the warm-up).
    """

    name = "kpa"
    frontier_parameter = "target"

    def __init__(self, context: ControlContext, params: KpaParams | None = None) -> None:
        super().__init__(context, context.observation.pools)
        self.params = params or KpaParams()
        p, interval = self.params, context.interval_s
        self._stable = max(1, round(p.stable_window / interval))
        self._panic = max(1, round(p.stable_window * p.panic_window_percentage / 100 / interval))
        self._delay = max(1, round(p.scale_down_delay / interval))
        self.reset()

    def reset(self) -> None:
        self._concurrency = {pool: deque(maxlen=self._stable) for pool in self.pools}
        self._recent = {pool: deque(maxlen=self._delay) for pool in self.pools}
        self._panic_left = dict.fromkeys(self.pools, 0)
        self._panic_peak = dict.fromkeys(self.pools, 0)

    def concurrency(self, view: ObservationView, pool: str) -> float:
        """Requests in flight per serving replica of ``pool``."""
        running = view.pool(pool, "running_per_replica") * VLLM_MAX_NUM_SEQS
        return running + math.expm1(view.pool(pool, "waiting_per_replica"))

    def act(self, observation: np.ndarray) -> np.ndarray:
        view = self.view(observation)
        targets = {pool: self.recommend(view, pool) for pool in self.pools}
        return self.scale_to(view, targets)

    def recommend(self, view: ObservationView, pool: str) -> int:
        """The desired replicas of ``pool`` after this interval's sample (the replica knob then
        moves toward them as far as one interval allows)."""
        p = self.params
        ready = max(1, view.replicas(pool, "serving"))
        samples = self._concurrency[pool]
        total = self.concurrency(view, pool) * view.replicas(pool, "serving")
        if not samples:
            samples.extend([total] * self._stable)
        samples.append(total)
        per_replica = p.target * p.target_utilization_percentage / 100.0
        low = math.floor(ready / p.max_scale_down_rate)
        high = math.ceil(ready * p.max_scale_up_rate)

        def desired(window: int) -> int:
            return math.ceil(sum(list(samples)[-window:]) / window / per_replica - 1e-9)

        stable, panic = desired(self._stable), desired(self._panic)
        if panic / ready >= p.panic_threshold_percentage / 100.0:
            # Panic lasts until a whole stable window has passed below the threshold.
            self._panic_left[pool] = self._stable + 1
        stable, panic = (min(high, max(low, n)) for n in (stable, panic))
        if self._panic_left[pool] > 0:
            self._panic_left[pool] -= 1
            wanted = self._panic_peak[pool] = max(panic, stable, self._panic_peak[pool])
        else:
            wanted, self._panic_peak[pool] = stable, 0
        recent = self._recent[pool]
        recent.append(wanted)
        return self.bounded(pool, max(recent), p.min_scale)

    @staticmethod
    def frontier_values(params: KpaParams) -> tuple[float, ...]:
        """Target concurrencies of 4-32 requests per replica."""
        return (4.0, 8.0, 16.0, 32.0)

    @staticmethod
    def param_grid() -> Iterator[KpaParams]:
        return params_grid(
            KpaParams,
            target=(8.0, 16.0, 32.0, 64.0),
            stable_window=(60.0, 300.0),
            scale_down_delay=(0.0, 300.0),
        )


#: The autoscalers operators of LLM fleets run in production (the budget autoscaler is ours).
PRODUCTION_AUTOSCALERS = (
    HorizontalPodAutoscaler.name,
    WorkloadVariantAutoscaler.name,
    KnativePodAutoscaler.name,
)
