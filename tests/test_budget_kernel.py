"""The environment's compiled budget path (ingest and snapshot) equals the shared engine fed by
its own methods, on every SLI kind and every scenario (the condition under which the environment
may take it)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.budget_kernel import CompiledSnapshot
from envs.fleet_env import LLMFleetEnv
from envs.paths import reference_data_dir
from envs.scenario_names import ELASTIC_SCENARIO_NAMES
from envs.scenarios import SCENARIOS
from slo import BudgetEngine, load_spec

# One SLO per SLI kind and variant, objectives tight enough that budgets run out and alerts fire.
_SLIS = {
    "ttft": {"kind": "ttft", "threshold_s": 0.5},
    "itl-token": {"kind": "itl", "threshold_s": 0.05, "per": "token"},
    "itl-request": {"kind": "itl", "threshold_s": 0.1, "per": "request"},
    "e2e": {"kind": "e2e", "threshold_s": 10.0},
    "normalized_latency": {"kind": "normalized_latency", "threshold_s": 0.05},
    "availability": {"kind": "availability", "bad_outcomes": ["rejected", "aborted", "failed"]},
    "quality-tier": {"kind": "quality", "mode": "tier"},
    "quality-loss": {"kind": "quality", "mode": "loss", "max_loss": 0.01},
    "context": {"kind": "context", "truncation": True, "max_preemptions": 0, "length_cut": True},
    "streaming": {"kind": "streaming", "pace_s": 0.05},
    "fairness-gap": {
        "kind": "fairness",
        "base": {"kind": "ttft", "threshold_s": 0.5},
        "method": "gap",
        "slice": "5m",
        "min_requests": 5,
    },
    "fairness-jain": {
        "kind": "fairness",
        "base": {"kind": "e2e", "threshold_s": 10.0},
        "method": "jain",
        "min_jain": 0.99,
        "slice": "5m",
        "min_requests": 5,
    },
}
_SNAPSHOT_ARRAYS = (
    "burn_rates",
    "window_coverage",
    "budget_remaining",
    "period_coverage",
    "page",
    "ticket",
    "alert_levels",
    "policy_states",
)
_STEPS = 40
# Trace-driven scenarios replay ../shared/data; without it they are left out (and say so).
_HAS_DATA = (reference_data_dir() / "traces").is_dir()
_RUNNABLE = [name for name, s in SCENARIOS.items() if _HAS_DATA or not s.needs_data]


def _spec():
    slos = [{"name": name, "objective": 99.5, "sli": {"llm": llm}} for name, llm in _SLIS.items()]
    return load_spec({"version": "prometheus/v1", "service": "every-kind", "slos": slos})


def _assert_equal(compiled, reference, slos=slice(None)) -> None:
    for field in _SNAPSHOT_ARRAYS:
        got, want = getattr(compiled, field)[slos], getattr(reference, field)[slos]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0, err_msg=field)
    assert compiled.dimension_states == reference.dimension_states
    assert (compiled.time, compiled.phase) == (reference.time, reference.phase)


def _state_differences(state, reference, path="") -> list[str]:
    """Where two engine states (:meth:`BudgetEngine.state_dict`) differ beyond rtol 1e-9."""
    if isinstance(state, dict):
        return [d for k in state for d in _state_differences(state[k], reference[k], f"{path}/{k}")]
    if isinstance(state, list):
        pairs = zip(state, reference, strict=True)
        return [
            d for i, (a, b) in enumerate(pairs) for d in _state_differences(a, b, f"{path}/{i}")
        ]
    if isinstance(state, np.ndarray):
        same = np.allclose(state, reference, rtol=1e-9, atol=0, equal_nan=True)
        return [] if same else [path]
    return [] if state == reference else [path]


class _MirroredEnv(LLMFleetEnv):
    """The environment (compiled feed and snapshot) beside a reference engine fed the same
    events, clock and phases through the engine's own methods."""

    def reset(self, *, seed=None, options=None):
        self.reference = None
        observation, info = super().reset(seed=seed, options=options)
        state = self.reference.state_dict()
        state["prior"] = self.engine.state_dict()["prior"]  # the budgets reset drew as spent
        self.reference.load_state_dict(state)
        return observation, info

    def _ingest(self, events):
        if self.reference is None:
            self.reference = BudgetEngine(self.slo_spec)
        if self.reference.phase != self.engine.phase:
            self.reference.start_phase(self.engine.phase, self.engine.phase_start)
        self.reference.ingest_events(events)
        super()._ingest(events)

    def _advance(self, until):
        cost = super()._advance(until)
        self.reference.advance_to(until)
        return cost

    def compare(self):
        """(compiled snapshot, reference snapshot, where the engines' states differ)."""
        differences = _state_differences(self.engine.state_dict(), self.reference.state_dict())
        return self.budget, self.reference.snapshot(), differences


