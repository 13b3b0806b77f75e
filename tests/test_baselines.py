import numpy as np
import pytest

from agents.base import ControlContext
from agents.baselines import (
    BASELINES,
    PidBurnRate,
    ReactiveThresholds,
    SreBudgetPolicy,
    StaticController,
    VllmDefaults,
)
from envs.contract import NEUTRAL_KNOB_VALUES, ActionContract, ObservationContract, elastic_knobs

SLO_KINDS = {"ttft": "ttft", "availability": "availability", "quality": "quality"}


@pytest.fixture
def context() -> ControlContext:
    return ControlContext(
        observation=ObservationContract(slo_names=tuple(SLO_KINDS)),
        action=ActionContract(),
        slo_kinds=SLO_KINDS,
    )


def elastic_context(pools: tuple[str, ...] = ("strong", "cheap")) -> ControlContext:
    """The contracts of an elastic fleet (replica knobs and features)."""
    action = ActionContract(knobs=elastic_knobs(pools))
    observation = ObservationContract(
        slo_names=tuple(SLO_KINDS), pools=pools, knob_names=action.names, max_replicas=(6, 3)
    )
    return ControlContext(observation, action, SLO_KINDS)


def _obs(context: ControlContext, **features: float) -> np.ndarray:
    """A calm observation (no burn, full budgets) with some features overridden."""
    names = context.observation.feature_names
    obs = np.zeros(len(names), dtype=np.float32)
    for i, name in enumerate(names):
        if name.endswith("budget_remaining") or name.endswith("healthy_fraction"):
            obs[i] = 1.0
    for name, value in features.items():
        obs[names.index(name)] = value
    return obs


def _knobs(context: ControlContext, action: np.ndarray) -> dict[str, float]:
    return context.action.decode(action)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_stays_in_bounds_on_random_observations(name, context) -> None:
    if BASELINES[name].needs_elastic:
        context = elastic_context()
    controller = BASELINES[name](context)
    rng = np.random.default_rng(0)
    for _ in range(200):
        action = controller.act(rng.uniform(-2, 10, context.observation.size).astype(np.float32))
        assert action.shape == (len(context.action.knobs),)
        assert np.all(np.abs(action) <= 1.0 + 1e-6)


def test_vllm_defaults_is_neutral(context) -> None:
    knobs = _knobs(context, VllmDefaults(context).act(_obs(context)))
    for name, value in NEUTRAL_KNOB_VALUES.items():
        assert knobs[name] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_static_controller_holds_its_setting(context) -> None:
    controller = StaticController(context, {"cheap_tier_share": 0.4})
    assert _knobs(context, controller.act(_obs(context)))["cheap_tier_share"] == pytest.approx(0.4)
    assert len(list(StaticController.param_grid())) == 36


def test_reactive_offloads_under_kv_pressure_and_routes_on_latency_burn(context) -> None:
    controller = ReactiveThresholds(context)
    hot = _obs(
        context,
        **{"pool.strong.kv_usage_mean": 0.99, "slo.ttft.log_burn_rate.5m": np.log2(1 + 10)},
    )
    for _ in range(3):
        knobs = _knobs(context, controller.act(hot))
    assert knobs["offload_fraction"] == pytest.approx(0.3)
    assert knobs["cheap_tier_share"] == pytest.approx(0.3)
    for _ in range(10):  # calm again: hysteresis walks both back to zero
        knobs = _knobs(context, controller.act(_obs(context)))
    assert knobs["offload_fraction"] == 0.0 and knobs["cheap_tier_share"] == 0.0


@pytest.mark.parametrize(
    ("pools", "watched"),
    [(("main",), "main"), (("fast", "strong"), "strong"), (("big", "small"), "big")],
)
def test_reactive_watches_the_strong_pool_of_any_fleet(pools, watched) -> None:
    # A fleet file names its pools: "strong" when it has one, else its first (single-tier).
    context = ControlContext(
        ObservationContract(slo_names=tuple(SLO_KINDS), pools=pools), ActionContract(), SLO_KINDS
    )
    controller = ReactiveThresholds(context)
    for pool in pools:
        hot = _obs(context, **{f"pool.{pool}.kv_usage_mean": 0.99})
        knobs = _knobs(context, controller.act(hot))
        controller.reset()
        assert (knobs["offload_fraction"] > 0) == (pool == watched), pool


def test_reactive_sheds_on_deep_queues(context) -> None:
    controller = ReactiveThresholds(context)
    deep = _obs(context, **{"pool.strong.waiting_per_replica": np.log1p(50)})
    assert _knobs(context, controller.act(deep))["shed_priority_below"] == 1.0


def test_sre_policy_degrades_on_page_and_protects_a_spent_quality_budget(context) -> None:
    controller = SreBudgetPolicy(context)
    page = _obs(context, **{"slo.ttft.alert": 1.0})
    knobs = _knobs(context, controller.act(page))
    assert knobs["cheap_tier_share"] == pytest.approx(0.5)
    assert knobs["shed_priority_below"] == 1.0
    spent = _obs(context, **{"slo.ttft.alert": 1.0, "slo.quality.budget_remaining": 0.1})
    assert _knobs(context, controller.act(spent))["cheap_tier_share"] == 0.0
    availability = _obs(context, **{"slo.ttft.alert": 1.0, "slo.availability.alert": 0.5})
    knobs = _knobs(context, controller.act(availability))
    assert knobs["shed_priority_below"] == 0.0
    assert knobs["admission_limit"] == pytest.approx(NEUTRAL_KNOB_VALUES["admission_limit"])


def test_pid_acts_on_sustained_burn_and_resets(context) -> None:
    controller = PidBurnRate(context)
    burning = _obs(context, **{"slo.ttft.log_burn_rate.5m": np.log2(1 + 20)})
    shares = [_knobs(context, controller.act(burning))["cheap_tier_share"] for _ in range(20)]
    assert shares[-1] > shares[0] > 0.0  # the integrator keeps pushing
    calm = _knobs(context, controller.act(_obs(context)))["cheap_tier_share"]
    controller.reset()
    assert _knobs(context, controller.act(_obs(context)))["cheap_tier_share"] <= calm
