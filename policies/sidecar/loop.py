"""The sidecar: scrape, observe, decide, guard, actuate, record, every interval.

:meth:`Sidecar.cycle` is one round (tests call it with their own clock); :meth:`Sidecar.run`
repeats it at multiples of the interval until stopped. The decision mode follows the metrics:

* ``policy``: metrics are fresh; the policy (onnxruntime) proposes, the guardrails limit;
* ``hold``: metrics are stale (the last complete scrape is older than ``stale_after_s``) or the
  policy's output is unusable (NaN, outside [-1, 1], an onnxruntime error): the last safe
  action is published again;
* ``fallback``: metrics stayed stale for ``fallback_after_s``: the fallback baseline proposes
  on what observation there is, through the same guardrails;
* ``hold`` or ``fallback`` (``missing_data.action``) as well while some SLO the policy observes
  has had no data for ``missing_data.after_cycles`` intervals (a series the mapping names is
  not on the pages, say): the reason names the SLOs;
* ``hold`` or ``fallback`` (``envelope.action``) as well while discovery shows the fleet outside
  the policy's envelope (the fleets it was trained on, :mod:`policies.sidecar.envelope`): the
  reason names what differs; a fleet outside it at start is refused;
* ``kill``: the kill switch is engaged: the kill knobs (neutral by default) are published.

In shadow mode every decision is made and recorded but no actuator is called.

An elastic policy (its observation contract has replica knobs) also decides the desired
replicas of every pool (under contract v3, every pool of the fleet by its role's knob): its
replica knobs move the desired replicas in force through
:class:`~policies.sidecar.guardrails.ReplicaGuardrails` (``scaling``: at most ``max_step``
replicas per interval, within ``[min_replicas, max_replicas]``); holding, the kill switch and a
fallback that does not scale keep them. They start at the listing's desired replicas (or the
replicas provisioning and serving), survive restarts in the state directory and are published
with the knobs: in the decision (``desired_replicas``), the ``desired_replicas`` gauge and by
the actuators. The engines then come from ``discovery``, refreshed every scrape round (or every
``discovery.refresh_s``), which gives each replica's lifecycle; in shadow mode the desired
replicas in force follow the listing, since the fleet is scaled by something else.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from agents.base import ControlContext, Controller
from envs.contract import (
    ACTION_VERSION,
    REPLICA_CHANGE_NEUTRAL,
    ReplicaLifecycle,
    neutral_knob_values,
    replicas_knob_name,
)
from policies.runtime import OnnxPolicy, load_policy
from policies.sidecar import state as persisted
from policies.sidecar.actuators import ActuationError, Actuator, build_actuators
from policies.sidecar.config import SidecarConfig, SidecarConfigError
from policies.sidecar.decision_log import DecisionLog
from policies.sidecar.discovery import (
    DiscoveredEngine,
    Discovery,
    DiscoveryError,
    Listing,
    scraped_endpoints,
)
from policies.sidecar.envelope import (
    describe,
    engine_role,
    knobs_without_counterpart,
    outside_envelope,
)
from policies.sidecar.fallback import build_baseline
from policies.sidecar.guardrails import (
    Guardrails,
    Intervention,
    ReplicaGuardrails,
    action_problem,
    is_replica_knob,
)
from policies.sidecar.observe import (
    Engine,
    FeedabilityError,
    IngestReport,
    Observation,
    Observer,
    Problem,
)
from policies.sidecar.prometheus import BootstrapReport, bootstrap_sidecar, build_source
from policies.sidecar.rbac import check_rbac
from policies.sidecar.scrape import ScrapeResult
from policies.sidecar.telemetry import SidecarMetrics
from slo.spec import ServiceSpec, SpecError, load_spec

log = logging.getLogger("budgetpilot.sidecar")

#: Problems listed in a decision (all are counted in /metrics).
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Decision:
    """One decision and everything that led to it.

    Parameters
    ----------
    time:
        Decision time (the engine clock: Unix seconds when run live).
    mode:
        ``policy``, ``hold``, ``fallback`` or ``kill``.
    reason:
        Why this mode and these knobs, in words.
    knobs:
        The published knob values (always within the action contract's ranges).
    proposed:
        What the policy or fallback proposed, before guardrails (empty when holding).
    raw_action:
        The proposer's action vector in [-1, 1] before guardrails (``None`` when holding).
    interventions:
        Every change guardrails made.
    observation:
        The observation decided on.
    metrics_age_s:
        Age of the last complete scrape (``inf`` before the first).
    problems:
        This cycle's metric problems.
    shadow, kill_switch:
        The switches at decision time.
    decision_ms:
        Observation to action, guardrails included.
    actuated:
        Per actuator, ``ok``, the error, or why it was skipped (filled when published).
    desired_replicas:
        Desired replicas per pool (an elastic policy's; always within the ``scaling`` bounds),
        empty for a fixed fleet.
    """

    time: float
    mode: str
    reason: str
    knobs: dict[str, float]
    proposed: dict[str, float]
    raw_action: list[float] | None
    interventions: list[Intervention]
    observation: Observation
    metrics_age_s: float
    problems: tuple[Problem, ...]
    shadow: bool
    kill_switch: bool
    decision_ms: float
    actuated: dict[str, str] = field(default_factory=dict)
    desired_replicas: dict[str, int] = field(default_factory=dict)

    def to_dict(self, sidecar: Sidecar, *, vector: bool = False) -> dict[str, Any]:
        """JSON-ready form (``vector``: include the full observation vector, for the audit)."""
        observation = self.observation.summary(sidecar.observation_contract)
        if vector:
            observation["vector"] = [float(x) for x in self.observation.vector]
        return {
            "time": self.time,
            "mode": self.mode,
            "reason": self.reason,
            "knobs": self.knobs,
            "desired_replicas": self.desired_replicas,
            "proposed": {k: _json_number(v) for k, v in self.proposed.items()},
            "raw_action": None
            if self.raw_action is None
            else [_json_number(x) for x in self.raw_action],
            "guardrail_interventions": [
                {**i.to_dict(), "proposed": _json_number(i.proposed)} for i in self.interventions
            ],
            "shadow": self.shadow,
            "kill_switch": self.kill_switch,
            "actuated": self.actuated,
            "decision_ms": self.decision_ms,
            "metrics_age_s": _json_number(self.metrics_age_s),
            "problems": [p.__dict__ for p in self.problems[:MAX_LISTED_PROBLEMS]],
            "problem_count": len(self.problems),
            "observation": observation,
            "policy": str(sidecar.policy.path),
        }


def _json_number(value: float | None) -> float | None:
    """JSON has no NaN or Infinity: those become null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class AuditLog:
    """Appends one JSON line per decision (flushed, so a crash loses nothing written)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class _Choice:
    """A decision mode with the values it publishes and how they came about."""

    mode: str
    reason: str
    values: Mapping[str, float]
    proposed: dict[str, float] = field(default_factory=dict)
    raw: np.ndarray | None = None
    interventions: list[Intervention] = field(default_factory=list)


def _entry(raw: np.ndarray | None, i: int) -> float | None:
    return None if raw is None or raw.shape[0] <= i else float(raw[i])


class Sidecar:
    """The controller sidecar for one policy and one fleet.

    Parameters
    ----------
    config:
        The settings.
    policy:
        The loaded policy (default: loaded from ``config.policy``).
    actuators:
        Replaces the actuators the config names (e.g. for tests); ``None``: from the config.
    clock:
        Time source of :meth:`run` and of cycles called without a time.

    Raises
    ------
    SidecarConfigError
        The config does not fit the policy (pools, knobs, SLOs the metrics cannot feed...).
    policies.runtime.PolicyFileError, policies.runtime.PolicyMismatchError
        The policy file is unusable.
    """

    def __init__(
        self,
        config: SidecarConfig,
        policy: OnnxPolicy | None = None,
        *,
        actuators: Sequence[Actuator] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_rbac(config)  # before anything is loaded or scraped
        self.config = config
        self.clock = clock
        self.policy = policy if policy is not None else load_policy(config.policy)
        manifest = self.policy.manifest
        self.observation_contract = manifest.observation_contract
        self.action_contract = manifest.action_contract
        self.discovery = None if config.discovery is None else Discovery(config.discovery)
        self._listing: Listing | None = None  # the listing the sidecar started with
        self._last_listing = -math.inf  # when the engines were last listed
        try:
            engines = self._initial_engines()
            self.observer = self._observer(load_spec(dict(manifest.spec)), engines)
            self._check_action_contract()
            self.guardrails = Guardrails(self.action_contract, config.guardrails)
            self.scaling = self._replica_guardrails(engines)
            self.in_force = self._knob_values(config.initial_knobs, "initial_knobs")
            self.kill_knobs = self._knob_values(config.kill_knobs, "kill_knobs")
            self.fallback = self._fallback()
            self._refuse_outside_envelope(engines)  # after the config's own mistakes
        except (FeedabilityError, SpecError, ValueError) as exc:
            raise SidecarConfigError(f"{config.policy}: {exc}") from None
        self.last_safe = dict(self.in_force)
        #: Desired replicas per pool in force (an elastic policy's; empty otherwise).
        self.desired: dict[str, int] = self._listed_desired(engines, self._listing)
        if actuators is None:
            actuators = build_actuators(config.actuators, config.scaling)
        self.actuators = list(actuators)
        self.scraper = build_source(config, self.observer, self._scraped(engines))
        self.metrics = SidecarMetrics(self.observation_contract.windows)
        self.decision_log = DecisionLog(self.observation_contract.windows[0])
        self.metrics.info.labels(
            str(self.policy.path), manifest.onnx_sha256, manifest.spec_hash
        ).set(1)
        try:
            self.audit = AuditLog(config.audit_log) if config.audit_log is not None else None
        except OSError as exc:
            self.scraper.close()
            raise SidecarConfigError(f"audit_log: cannot open {config.audit_log}: {exc}") from None
        self.last_decision: Decision | None = None
        self.last_report: IngestReport | None = None
        self._lock = threading.Lock()
        self._shadow = config.shadow
        self._kill_switch = False
        self._last_complete = -math.inf
        self._first_cycle: float | None = None
        self._mode = ""
        self._problem_kinds: frozenset[tuple[str, str]] = frozenset()
        self._last_save = -math.inf
        self._save_requested = False
        self._restore()
        self.bootstrap: BootstrapReport | None = None
        if config.prometheus is not None and self.observer.engine.now == 0.0:  # not restored
            self.bootstrap = bootstrap_sidecar(config, self.observer, self.metrics, clock())
        self.metrics.shadow.set(float(self._shadow))
        self.metrics.in_envelope.set(1.0)

    def _refuse_outside_envelope(self, engines: Sequence[Engine]) -> None:
        """Refuse a fleet outside the policy's envelope (before anything is written); warn
        when the manifest has none (the reference fleet's is assumed)."""
        envelope = self.policy.manifest.envelope
        if envelope.assumed:  # the shipped policies: a normal start (EnvelopeAssumedWarning too)
            log.info(
                "%s has no envelope: the reference fleet's is assumed (re-export the policy "
                "to record the fleets it was trained on)",
                self.config.policy,
            )
        #: What differs between the fleet and the envelope (empty: inside).
        self.outside = outside_envelope(envelope, engines)
        if self.outside:
            raise ValueError(f"{describe(envelope, self.outside)}; nothing started")

    def _check_envelope(self, engines: Sequence[Engine]) -> None:
        """Follow the discovered fleet in and out of the envelope (logged when it changes)."""
        envelope = self.policy.manifest.envelope
        outside = outside_envelope(envelope, engines)
        if outside != self.outside:
            if outside:
                log.warning("%s", describe(envelope, outside))
            else:
                log.info("the fleet is back inside the policy's envelope")
        self.outside = outside
        self.metrics.in_envelope.set(0.0 if outside else 1.0)

    def _initial_engines(self) -> Sequence[Engine]:
        """The configured engines, or the first discovery listing's (an unreachable listing
        refuses the start: the sidecar would not know what to scrape)."""
        if self.discovery is None:
            return self.config.engines
        try:
            self._listing = self.discovery.fetch()
        except DiscoveryError as exc:
            raise ValueError(f"discovery: {exc}") from None
        return self._listing.engines

    def _observer(self, spec: ServiceSpec, engines: Sequence[Engine]) -> Observer:
        config = self.config
        return Observer(
            self.observation_contract,
            spec,
            config.mapping,
            config.signals.arrivals,
            engines,
            [c.name for c in config.counters],
            config.interval_s,
            config.stale_after_s,
            config.missing_data.min_coverage,
            config.fleet_capacity,
            {pool: s.max_replicas for pool, s in config.scaling.items()},
        )

    def _replica_guardrails(self, engines: Sequence[Engine]) -> ReplicaGuardrails | None:
        """The scaling bounds of an elastic policy (``None`` for a fixed one), after checking
        that the config can observe and scale its pools."""
        contract, config = self.observation_contract, self.config
        if not contract.elastic:
            sections = {"scaling": config.scaling, "actuators.scale": config.actuators.scale}
            for section, given in sections.items():
                if given:
                    raise ValueError(
                        f"{section}: the policy does not scale pools (its observation contract "
                        f"{contract.version} is a fixed fleet's): remove {section}"
                    )
            return None
        scaled = f"the policy scales pools ({contract.version}: {list(contract.pools)})"
        if self._listing is None:
            raise ValueError(
                f"{scaled} and observes each replica's lifecycle (provisioning, serving, "
                "draining), which a fixed engines list does not give: configure discovery (a "
                "listing of the engines with their state or Kubernetes Pod), e.g. the engine "
                "twin's /engines"
            )
        if not self._listing.reports_lifecycle:
            raise ValueError(
                f"discovery {config.discovery.url}: the listing does not give every engine's "
                f"lifecycle (a state or a Kubernetes Pod); {scaled} and observes replicas "
                "provisioning, serving, draining"
            )
        roles = {e.pool: engine_role(e) for e in engines}
        return ReplicaGuardrails(contract, config.scaling, roles)

    def _listed_desired(self, engines: Sequence[Engine], listing: Listing | None) -> dict[str, int]:
        """Desired replicas per pool as the listing gives them, else the replicas provisioning
        and serving (empty for a fixed policy)."""
        if self.scaling is None or listing is None:
            return {}
        pools = list(self.scaling.bounds)
        if all(pool in listing.desired for pool in pools):
            return {pool: listing.desired[pool] for pool in pools}
        active = (ReplicaLifecycle.PROVISIONING, ReplicaLifecycle.SERVING)
        return {
            pool: sum(1 for e in engines if e.pool == pool and e.lifecycle in active)
            for pool in pools
        }

    def _scraped(self, engines: Sequence[Engine]) -> list[tuple[str, str]]:
        """``(name, url)`` of the endpoints scraped: the engines that export metrics, the
        counter endpoints."""
        if self.discovery is None:
            scraped = [(e.name, e.url) for e in engines]
        else:
            scraped = scraped_endpoints([e for e in engines if isinstance(e, DiscoveredEngine)])
        return scraped + [(c.name, c.url) for c in self.config.counters]

    def _knob_values(self, values: Mapping[str, float], where: str) -> dict[str, float]:
        """Configured knob values (checked, named by ``where``), neutral for the others."""
        neutral = neutral_knob_values(self.action_contract.names)
        given = self.guardrails.check_values(values, where)
        changes = sorted(name for name in given if is_replica_knob(name))
        if changes:
            raise ValueError(
                f"{where}.{changes[0]}: replica knobs are changes, not settings; the desired "
                "replicas are kept while holding or killed (bound them with scaling)"
            )
        return self.guardrails.final_clamp({**neutral, **given}, neutral)[0]

    def _fallback(self) -> Controller:
        slo_kinds = {s.name: s.sli.llm.kind for s in self.observer.engine.slos}
        context = ControlContext(self.observation_contract, self.action_contract, slo_kinds)
        settings = self.config.fallback
        return build_baseline(settings.baseline, settings.params, context)

    def _check_action_contract(self) -> None:
        version = self.action_contract.version
        if version != ACTION_VERSION:
            raise ValueError(
                f"the policy acts by {version!r}, this sidecar reads {ACTION_VERSION!r}"
            )
        unknown = set(self.observation_contract.knob_names) - set(self.action_contract.names)
        if unknown:
            raise ValueError(
                f"the observation contract observes knobs {sorted(unknown)} the action contract "
                "does not define"
            )
        if self.observation_contract.elastic:
            pools = self.observation_contract.pools
            missing = [replicas_knob_name(p) for p in pools]
            missing = [k for k in missing if k not in self.action_contract.names]
            if missing:
                raise ValueError(
                    f"the observation contract scales pools {list(pools)}, the action contract "
                    f"lacks their replica knobs {missing}"
                )

    # ----------------------------------------------------------------------------------------
    # Switches (called from HTTP threads)

    @property
    def shadow(self) -> bool:
        return self._shadow

    def set_shadow(self, enabled: bool) -> None:
        """Enter or leave shadow mode (decide and record, do not actuate)."""
        with self._lock:
            self._shadow = bool(enabled)
        self.metrics.shadow.set(float(enabled))
        log.warning("shadow mode %s", "on" if enabled else "off")

    @property
    def kill_switch(self) -> bool:
        """Engaged by :meth:`set_kill_switch` or while the ``kill_switch_file`` exists."""
        path = self.config.kill_switch_file
        return self._kill_switch or (path is not None and path.exists())

    def set_kill_switch(self, engaged: bool, reason: str = "") -> None:
        """Engage (publish the kill knobs, stop the policy) or release the kill switch."""
        with self._lock:
            self._kill_switch = bool(engaged)
        self.metrics.kill_switch.set(float(engaged))
        log.warning("kill switch %s: %s", "engaged" if engaged else "released", reason or "-")
        self._save_requested = True  # saved by the decision loop, which owns the engine

    # ----------------------------------------------------------------------------------------
    # The cycle

    def cycle(self, now: float | None = None) -> Decision:
        """Scrape, decide and publish at ``now`` (default: the clock)."""
        now = self.clock() if now is None else float(now)
        start = time.perf_counter()
        self.scrape(now)
        decision = self.decide(now)
        self.metrics.cycle_seconds.observe(time.perf_counter() - start)
        return self.publish(decision)

    def scrape(self, now: float) -> IngestReport:
        """Refresh the engines (when discovery is due), scrape every endpoint and feed the
        budgets and signals."""
        listed = self.discover(now)
        return self.ingest(now, self.scraper.scrape(self.observer.parse), listed)

    def discover(self, now: float) -> list[Problem]:
        """Refresh the engines from discovery when due (every scrape round, or every
        ``discovery.refresh_s``); return the listing's problems. A failed listing keeps the
        engines known."""
        if self.discovery is None:
            return []
        if 0.0 <= now - self._last_listing < (self.config.discovery.refresh_s or 0.0) - 1e-9:
            return []
        try:
            listing = self.discovery.fetch()
        except DiscoveryError as exc:
            return [Problem("discovery", "discovery", str(exc))]
        self._last_listing = now
        problems = [Problem("discovery", "discovery", p) for p in listing.problems]
        problems += self.observer.set_engines(listing.engines)
        self._check_envelope(listing.engines)
        self.scraper.set_endpoints(self._scraped(self.observer.engines))
        if self.shadow and self.scaling is not None:
            self.desired = self._listed_desired(self.observer.engines, listing)
        return problems

    def ingest(
        self,
        now: float,
        results: Mapping[str, ScrapeResult],
        discovery_problems: Sequence[Problem] = (),
    ) -> IngestReport:
        """Feed one scrape round (pages parsed by :meth:`Observer.parse`, or errors) taken at
        ``now``; record its problems (and the listing's) in /metrics and the log. An elastic
        policy's metrics are not complete while the listing is stale (the lifecycle is part
        of its observation)."""
        report = self.observer.ingest(now, results)
        listing_age = now - self._last_listing
        listing_stale = self.scaling is not None and listing_age > self._listing_stale_after_s
        report = replace(
            report,
            complete=report.complete and not listing_stale,
            problems=tuple(discovery_problems) + report.problems,
        )
        if report.complete:
            self._last_complete = now
        for name, result in results.items():
            self.metrics.endpoint_up.labels(name).set(1.0 if result.ok else 0.0)
        for problem in report.problems:
            self.metrics.scrape_errors.labels(problem.endpoint, problem.kind).inc()
        self._log_problems(report.problems)
        self.last_report = report
        return report

    @property
    def _listing_stale_after_s(self) -> float:
        """Age after which the last good listing is stale."""
        return (self.config.discovery.refresh_s or 0.0) + self.config.stale_after_s

    def decide(self, now: float) -> Decision:
        """Observe and decide (no actuation): the mode, the proposal, the guardrails."""
        start = time.perf_counter()
        knob_units = {k.name: k.to_unit(self.in_force[k.name]) for k in self.action_contract.knobs}
        desired = self.scaling.by_contract_pool(self.desired) if self.desired else None
        observation = self.observer.observe(now, knob_units, desired)
        if self._first_cycle is None:
            self._first_cycle = now
        age = now - self._last_complete
        kill, shadow = self.kill_switch, self.shadow
        choice = self._choose(observation.vector, now, age, kill)
        knobs, clamped = self.guardrails.final_clamp(choice.values, self.last_safe)
        knobs, fixed = self._hold_without_counterpart(knobs)
        desired_replicas, knobs, scaled = self._scale(knobs)
        if choice.mode in ("policy", "fallback"):
            # Replica knobs are changes: holding must not repeat one.
            self.last_safe = {
                name: REPLICA_CHANGE_NEUTRAL if is_replica_knob(name) else value
                for name, value in knobs.items()
            }
        return Decision(
            time=now,
            mode=choice.mode,
            reason=choice.reason,
            knobs=knobs,
            proposed=choice.proposed,
            raw_action=None if choice.raw is None else [float(x) for x in choice.raw],
            interventions=choice.interventions + clamped + fixed + scaled,
            observation=observation,
            metrics_age_s=age,
            problems=self.last_report.problems if self.last_report else (),
            shadow=shadow,
            kill_switch=kill,
            decision_ms=(time.perf_counter() - start) * 1e3,
            desired_replicas=desired_replicas,
        )

    def _hold_without_counterpart(
        self, knobs: dict[str, float]
    ) -> tuple[dict[str, float], list[Intervention]]:
        """The knobs with those the fleet has no counterpart for (a v3 policy on a fleet
        without a cheap tier) at their neutral value, each change an intervention."""
        held = knobs_without_counterpart(self.observer.engines)
        if not self.observation_contract.by_role or not held:
            return knobs, []
        fixed = [
            Intervention(name, "no_counterpart", knobs[name], value)
            for name, value in held.items()
            if name in knobs and knobs[name] != value
        ]
        return knobs | {n: v for n, v in held.items() if n in knobs}, fixed

    def _scale(
        self, knobs: dict[str, float]
    ) -> tuple[dict[str, int], dict[str, float], list[Intervention]]:
        """The desired replicas the knobs lead to from those in force (none for a fixed
        policy), the knobs with their replica changes as bounded, the interventions."""
        if self.scaling is None:
            return {}, knobs, []
        return self.scaling.apply(self.desired, knobs)

    def _choose(self, vector: np.ndarray, now: float, age: float, kill: bool) -> _Choice:
        """The decision mode and its proposal (see the module docstring)."""
        if kill:
            return _Choice("kill", "kill switch engaged: kill knobs published", self.kill_knobs)
        if self.outside:
            reason = describe(self.policy.manifest.envelope, self.outside)
            if self.config.envelope.action == "hold":
                return _Choice("hold", f"{reason}: last safe action held", self.last_safe)
            return self._fallback_choice(vector, reason)
        if age <= self.config.stale_after_s:
            blind = self._slos_without_data(now)
            if not blind:
                return self._proposal(self.policy.act, vector, "policy", "policy decision")
            settings = self.config.missing_data
            reason = (
                f"no data for SLOs {blind} for {settings.after_cycles} intervals or more "
                "(missing_data.after_cycles)"
            )
            if settings.action == "hold":
                return _Choice("hold", f"{reason}: last safe action held", self.last_safe)
            return self._fallback_choice(vector, reason)
        stale_for = now - max(self._last_complete, self._first_cycle or now)
        if stale_for <= self.config.fallback_after_s:
            reason = f"metrics stale for {_seconds(age)}: last safe action held"
            return _Choice("hold", reason, self.last_safe)
        reason = (
            f"metrics stale for {stale_for:.0f} s (> fallback_after_s "
            f"{self.config.fallback_after_s:g})"
        )
        return self._fallback_choice(vector, reason)

    def _slos_without_data(self, now: float) -> list[str]:
        """SLOs the policy observes that no scrape has measured for ``missing_data.after_cycles``
        intervals (counted from the first cycle for those never measured)."""
        limit = self.config.missing_data.after_cycles * self.config.interval_s
        waited = self.observer.seconds_without_data(now, self._first_cycle or now)
        return [name for name, seconds in waited.items() if seconds >= limit - 1e-9]

    def _fallback_choice(self, vector: np.ndarray, reason: str) -> _Choice:
        """The fallback baseline's proposal (reset when it takes over)."""
        if self._mode != "fallback":
            self.fallback.reset()
        reason = f"{reason}: fallback baseline {self.fallback.name!r}"
        return self._proposal(self.fallback.act, vector, "fallback", reason)

    def _proposal(
        self, act: Callable[[np.ndarray], np.ndarray], vector: np.ndarray, mode: str, reason: str
    ) -> _Choice:
        """The proposer's action through the guardrails; an unusable one holds the last safe
        action."""
        raw = None
        try:
            raw = np.asarray(act(vector), dtype=np.float64).reshape(-1)
            problem = action_problem(raw, len(self.action_contract.knobs))
        except Exception as exc:  # onnxruntime and heuristics may fail in their own ways
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            held = self.last_safe
            interventions = [
                Intervention(name, "invalid_output", _entry(raw, i), held[name])
                for i, name in enumerate(self.action_contract.names)
            ]
            reason = f"{mode} output unusable ({problem}): last safe action held"
            return _Choice("hold", reason, held, raw=raw, interventions=interventions)
        proposed = self.guardrails.decode(raw)
        values, interventions = self.guardrails.apply(proposed, self.in_force)
        return _Choice(mode, reason, values, proposed, raw, interventions)

    def publish(self, decision: Decision) -> Decision:
        """Actuate (unless in shadow mode), record in /metrics and the audit log."""
        actuated: dict[str, str] = {}
        if decision.shadow:
            actuated = {a.name: "skipped: shadow mode" for a in self.actuators}
        else:
            for actuator in self.actuators:
                actuated[actuator.name] = self._actuate(actuator, decision)
            if not self.actuators or "ok" in actuated.values():
                self.in_force = dict(decision.knobs)
                self.desired = dict(decision.desired_replicas)
        decision = replace(decision, actuated=actuated)
        self._record(decision)
        self.last_decision = decision
        return decision

    def _actuate(self, actuator: Actuator, decision: Decision) -> str:
        try:
            actuator.apply(decision.knobs, decision.to_dict(self))
        except ActuationError as exc:
            self.metrics.actuation_errors.labels(actuator.name).inc()
            log.warning("actuator %s failed: %s", actuator.name, exc)
            return f"error: {exc}"
        return "ok"

    def _record(self, decision: Decision) -> None:
        metrics = self.metrics
        metrics.decision_seconds.observe(decision.decision_ms / 1e3)
        metrics.record_budgets(decision.observation.snapshot)
        metrics.record_knobs(decision.knobs, decision.proposed)
        metrics.record_mode(decision.mode)
        metrics.metrics_age.set(
            decision.metrics_age_s if math.isfinite(decision.metrics_age_s) else -1.0
        )
        metrics.healthy_replicas.set(decision.observation.healthy_replicas)
        if self.scaling is not None:
            deployments = {pool: s.deployment for pool, s in self.config.scaling.items()}
            counts = decision.observation.replica_counts
            metrics.record_replicas(self.desired, deployments, counts)
        for intervention in decision.interventions:
            metrics.interventions.labels(intervention.knob, intervention.guardrail).inc()
        if decision.mode != self._mode:
            # Starting, or returning to the policy, is normal; anything else needs a look.
            normal = not self._mode or decision.mode == "policy"
            log.log(
                logging.INFO if normal else logging.WARNING,
                "decision mode %s -> %s: %s",
                self._mode or "start",
                decision.mode,
                decision.reason,
            )
            self._mode = decision.mode
        self.decision_log.record(decision)
        if self.audit is not None:
            self.audit.write(decision.to_dict(self, vector=True))
        if (
            self._save_requested
            or decision.time - self._last_save >= self.config.state.save_every_s
        ):
            self._save_state(decision.time)

    def _log_problems(self, problems: Sequence[Problem]) -> None:
        """Log problems when their set changes (every cycle would drown the log)."""
        kinds = frozenset((p.endpoint, p.kind) for p in problems)
        if kinds != self._problem_kinds:
            for problem in problems[:MAX_LISTED_PROBLEMS]:
                log.warning(
                    "metrics problem at %s (%s): %s", problem.endpoint, problem.kind, problem.detail
                )
            if not problems:
                log.info("metrics problems cleared")
        self._problem_kinds = kinds

    # ----------------------------------------------------------------------------------------
    # State

    def _save_state(self, now: float | None = None) -> None:
        directory = self.config.state.directory
        if directory is None:
            return
        engine = self.observer.engine
        state = persisted.SidecarState(
            dict(self.in_force), dict(self.last_safe), self._kill_switch, engine.now, self.desired
        )
        try:
            persisted.save(directory, engine, state)
            self._last_save = engine.now if now is None else now
            self._save_requested = False
        except persisted.StateError as exc:
            self.metrics.state_errors.labels("save").inc()
            log.error("%s", exc)

    def _restore(self) -> None:
        directory = self.config.state.directory
        if directory is None:
            return
        try:
            restored = persisted.restore(directory, self.observer.engine)
        except persisted.StateError as exc:
            self.metrics.state_errors.labels("restore").inc()
            log.error("%s; starting with fresh budgets", exc)
            return
        if restored is None:
            return
        self.in_force, _ = self.guardrails.final_clamp(restored.in_force, self.in_force)
        self.last_safe, _ = self.guardrails.final_clamp(restored.last_safe, self.in_force)
        self._kill_switch = restored.kill_switch
        if self.desired and set(restored.desired_replicas) == set(self.desired):
            self.desired = dict(restored.desired_replicas)
        self.metrics.kill_switch.set(float(self._kill_switch))
        log.info("state restored from %s (saved at %.0f)", directory, restored.saved_at)

    # ----------------------------------------------------------------------------------------
    # Running

    def run(self, stop: threading.Event) -> None:
        """Scrape ``scrape.per_interval`` times per interval and decide at multiples of the
        interval until ``stop`` is set (a failing round is logged, counted and survived)."""
        interval = self.config.interval_s
        tick = interval / self.config.scrape.per_interval
        now = self.clock()
        decide = True  # the first round decides at once, whatever the grid
        while not stop.is_set():
            try:
                if decide:
                    self.cycle(now)
                else:
                    self.scrape(now)
            except Exception:  # the loop must outlive any single round's bug
                log.exception("sidecar round failed")
                self.metrics.scrape_errors.labels("sidecar", "round_failure").inc()
            now = (math.floor(self.clock() / tick + 1e-9) + 1) * tick
            decide = abs(now / interval - round(now / interval)) < 1e-6
            stop.wait(max(0.0, now - self.clock()))

    def close(self) -> None:
        """Save the state and release connections and files."""
        self._save_state()
        self.scraper.close()
        if self.audit is not None:
            self.audit.close()


def _seconds(age: float) -> str:
    return "since start (no complete scrape yet)" if math.isinf(age) else f"{age:.0f} s"