@pytest.fixture(scope="module")
def episodes():
    """Per scenario, the comparisons after the reset and each random step."""
    spec, runs = _spec(), {}
    for scenario in _RUNNABLE:
        elastic = scenario in ELASTIC_SCENARIO_NAMES
        # Budgets start nearly spent, so that some run out within the steps compared.
        env = _MirroredEnv(scenario, spec=spec, elastic=elastic, initial_budget_spent=(0.7, 1.0))
        env.reset(seed=7)
        env.action_space.seed(7)
        runs[scenario] = [env.compare()]
        rollout = env.setup.rollout_at_s  # compare a few steps of the rollout's phase too
        steps = _STEPS if rollout is None else int((rollout - env.sim.now) / 30.0) + 5
        for _ in range(steps):
            env.step(env.action_space.sample())
            runs[scenario].append(env.compare())
    return runs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_compiled_path_equals_engine_on_every_scenario(episodes, scenario):
    if scenario not in episodes:
        pytest.skip(f"scenario {scenario} replays a trace from ../shared/data, which is absent")
    for compiled, reference, differences in episodes[scenario]:
        assert differences == []
        _assert_equal(compiled, reference)
    if scenario == "model-rollout":  # the rollout's new budget phase was compared too
        assert episodes[scenario][-1][1].phase == "rollout"


@pytest.mark.parametrize("sli", list(_SLIS))
def test_compiled_snapshot_equals_engine_on_every_sli_kind(episodes, sli):
    index = list(_SLIS).index(sli)
    snapshots = [run[:2] for runs in episodes.values() for run in runs]
    for compiled, reference in snapshots:
        _assert_equal(compiled, reference, slos=index)
    # The comparison saw the SLO spend budget and burn, not only untouched zeros.
    assert any(ref.burn_rates[index].max() > 0 for _, ref in snapshots)
    assert any(ref.budget_remaining[index] < 1 for _, ref in snapshots)


def test_compiled_snapshot_alerts_and_exhaustion_were_exercised(episodes):
    references = [run[1] for runs in episodes.values() for run in runs]
    assert any(ref.page.any() for ref in references)
    assert any(ref.ticket.any() for ref in references)
    for state in (0, 1, 2):  # ok, at risk, exhausted
        assert any((ref.policy_states == state).any() for ref in references)


@pytest.mark.parametrize("history_covered", [True, False])
def test_compiled_snapshot_equals_engine_with_gaps_and_phases(history_covered):
    """The metrics feed's coverage (gaps, SLOs never measured, data starting late), a prior and
    a new phase: the paths the environment rarely takes."""
    engine = BudgetEngine(_spec(), history_covered=history_covered)
    compiled, rng = CompiledSnapshot(engine), np.random.default_rng(3)
    n = len(engine.slos)
    tenants = [s.sli.llm.max_tenants for s in engine.slos if s.sli.llm.kind == "fairness"]
    engine.set_budget_spent(rng.uniform(0, 0.5, n), assumed_total_events=1e5)
    _assert_equal(compiled(), engine.snapshot())
    for step in range(1, 400):
        total = rng.integers(0, 200, n).astype(float)
        good = np.floor(total * rng.uniform(0.9, 1.0, n))
        measured = rng.random(n) > 0.2
        measured[0] = False  # one SLO is never measured: no data
        tenant_total = [rng.integers(0, 30, k).astype(float) for k in tenants]
        tenant_good = [np.floor(t * rng.uniform(0.8, 1.0, len(t))) for t in tenant_total]
        engine.ingest_counts(step * 45.0, good, total, tenant_good, tenant_total, measured)
        if step == 250:
            engine.start_phase("rollout")
        _assert_equal(compiled(), engine.snapshot())
    assert engine.snapshot().no_data[0] and not engine.snapshot().no_data[1:].any()
