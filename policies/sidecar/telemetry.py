"""The sidecar's own Prometheus metrics (served at ``/metrics``).

Budgets (burn rates, budget remaining, alerts), the knobs published and proposed, decision and
cycle latency, the decision mode (policy, hold, fallback, kill) and every problem: scrape errors
by endpoint and kind, guardrail interventions, actuation and state errors.

For an elastic policy, ``budgetpilot_sidecar_desired_replicas{pool, deployment}`` is the desired
replicas of each pool in force (published; in shadow mode, what the fleet runs), the metric an
autoscaler acts on: a KEDA ``ScaledObject`` for the Deployment with a ``prometheus`` trigger,
``query: max(budgetpilot_sidecar_desired_replicas{deployment="vllm-strong"})``, ``threshold:
"1"`` (replicas = ceil(value / threshold)), or an HPA on that external metric with a target
``averageValue: 1``; the scaler's own ``minReplicaCount``/``maxReplicaCount`` should match the
sidecar's ``scaling`` bounds. ``budgetpilot_sidecar_replicas{pool, state}`` counts the replicas
discovered provisioning, serving and draining.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from slo.engine import BudgetSnapshot

PREFIX = "budgetpilot_sidecar"
#: Decision modes: the policy decides, the last safe action is held (stale metrics or invalid
#: policy output), the fallback heuristic decides (metrics stale for long), the kill switch is on.
MODES = ("policy", "hold", "fallback", "kill")
#: Budget states of an SLO (see :meth:`slo.engine.BudgetSnapshot.budget_states`).
BUDGET_STATES = ("no_data", "warming_up", "ok", "at_risk", "exhausted")
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class SidecarMetrics:
    """Metric families of one sidecar, in their own registry.

    Parameters
    ----------
    windows:
        Burn-rate windows exported (the contract's).
    """

    def __init__(self, windows: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.windows = tuple(windows)
        r = self.registry
        self.burn_rate = Gauge(
            f"{PREFIX}_burn_rate", "Burn rate per SLO and window.", ["slo", "window"], registry=r
        )
        self.budget_remaining = Gauge(
            f"{PREFIX}_budget_remaining", "Fraction of the period budget left.", ["slo"], registry=r
        )
        self.alert_level = Gauge(
            f"{PREFIX}_alert_level", "0 none, 1 ticket, 2 page.", ["slo"], registry=r
        )
        self.budget_state = Gauge(
            f"{PREFIX}_budget_state",
            "1 for each SLO's budget state: no_data, warming_up, ok, at_risk, exhausted.",
            ["slo", "state"],
            registry=r,
        )
        self.coverage = Gauge(
            f"{PREFIX}_window_coverage",
            "Share of each burn-rate window (and of the period) that holds data.",
            ["slo", "window"],
            registry=r,
        )
        self.knob = Gauge(f"{PREFIX}_knob", "Published knob value.", ["knob"], registry=r)
        self.proposed_knob = Gauge(
            f"{PREFIX}_proposed_knob",
            "Knob value proposed (policy or fallback) before guardrails.",
            ["knob"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            f"{PREFIX}_decision_seconds",
            "Observation to action: observation vector, policy (onnxruntime), guardrails.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cycle_seconds = Histogram(
            f"{PREFIX}_cycle_seconds",
            "Scrape, parse, budgets and decision.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.mode = Gauge(
            f"{PREFIX}_mode", "1 for the current decision mode.", ["mode"], registry=r
        )
        self.fallback_active = Gauge(
            f"{PREFIX}_fallback_active", "1 while the fallback heuristic decides.", registry=r
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions", "Decisions made, by mode.", ["mode"], registry=r
        )
        self.interventions = Counter(
            f"{PREFIX}_guardrail_interventions",
            "Knob changes made by guardrails.",
            ["knob", "guardrail"],
            registry=r,
        )
        self.scrape_errors = Counter(
            f"{PREFIX}_scrape_errors",
            "Scrape and metric problems by endpoint and kind.",
            ["endpoint", "kind"],
            registry=r,
        )
        self.endpoint_up = Gauge(
            f"{PREFIX}_endpoint_up",
            "1 if the last scrape was readable.",
            ["endpoint"],
            registry=r,
        )
        self.metrics_age = Gauge(
            f"{PREFIX}_metrics_age_seconds", "Age of the last complete scrape.", registry=r
        )
        self.healthy_replicas = Gauge(
            f"{PREFIX}_healthy_replicas", "Replicas seen healthy this cycle.", registry=r
        )
        self.actuation_errors = Counter(
            f"{PREFIX}_actuation_errors", "Failed actuations.", ["actuator"], registry=r
        )
        self.state_errors = Counter(
            f"{PREFIX}_state_errors", "Failed state saves or restores.", ["operation"], registry=r
        )
        self.in_envelope = Gauge(
            f"{PREFIX}_fleet_in_envelope",
            "1 while the discovered fleet is inside the policy's envelope (the fleets it was "
            "trained on), 0 while outside.",
            registry=r,
        )
        self.shadow = Gauge(f"{PREFIX}_shadow_mode", "1 in shadow mode.", registry=r)
        self.kill_switch = Gauge(f"{PREFIX}_kill_switch", "1 while engaged.", registry=r)
        self.desired_replicas = Gauge(
            f"{PREFIX}_desired_replicas",
            "Desired replicas of each pool in force (the target of KEDA or an HPA on external "
            "metrics).",
            ["pool", "deployment"],
            registry=r,
        )
        self.replicas = Gauge(
            f"{PREFIX}_replicas",
            "Replicas discovered per pool and lifecycle state.",
            ["pool", "state"],
            registry=r,
        )
        self.info = Gauge(
            f"{PREFIX}_policy_info",
            "The policy served (value 1).",
            ["policy", "onnx_sha256", "spec_hash"],
            registry=r,
        )

    def record_budgets(self, snapshot: BudgetSnapshot) -> None:
        """Burn rates, budgets remaining, alert levels, coverage and budget states of a
        snapshot; what was not measured is NaN (a window without data, a budget without data
        or warming up), never a healthy-looking number."""
        index = [snapshot.windows.index(w) for w in self.windows]
        states = snapshot.budget_states()
        for i, slo in enumerate(snapshot.slo_names):
            coverage = snapshot.window_coverage[i]
            for window, j in zip(self.windows, index, strict=True):
                burn = float(snapshot.burn_rates[i, j]) if coverage[j] > 0 else math.nan
                self.burn_rate.labels(slo, window).set(burn)
                self.coverage.labels(slo, window).set(float(coverage[j]))
            self.coverage.labels(slo, "period").set(float(snapshot.period_coverage[i]))
            known = states[i] not in ("no_data", "warming_up")
            remaining = float(snapshot.budget_remaining[i]) if known else math.nan
            self.budget_remaining.labels(slo).set(remaining)
            self.alert_level.labels(slo).set(int(snapshot.alert_levels[i]))
            for state in BUDGET_STATES:
                self.budget_state.labels(slo, state).set(1.0 if state == states[i] else 0.0)

    def record_knobs(self, published: Mapping[str, float], proposed: Mapping[str, float]) -> None:
        for name, value in published.items():
            self.knob.labels(name).set(value)
        for name, value in proposed.items():
            self.proposed_knob.labels(name).set(value)

    def record_replicas(
        self,
        desired: Mapping[str, int],
        deployments: Mapping[str, str],
        counts: Mapping[str, Mapping[str, int]] | None,
    ) -> None:
        """Desired replicas in force per pool (labelled with its Deployment) and the replicas
        observed in each state."""
        for pool, replicas in desired.items():
            self.desired_replicas.labels(pool, deployments[pool]).set(replicas)
        for pool, by_state in (counts or {}).items():
            for state, n in by_state.items():
                self.replicas.labels(pool, state).set(n)

    def record_mode(self, mode: str) -> None:
        for candidate in MODES:
            self.mode.labels(candidate).set(1.0 if candidate == mode else 0.0)
        self.fallback_active.set(1.0 if mode == "fallback" else 0.0)
        self.decisions.labels(mode).inc()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
