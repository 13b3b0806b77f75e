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
``hpa``, ``wva``,      (elastic) the autoscalers of :mod:`agents.autoscalers`: Kubernetes' HPA,
``kpa``,               llm-d's Workload Variant Autoscaler, Knative's Pod Autoscaler and a
``budget-autoscaler``  budget-driven one
=====================  ==========================================================================

The autoscalers set only the replica knobs (the others stay neutral) and need an elastic
environment (``LLMFleetEnv(elastic=True)``); the others leave the replica knobs neutral there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass

import numpy as np

from agents.autoscalers import (
    BudgetAutoscaler,
    HorizontalPodAutoscaler,
    KnativePodAutoscaler,
    UpstreamParams,
    WorkloadVariantAutoscaler,
)
from agents.base import LATENCY_KINDS, ControlContext, Controller, ObservationView, params_grid
from envs.contract import NEUTRAL_KNOB_VALUES


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
      lower it); the strong tier's pool is the one named ``strong``, else the fleet file's first
      pool (a single-tier fleet's only one);
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
        pools = context.observation.pools
        self._pool = "strong" if "strong" in pools else pools[0]
        self.reset()

    def reset(self) -> None:
        self.values = dict(NEUTRAL_KNOB_VALUES)

    def act(self, observation: np.ndarray) -> np.ndarray:
        p, view = self.params, self.view(observation)
        kv = view.pool(self._pool, "kv_usage_mean")
        burn = view.max_burn_rate(self._latency_slos, p.window)
        waiting = math.expm1(view.pool(self._pool, "waiting_per_replica"))
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
        return params_grid(
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
        return params_grid(
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
        return params_grid(PidParams, target_burn=(0.5, 1.0, 2.0), kp=(0.05, 0.2), ki=(0.01, 0.05))


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
        WorkloadVariantAutoscaler,
        KnativePodAutoscaler,
    )
}


def params_as_dict(params: object) -> dict:
    """A baseline's parameters as a plain dict (for reports)."""
    if isinstance(params, dict):
        return dict(params)
    if isinstance(params, UpstreamParams):
        return params.as_dict()
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
        params = params_from_dict(name, params)
    return cls(context, params)


def params_from_dict(name: str, values: Mapping) -> object:
    """Turn a parameter dict back into what the baseline's constructor takes, checking names
    (and, for parameters with documented ranges, values)."""
    example = next(iter(baseline_class(name).param_grid()))
    if isinstance(example, UpstreamParams):
        return type(example).from_dict(values)
    known = {f.name for f in fields(example)} if is_dataclass(example) else set(NEUTRAL_KNOB_VALUES)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for baseline {name!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    return type(example)(**values) if is_dataclass(example) else dict(values)
