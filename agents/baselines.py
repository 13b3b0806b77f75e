"""Heuristic baselines: what operators run today, written down as controllers.

Every baseline has a frozen ``Params`` dataclass with its tunable thresholds and a
:meth:`param_grid` of candidates; the benchmark grid-searches each baseline per scenario on
training seeds before evaluating it on held-out seeds, so that learned policies are compared with
tuned heuristics, not strawmen.

=====================  ==========================================================================
baseline               rule
=====================  ==========================================================================
``vllm-defaults``      no intervention: no routing, no offload, open admission, no shedding
``static``             one fixed knob setting (the best one is grid-searched per scenario)
``reactive``           threshold rules with hysteresis on signals an operator watches: KV usage ->
                       offload, latency burn -> cheap tier, queue depth -> shed low priority
``sre-policy``         the SRE budget policy book driven by multi-window alerts: a latency page
                       degrades (cheap tier, shed, admission), a ticket degrades mildly, an
                       availability page re-opens admission, a spent quality budget stops routing
``pid``                a PID loop holding the worst latency burn rate at a target, acting on the
                       cheap-tier share first and on admission beyond it
``hpa``                (elastic) the Kubernetes Horizontal Pod Autoscaler on every pool: replicas
                       for a target KV-cache usage or queue depth, with its tolerance and its
                       scale-up and scale-down stabilisation windows
``budget-autoscaler``  (elastic) scale the strong pool by its budgets: one replica up on a
                       latency or availability page (or a lasting ticket), one down once every
                       budget has burnt slowly for a while
=====================  ==========================================================================

The elastic baselines set only the replica knobs (the others stay neutral) and need an elastic
environment (``LLMFleetEnv(elastic=True)``); the others leave the replica knobs neutral there.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Literal

import numpy as np

from agents.base import LATENCY_KINDS, ControlContext, Controller, ObservationView
from envs.contract import NEUTRAL_KNOB_VALUES, replica_change_toward, replicas_knob_name


def _grid(params_cls: type, **candidates: tuple) -> Iterator:
    """Every combination of ``candidates`` over the defaults of ``params_cls``."""
    keys = list(candidates)
    for combo in itertools.product(*(candidates[k] for k in keys)):
        yield replace(params_cls(), **dict(zip(keys, combo, strict=True)))


class VllmDefaults(Controller):
    """Leave every knob where an untouched vLLM fleet has it."""

    name = "vllm-defaults"

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.knobs_to_action(NEUTRAL_KNOB_VALUES)


class StaticController(Controller):
    """Hold one knob setting for the whole episode.

    Parameters
    ----------
    context:
        Contracts of the governed fleet.
    values:
        Knob values; knobs not given keep their neutral value.
    """

    name = "static"

    def __init__(self, context: ControlContext, values: Mapping[str, float] | None = None) -> None:
        super().__init__(context)
        self.values = {**NEUTRAL_KNOB_VALUES, **(values or {})}
        self._action = self.knobs_to_action(self.values)

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self._action

    @staticmethod
    def param_grid() -> Iterator[dict[str, float]]:
        """Candidate settings for the per-scenario grid search (36 settings)."""
        for share, offload, admission, shed in itertools.product(
            (0.0, 0.2, 0.4), (0.0, 0.25), (1.0, 1.5, 3.0), (0.0, 1.0)
        ):
            yield {
                "cheap_tier_share": share,
                "offload_fraction": offload,
                "admission_limit": admission,
                "shed_priority_below": shed,
            }


@dataclass(frozen=True)
class ReactiveParams:
    """Thresholds of :class:`ReactiveThresholds`: act above ``high``, undo below ``low``."""

    kv_high: float = 0.92
    kv_low: float = 0.75
    burn_high: float = 2.0
    burn_low: float = 1.0
    queue_high: float = 8.0  # waiting requests per replica
    queue_low: float = 2.0
    share_step: float = 0.1
    offload_step: float = 0.1
    window: str = "5m"


class ReactiveThresholds(Controller):
    """Threshold rules with hysteresis, the classic operator's autopilot.

    - strong-tier KV usage above ``kv_high`` -> raise the offload fraction (below ``kv_low``:
      lower it);
    - worst latency burn rate over ``window`` above ``burn_high`` -> send more traffic to the cheap
      tier (below ``burn_low``: less);
    - waiting requests per replica above ``queue_high`` -> shed the lowest priority (below
      ``queue_low``: stop shedding).
    """

    name = "reactive"

    def __init__(self, context: ControlContext, params: ReactiveParams | None = None) -> None:
        super().__init__(context)
        self.params = params or ReactiveParams()
        self._latency_slos = context.slos_of_kind(LATENCY_KINDS)
        self.reset()

    def reset(self) -> None:
        self.values = dict(NEUTRAL_KNOB_VALUES)

    def act(self, observation: np.ndarray) -> np.ndarray:
        p, view = self.params, self.view(observation)
        kv = view.pool("strong", "kv_usage_mean")
        burn = view.max_burn_rate(self._latency_slos, p.window)
        waiting = math.expm1(view.pool("strong", "waiting_per_replica"))
        self._step("offload_fraction", kv, p.kv_high, p.kv_low, p.offload_step)
        self._step("cheap_tier_share", burn, p.burn_high, p.burn_low, p.share_step)
        if waiting > p.queue_high:
            self.values["shed_priority_below"] = 1.0
        elif waiting < p.queue_low:
            self.values["shed_priority_below"] = 0.0
        return self.knobs_to_action(self.values)

    def _step(self, knob: str, signal: float, high: float, low: float, step: float) -> None:
        spec = next(k for k in self.context.action.knobs if k.name == knob)
        if signal > high:
            self.values[knob] = min(spec.high, self.values[knob] + step)
        elif signal < low:
            self.values[knob] = max(spec.low, self.values[knob] - step)

    @staticmethod
    def param_grid() -> Iterator[ReactiveParams]:
        return _grid(
            ReactiveParams,
            kv_high=(0.85, 0.95),
            burn_high=(1.5, 3.0, 6.0),
            queue_high=(4.0, 16.0),
            share_step=(0.05, 0.2),
        )


@dataclass(frozen=True)
class SrePolicyParams:
    """Knob settings the SRE budget policy applies in each state."""

    page_share: float = 0.5
    ticket_share: float = 0.2
    page_admission: float = 1.0
    page_shed: float = 1.0
    page_offload: float = 0.25
    at_risk_remaining: float = 0.25  # quality budget below this: stop routing to the cheap tier


class SreBudgetPolicy(Controller):
    """The error-budget policy of the SRE Workbook as a controller.

    State is read from the multi-window alerts the engine raises (page: 14.4x/6x burns; ticket:
    3x/1x burns). A latency page spends the quality and availability budgets to save latency: route
    ``page_share`` to the cheap tier, offload, shed the lowest priority and cap admission. A
    latency ticket routes ``ticket_share``. An availability page or ticket re-opens admission and
    stops shedding, since both spend that budget. A quality budget that is at risk (remaining below
    ``at_risk_remaining``) or paging stops all downgrade routing.
    """

    name = "sre-policy"

    def __init__(self, context: ControlContext, params: SrePolicyParams | None = None) -> None:
        super().__init__(context)
        self.params = params or SrePolicyParams()
        self._latency = context.slos_of_kind(LATENCY_KINDS)
        self._availability = context.slos_of_kind({"availability"})
        self._quality = context.slos_of_kind({"quality"})

    def act(self, observation: np.ndarray) -> np.ndarray:
        p, view = self.params, self.view(observation)
        values = dict(NEUTRAL_KNOB_VALUES)
        latency_alert = max((view.alert(s) for s in self._latency), default=0.0)
        if latency_alert >= 1.0:
            values.update(
                cheap_tier_share=p.page_share,
                offload_fraction=p.page_offload,
                shed_priority_below=p.page_shed,
                admission_limit=p.page_admission,
            )
        elif latency_alert > 0.0:
            values["cheap_tier_share"] = p.ticket_share
        if any(view.alert(s) > 0.0 for s in self._availability):
            values.update(
                admission_limit=NEUTRAL_KNOB_VALUES["admission_limit"], shed_priority_below=0.0
            )
        if self._quality_at_risk(view):
            values["cheap_tier_share"] = 0.0
        return self.knobs_to_action(values)

    def _quality_at_risk(self, view: ObservationView) -> bool:
        return any(
            view.alert(s) >= 1.0 or view.budget_remaining(s) < self.params.at_risk_remaining
            for s in self._quality
        )

    @staticmethod
    def param_grid() -> Iterator[SrePolicyParams]:
        return _grid(
            SrePolicyParams,
            page_share=(0.3, 0.6),
            ticket_share=(0.1, 0.3),
            page_admission=(0.8, 1.2),
            page_shed=(0.0, 1.0),
        )


@dataclass(frozen=True)
class PidParams:
    """Gains and target of :class:`PidBurnRate`."""

    target_burn: float = 1.0
    kp: float = 0.15
    ki: float = 0.03
    kd: float = 0.0
    window: str = "5m"


class PidBurnRate(Controller):
    """A PID loop on the worst latency burn rate.

    The error is ``log2(1 + burn) - log2(1 + target)`` (log scale, so a 20x burn does not saturate
    the loop at once). The control output ``u`` in [0, 2] moves the cheap-tier share from 0 to its
    maximum over [0, 1] and then tightens admission from open to its minimum over [1, 2]. The
    integrator is clamped to the output range (anti-windup).
    """

    name = "pid"

    def __init__(self, context: ControlContext, params: PidParams | None = None) -> None:
        super().__init__(context)
        self.params = params or PidParams()
        self._latency = context.slos_of_kind(LATENCY_KINDS)
        knobs = {k.name: k for k in context.action.knobs}
        self._share, self._admission = knobs["cheap_tier_share"], knobs["admission_limit"]
        self.reset()

    def reset(self) -> None:
        self._integral = 0.0
        self._last_error: float | None = None

    def act(self, observation: np.ndarray) -> np.ndarray:
        p = self.params
        burn = self.view(observation).max_burn_rate(self._latency, p.window)
        error = math.log2(1.0 + burn) - math.log2(1.0 + p.target_burn)
        derivative = 0.0 if self._last_error is None else error - self._last_error
        self._last_error = error
        self._integral = min(2.0, max(0.0, self._integral + p.ki * error))
        u = min(2.0, max(0.0, p.kp * error + self._integral + p.kd * derivative))
        values = dict(NEUTRAL_KNOB_VALUES)
        values["cheap_tier_share"] = self._share.high * min(u, 1.0)
        tighten = max(0.0, u - 1.0)
        values["admission_limit"] = (
            self._admission.high * (self._admission.low / self._admission.high) ** tighten
        )
        return self.knobs_to_action(values)

    @staticmethod
    def param_grid() -> Iterator[PidParams]:
        return _grid(PidParams, target_burn=(0.5, 1.0, 2.0), kp=(0.05, 0.2), ki=(0.01, 0.05))


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


@dataclass(frozen=True)
class HpaParams:
    """Settings of :class:`HorizontalPodAutoscaler` (windows in control intervals: 10 = 300 s,
    Kubernetes' default scale-down window, at the environment's 30 s interval).
    ``min_replicas`` is the strong pool's ``minReplicas`` (the first pool of the contract); the
    cheap pool's is 1 (with routing neutral it serves only fallback traffic)."""

    metric: Literal["kv_usage", "waiting"] = "kv_usage"
    target: float = 0.3
    tolerance: float = 0.1
    scale_up_window: int = 0
    scale_down_window: int = 10
    min_replicas: int = 1


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
        if self.params.metric not in ("kv_usage", "waiting"):
            raise ValueError(
                f"hpa metric must be 'kv_usage' or 'waiting', got {self.params.metric!r}"
            )
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
        cap = self.context.observation.max_replicas[self.pools.index(pool)]
        floor = p.min_replicas if pool == self.pools[0] else 1
        # Observations are float32: without the slack, 2 * 0.6 / 0.3 would round up to 5.
        return min(cap, max(floor, math.ceil(serving * ratio - 1e-6)))

    @staticmethod
    def param_grid() -> Iterator[HpaParams]:
        kv_usage, waiting = (0.05, 0.1, 0.2, 0.4), (0.25, 1.0, 4.0)
        for metric, targets in (("kv_usage", kv_usage), ("waiting", waiting)):
            yield from _grid(
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

    @staticmethod
    def param_grid() -> Iterator[BudgetAutoscalerParams]:
        return _grid(
            BudgetAutoscalerParams,
            ticket_intervals=(0, 20),
            cooldown=(0, 10),
            calm_burn=(0.5, 1.0, 2.0),
            hold=(2, 4, 10, 40),
        )


#: Baselines by name, for the command line and the benchmark.
BASELINES: dict[str, type[Controller]] = {
    cls.name: cls
    for cls in (
        VllmDefaults,
        StaticController,
        ReactiveThresholds,
        SreBudgetPolicy,
        PidBurnRate,
        HorizontalPodAutoscaler,
        BudgetAutoscaler,
    )
}


def params_as_dict(params: object) -> dict:
    """A baseline's parameters as a plain dict (for reports)."""
    if isinstance(params, dict):
        return dict(params)
    return {f.name: getattr(params, f.name) for f in fields(params)}


def baseline_class(name: str) -> type[Controller]:
    """Look a baseline up by name; the error lists the known ones."""
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None


def make_controller(
    name: str, context: ControlContext, params: Mapping | object | None = None
) -> Controller:
    """Build baseline ``name`` with ``params``: its ``Params`` dataclass, a dict of its fields
    (e.g. ``best_params`` of a tuning result) or, for ``static``, a dict of knob values."""
    cls = baseline_class(name)
    if cls is VllmDefaults:
        if params:
            raise ValueError(f"baseline {name!r} has no parameters, got {dict(params)}")
        return cls(context)
    if params is None:
        return cls(context)
    if isinstance(params, Mapping):
        params = _params_from_dict(name, params)
    return cls(context, params)


def _params_from_dict(name: str, values: Mapping) -> object:
    """Turn a parameter dict back into what the baseline's constructor takes, checking names."""
    example = next(iter(baseline_class(name).param_grid()))
    known = {f.name for f in fields(example)} if is_dataclass(example) else set(NEUTRAL_KNOB_VALUES)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for baseline {name!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return type(example)(**values) if is_dataclass(example) else dict(values)
