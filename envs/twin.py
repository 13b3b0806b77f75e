"""The engine twin: a simulated fleet that answers over HTTP like its engines would.

:class:`EngineTwin` runs one scenario draw of :mod:`envs.scenarios` (the fleet
``LLMFleetEnv(scenario).reset(seed=seed)`` builds, taken over at the end of its warm-up) in
accelerated real time and serves, on loopback or any address:

=================================  ==========================================================
``GET /engines``                   JSON list of replicas: name, pool, model, metrics URL...
                                   (elastic: also ``state`` and ``desired_replicas``)
``GET /engines/<name>/metrics``    one replica's engine metrics (vLLM or SGLang exposition);
                                   503 while the replica is down or provisioning, 404 while
                                   its slot is stopped
``GET /router/metrics``            budgetpilot counters of a budget-aware router (the SLIs
                                   engines cannot see: rejections, quality, tenants) and
                                   ``budgetpilot:arrivals_total``
``GET /v1/knobs``                  knob values in force, by :class:`ActionContract` name
``POST /v1/knobs``                 JSON object of knob values (partial); 400 naming the knob
``GET /v1/replicas``               elastic: desired replicas, caps and lifecycle counts per
                                   pool (409 on a fixed fleet)
``POST /v1/replicas``              elastic: ``{"desired": {"strong": 4}}``; 400 naming the
                                   pool and the bound, nothing applied (409 on a fixed fleet)
``GET /v1/state``                  simulated time, speed, scenario, knobs, replica health
                                   (elastic: also the ``/v1/replicas`` document)
``GET /fleet``                      the fleet's capacity per pool role (requests/s saturated;
                                   what a policy of observation contract v3 is relative to)
``GET /v1/faults``                 the faults injected into each replica's page
``POST /v1/faults``                ``{"replica": "strong-0", "kind": "nan", "metric": ...}``
                                   injects a fault (:mod:`envs.twin_faults`), ``{"clear":
                                   "strong-0"}`` (or ``"all"``) clears; 400 naming the field
``GET /healthz``                   the twin itself is up
=================================  ==========================================================

Each replica behaves like an engine process: its counters count from the moment the twin starts
serving, and when the replica fails its endpoint answers 503 until it recovers, with counters
restarted from zero (what a crashed and restarted vLLM exposes; the metrics feed reads the drop
as a restart).

An elastic scenario (:data:`envs.scenarios.ELASTIC_SCENARIOS`) runs the elastic fleet of
``LLMFleetEnv(elastic=True)``: every pool has replica slots up to its cap, named like the pods of
a StatefulSet (``strong-0`` ... ``strong-5``), and ``POST /v1/replicas`` scales it. ``GET
/engines`` lists the slots that hold a replica, each with its ``state`` as a Kubernetes pod
would show it: ``provisioning`` (not Ready: node, weights, engine start; its endpoint answers 503
since the engine has not started), ``serving`` (Ready) or ``draining`` (Terminating: finishing
its requests, taking no new ones, still exporting metrics). A replica that stops takes its
counters with it; the next one in its slot starts from zero.

Simulated time moves in increments of ``tick_s`` on a fixed grid (so the same seed and the same
sequence of calls give the same simulation whatever the wall-clock jitter), either by a
background clock at ``speed`` times wall time or explicitly with :meth:`EngineTwin.step`. One lock
serialises the clock, the knobs and the scrapes: a scrape sees the state at a tick boundary.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from envs.contract import REPLICAS_KNOB_SUFFIX, ROLES, ActionContract, KnobSpec
from envs.fleet_env import LLMFleetEnv, sim_knobs
from envs.scenarios import env_kwargs_for
from envs.sim import FleetStats, ReplicaState, SimConfig
from envs.twin_faults import FaultError, PageFault
from slo.events import REQUEST_EVENT_DTYPE, empty_events, finished_by_engine
from slo.exposition import ExpositionRenderer
from slo.metrics import load_mapping
from slo.spec import ServiceSpec

_log = logging.getLogger(__name__)
#: The metric dialects the twin renders (engines with request histograms).
TWIN_MAPPINGS = ("vllm", "vllm-legacy", "sglang", "sglang-legacy")

#: Largest POST body accepted (a knob update is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024


#: HELP texts of the engines' gauges and counters, by metric name (presentation: the names
#: come from the metric mappings of :mod:`slo.metrics`, which the sidecar reads too).
ENGINE_HELP: dict[str, str] = {
    "vllm:kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:gpu_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "vllm:num_requests_waiting": "Number of requests waiting to be processed.",
    "vllm:num_requests_running": "Number of requests in model execution batches.",
    "vllm:num_preemptions_total": "Cumulative number of preemption from the engine.",
    "vllm:prompt_tokens_total": "Number of prefill tokens processed.",
    "vllm:generation_tokens_total": "Number of generation tokens processed.",
    "sglang:prompt_tokens_total": "Number of prefill tokens processed.",
    "sglang:generation_tokens_total": "Number of generation tokens processed.",
    "sglang:token_usage": "The token usage.",
    "sglang:num_queue_reqs": "The number of requests in the waiting queue.",
    "sglang:num_running_reqs": "The number of running requests.",
    "sglang:num_retracted_requests_total": "Total number of retracted requests.",
    "sglang:num_requests_total": "Number of requests processed.",
}
#: Constant labels of every engine series besides the model label, per built-in mapping: vLLM
#: v1 labels them with the engine index (one engine per server here); vLLM v0 and SGLang have
#: ``model_name`` only.
ENGINE_LABELS: dict[str, tuple[tuple[str, str], ...]] = {"vllm": (("engine", "0"),)}


class KnobError(ValueError):
    """A knob update the contract refuses; ``knob`` names the offending knob (None when the
    body as a whole is wrong)."""

    def __init__(self, message: str, knob: str | None = None) -> None:
        super().__init__(message)
        self.knob = knob


class ReplicaDownError(RuntimeError):
    """The replica is failed or still provisioning: its engine does not serve."""


class ReplicaStoppedError(LookupError):
    """The replica slot holds no replica (a pod that does not exist)."""


class ReplicasError(ValueError):
    """A desired-replicas update the fleet refuses; ``pool`` names the offending pool (None when
    the body as a whole is wrong)."""

    def __init__(self, message: str, pool: str | None = None) -> None:
        super().__init__(message)
        self.pool = pool


class FixedFleetError(RuntimeError):
    """The twin runs a fixed fleet: its pools do not scale."""


#: How ``GET /engines`` names the lifecycle of a replica (as a Kubernetes pod's status reads:
#: not Ready, Ready, Terminating); stopped slots are not listed.
STATE_NAMES = {
    ReplicaState.PROVISIONING: "provisioning",
    ReplicaState.SERVING: "serving",
    ReplicaState.DRAINING: "draining",
}
#: Lifecycle states whose engine runs (answers its scrape unless failed).
_RUNNING = (ReplicaState.SERVING, ReplicaState.DRAINING)


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica as the twin exposes it.

    ``model`` is the ``model_name`` label of its series (the SLO spec's name of its tier, what
    SLO selectors match); ``served_model`` the model it simulates (its catalog name, or its
    ``config.json``'s) and ``gpu`` the GPU kind it runs on.
    """

    index: int
    name: str
    pool: str
    tier: int
    model: str
    served_model: str
    max_num_seqs: int
    gpu: str


def validate_knob_update(contract: ActionContract, body: Any) -> dict[str, float]:
    """Check a JSON knob update against the contract's ranges; return it as floats.

    Parameters
    ----------
    contract:
        The action contract (knob names, ranges, integer knobs).
    body:
        The decoded JSON: an object mapping knob names to numbers (a subset of the knobs).

    Raises
    ------
    KnobError
        Naming the first knob that is unknown, not a finite number, out of range or not whole.
    """
    if not isinstance(body, Mapping):
        raise KnobError(
            f"expected a JSON object of knob values, got {type(body).__name__}; "
            f"knobs: {', '.join(contract.names)}"
        )
    specs = {k.name: k for k in contract.knobs}
    return {str(name): _checked_knob(specs, name, value) for name, value in body.items()}


def _checked_knob(specs: Mapping[str, KnobSpec], name: str, value: Any) -> float:
    spec = specs.get(name)
    if spec is None:
        replica_knob = name.endswith(REPLICAS_KNOB_SUFFIX)
        hint = "; desired replicas are set by POST /v1/replicas" if replica_knob else ""
        raise KnobError(f"unknown knob {name!r}; knobs: {', '.join(specs)}{hint}", name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KnobError(f"knob {name!r}: expected a finite number, got {value!r}", name)
    if not spec.low <= value <= spec.high:
        raise KnobError(f"knob {name!r} = {value} is outside [{spec.low:g}, {spec.high:g}]", name)
    if spec.integer and value != round(value):
        raise KnobError(f"knob {name!r} takes whole values, got {value}", name)
    return float(value)


def validate_replicas_update(body: Any, max_replicas: Mapping[str, int]) -> dict[str, int]:
    """Check a JSON desired-replicas update; return it as ``{pool: count}``.

    Parameters
    ----------
    body:
        The decoded JSON: ``{"desired": {"strong": 4, "cheap": 1}}`` (any subset of the pools).
    max_replicas:
        Every pool's cap (its replica slots).

    Raises
    ------
    ReplicasError
        Naming the first pool that is unknown, not given a whole number, or given a count
        outside ``[1, cap]``.
    """
    pools = ", ".join(max_replicas)
    if not isinstance(body, Mapping) or set(body) != {"desired"}:
        raise ReplicasError(f'expected {{"desired": {{pool: replicas}}}}; pools: {pools}')
    desired = body["desired"]
    if not isinstance(desired, Mapping):
        raise ReplicasError(f'"desired" must map pools ({pools}) to replica counts')
    checked = {}
    for pool, count in desired.items():
        cap = max_replicas.get(pool)
        if cap is None:
            raise ReplicasError(f"unknown pool {pool!r}; pools: {pools}", pool)
        if isinstance(count, bool) or not isinstance(count, int):
            raise ReplicasError(
                f"pool {pool!r}: desired replicas must be a whole number, got {count!r}", pool
            )
        if not 1 <= count <= cap:
            raise ReplicasError(f"pool {pool!r}: desired replicas {count} outside [1, {cap}]", pool)
        checked[str(pool)] = count
    return checked


def _concat_events(batches: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` of request-event arrays, through their bytes: numpy promotes a
    structured dtype field by field on every concatenate, which costs 20x more for the small
    per-tick batches the twin joins."""
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return empty_events()
    raw = [np.ascontiguousarray(b, dtype=REQUEST_EVENT_DTYPE).view(np.uint8) for b in batches]
    return np.concatenate(raw).view(REQUEST_EVENT_DTYPE)


class _LazyExposition:
    """An :class:`ExpositionRenderer` fed lazily: event batches queue up between scrapes and are
    added as one batch when the page is rendered (an ``add`` costs about the same whatever the
    batch size, and the clock produces a batch every tick)."""

    FLUSH_AT = 100_000  # queued events that force an early add (bounds memory without scrapes)

    def __init__(self, renderer: ExpositionRenderer) -> None:
        self.renderer = renderer
        self._pending: list[np.ndarray] = []
        self._queued = 0

    def add(self, events: np.ndarray) -> None:
        if len(events) == 0:
            return
        self._pending.append(events)
        self._queued += len(events)
        if self._queued >= self.FLUSH_AT:
            self._flush()

    def render(self) -> str:
        self._flush()
        return self.renderer.render()

    def _flush(self) -> None:
        if self._pending:
            self.renderer.add(_concat_events(self._pending))
            self._pending.clear()
            self._queued = 0


class _Page:
    """One metrics page: the exposition of the request events it was fed, then the families its
    :meth:`collect` yields (a prometheus_client collector of the simulator's state)."""

    exposition: _LazyExposition

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> str:
        return self.exposition.render() + generate_latest(self.registry).decode()

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class _Engine(_Page):
    """One replica's engine process: request metrics, scheduler gauges (KV-cache usage, waiting,
    running) and counters (preemptions; prompt and generation tokens of finished requests;
    finished requests when the mapping counts them apart from ``request_success``), named by
    the metric mapping. :meth:`restart` starts a new process
    (counters from zero)."""

    def __init__(self, twin: EngineTwin, info: ReplicaInfo, healthy: bool) -> None:
        super().__init__()
        self.twin, self.info, self.up = twin, info, healthy
        mapping = twin.mapping
        self.constant_labels = ENGINE_LABELS.get(mapping.name, ())
        self.label_names = [mapping.model_label, *(k for k, _ in self.constant_labels)]
        self.label_values = [info.model, *(v for _, v in self.constant_labels)]
        # vLLM's finished requests are request_success, which the exposition renders already.
        counted_apart = mapping.finished != mapping.request_success
        self.finished_name = mapping.finished if counted_apart else None
        self.restart(twin.stats)

    def restart(self, stats: FleetStats) -> None:
        twin = self.twin
        labels = dict(self.constant_labels)
        renderer = ExpositionRenderer(
            twin.spec, twin.mapping, labels=labels, budget_counters=False, tiers=(self.info.tier,)
        )
        self.exposition = _LazyExposition(renderer)
        self.preemptions0 = int(stats.preemptions[self.info.index])
        self.finished = self.prompt_tokens = self.generation_tokens = 0

    def add(self, events: np.ndarray) -> None:
        """Account the request events this replica ended."""
        self.exposition.add(events)
        finished = events[finished_by_engine(events)]
        self.finished += len(finished)
        self.prompt_tokens += int(finished["prompt_tokens"].sum(dtype=np.int64))
        self.generation_tokens += int(finished["output_tokens"].sum(dtype=np.int64))

    def collect(self) -> Iterator[Metric]:
        """Scheduler gauges and counters, from the last tick's fleet stats."""
        stats, r, mapping = self.twin.stats, self.info.index, self.twin.mapping
        gauges = (
            (mapping.kv_cache_usage, stats.kv_usage[r]),
            (mapping.waiting, stats.waiting[r]),
            (mapping.running, stats.running[r]),
        )
        counters = (
            (mapping.preemptions, stats.preemptions[r] - self.preemptions0),
            (self.finished_name, self.finished),
            (mapping.prompt_tokens_total, self.prompt_tokens),
            (mapping.generation_tokens_total, self.generation_tokens),
        )
        for kind, series in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, value in series:
                if name is None:
                    continue
                family = kind(name, ENGINE_HELP[name], labels=self.label_names)
                family.add_metric(self.label_values, float(value))
                yield family


class _Router(_Page):
    """The budgetpilot counters of a budget-aware router in front of the fleet, plus the
    requests that reached it (``budgetpilot:arrivals_total``)."""

    ARRIVALS = "budgetpilot:arrivals"

    def __init__(self, twin: EngineTwin) -> None:
        super().__init__()
        self.twin = twin
        tenants = len(twin.setup.config.tenants)  # a router knows its tenants
        renderer = ExpositionRenderer(
            twin.spec, twin.mapping, engine_metrics=False, tenants=tenants
        )
        self.exposition = _LazyExposition(renderer)
        self.arrivals0 = twin.sim.arrivals

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.ARRIVALS, "Requests that reached the router.")
        family.add_metric([], float(self.twin.sim.arrivals - self.arrivals0))
        yield family


class EngineTwin:
    """A simulated fleet served as engines over HTTP.

    Parameters
    ----------
    scenario:
        Scenario name (:data:`envs.scenarios.SCENARIOS`).
    seed:
        Seed of the scenario draw and of the simulation: the twin runs the fleet that
        ``LLMFleetEnv(scenario, spec=spec, warmup_s=warmup_s).reset(seed=seed)`` builds, from the
        end of its warm-up on (neutral knobs).
    speed:
        Simulated seconds per wall second once :meth:`start` ed; 0 keeps time still except for
        :meth:`step` (deterministic tests).
    spec:
        SLO spec (or path); its ``budgetpilot.models`` names the ``model_name`` of each tier and
        the router counters are per SLO. Default: :func:`slo.default_spec`.
    mapping:
        Built-in metric mapping of the engines: ``vllm`` (v1 names), ``vllm-legacy``,
        ``sglang`` or ``sglang-legacy`` (:data:`TWIN_MAPPINGS`: the request
        histograms' and the scheduler metrics' names, which the sidecar reads too).
    tick_s:
        Simulated seconds per increment: gauges move and knob changes apply at this grid.
    warmup_s:
        Warm-up simulated before the twin starts serving (the environment's default).
    elastic:
        Run the elastic fleet (``LLMFleetEnv(elastic=True)``: pools scale up to their caps by
        :meth:`set_replicas`); ``None``: as the scenario needs (:func:`envs.scenarios.
        env_kwargs_for`, elastic for the elastic scenarios).
    fleet:
        A fleet file (path or :class:`envs.sim.SimConfig`) to run instead of the reference
        fleet (``LLMFleetEnv(fleet=...)``); its SLO spec applies unless ``spec`` is given.
    """

    def __init__(
        self,
        scenario: str,
        seed: int,
        speed: float = 1.0,
        spec: ServiceSpec | str | None = None,
        mapping: str = "vllm",
        *,
        tick_s: float = 1.0,
        warmup_s: float = 600.0,
        elastic: bool | None = None,
        fleet: SimConfig | str | Path | None = None,
    ) -> None:
        if mapping not in TWIN_MAPPINGS:
            raise ValueError(
                f"unknown mapping {mapping!r}; the twin speaks {', '.join(TWIN_MAPPINGS)}"
            )
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed must be a finite number >= 0, got {speed}")
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        kwargs = env_kwargs_for(scenario) if elastic is None else {"elastic": bool(elastic)}
        env = LLMFleetEnv(scenario, spec=spec, warmup_s=warmup_s, fleet=fleet, **kwargs)
        env.reset(seed=seed)
        self.fleet = env.fleet
        self.scenario, self.seed, self.elastic = env.scenario.name, seed, env.elastic
        self.speed, self.tick_s = float(speed), float(tick_s)
        self.setup, self.sim, self.spec = env.setup, env.sim, env.slo_spec
        # The replica knobs are changes, not settings: the twin is scaled by POST /v1/replicas.
        self.action_contract = _serving_knobs(env.action_contract)
        self._knob_values: dict[str, float] = {
            name: env.knob_values[name] for name in self.action_contract.names
        }
        #: Replica slots of every pool: the most replicas it may have.
        self.max_replicas = {p.name: p.replica_slots for p in self.setup.config.pools}
        self.mapping = load_mapping(mapping)
        rollout = self.setup.rollout_at_s
        self._rollout_pending = rollout is not None and rollout > self.sim.now
        self.stats = self.sim.fleet_stats()
        self.replicas = self._replica_infos(self.stats)
        running = _running(self.stats)
        self._engines = [_Engine(self, r, running[r.index]) for r in self.replicas]
        self._by_name = {r.name: e for r, e in zip(self.replicas, self._engines, strict=True)}
        self._router = _Router(self)
        self._faults: dict[str, list[PageFault]] = {}
        self._frozen: dict[str, str] = {}  # pages of replicas with a stale fault
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: _TwinServer | None = None
        self.lag_s = 0.0

    def _replica_infos(self, stats: FleetStats) -> tuple[ReplicaInfo, ...]:
        pools = self.setup.config.pools
        infos = []
        for r, (p, tier) in enumerate(zip(stats.pool.tolist(), stats.tier.tolist(), strict=True)):
            within = int(np.sum(stats.pool[:r] == p))
            infos.append(
                ReplicaInfo(
                    index=r,
                    name=f"{pools[p].name}-{within}",
                    pool=pools[p].name,
                    tier=tier,
                    model=self.spec.model_of_tier(tier),
                    served_model=pools[p].model_spec().name,
                    max_num_seqs=pools[p].max_num_seqs,
                    gpu=pools[p].gpu_spec().name,
                )
            )
        return tuple(infos)

    # ----------------------------------------------------------------------------------------
    # Simulated time

    @property
    def now(self) -> float:
        """Simulated seconds since the start of the scenario (warm-up included)."""
        return self.sim.now

    def step(self, seconds: float) -> np.ndarray:
        """Advance simulated time by ``seconds`` (on the tick grid, the lock taken tick by tick);
        return the request events (REQUEST_EVENT_DTYPE) that ended meanwhile."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        until = self.sim.now + seconds
        batches = []
        while self.sim.now < until:
            with self._lock:
                batches.append(self._tick(min(until, self._next_grid_point())))
        return _concat_events(batches)

    def _next_grid_point(self) -> float:
        # The small tolerance keeps a time a rounding error below a grid point on that point.
        return (math.floor(self.sim.now / self.tick_s + 1e-9) + 1) * self.tick_s

    def _tick(self, until: float) -> np.ndarray:
        """Simulate to ``until`` (the caller holds the lock) and account the events."""
        if until <= self.sim.now:  # another caller got there first
            return empty_events()
        batches = []
        if self._rollout_pending and self.setup.rollout_at_s <= until:
            batches.append(self.sim.advance(max(self.setup.rollout_at_s, self.sim.now)))
            self.fleet.roll_out(self.sim, self.setup.rollout_capability)
            self._rollout_pending = False
        batches.append(self.sim.advance(until))
        events = _concat_events(batches)
        self.stats = self.sim.fleet_stats()
        self._account(events)
        return events

    def _account(self, events: np.ndarray) -> None:
        """Give every engine its events and follow which engines run (the caller holds the
        lock and has just refreshed :attr:`stats`)."""
        replica = events["replica"]
        for engine, running in zip(self._engines, _running(self.stats), strict=True):
            engine.add(events[replica == engine.info.index])
            if engine.up and not running:
                engine.restart(self.stats)  # the process died with what it had counted
            engine.up = running
        self._router.exposition.add(events)

    def _run_clock(self) -> None:
        """Keep simulated time at ``speed`` x wall time, tick by tick, until :meth:`close`."""
        wall0, sim0 = time.monotonic(), self.sim.now
        while not self._stop.is_set():
            target = sim0 + self.speed * (time.monotonic() - wall0)
            due = math.floor(target / self.tick_s + 1e-9) * self.tick_s
            self.lag_s = max(0.0, target - self.sim.now)
            if self.sim.now < due:
                with self._lock:
                    self._tick(min(due, self._next_grid_point()))
                time.sleep(0)  # let a scrape waiting for the lock take it before the next tick
                continue
            wake = wall0 + (self._next_grid_point() - sim0) / self.speed
            self._stop.wait(min(max(wake - time.monotonic(), 0.0), 0.1))

    # ----------------------------------------------------------------------------------------
    # What the endpoints serve (thread-safe)

    def metrics_text(self, replica: str) -> str:
        """Exposition text of one replica's engine.

        Raises ``KeyError`` for an unknown replica, :class:`ReplicaStoppedError` while its slot
        holds no replica, :class:`ReplicaDownError` while it is down or provisioning.
        """
        engine = self._by_name.get(replica)
        if engine is None:
            raise KeyError(f"no replica {replica!r}; replicas: {', '.join(self._by_name)}")
        with self._lock:
            state = self.stats.lifecycle[engine.info.index]
            when = f"t={self.sim.now:.0f} s"
            if state == ReplicaState.STOPPED:
                raise ReplicaStoppedError(f"replica {replica!r} is stopped ({when})")
            if state == ReplicaState.PROVISIONING:
                raise ReplicaDownError(
                    f"replica {replica!r} is provisioning: its engine has not started ({when})"
                )
            if not engine.up:
                raise ReplicaDownError(f"replica {replica!r} is down ({when})")
            text = self._frozen.get(replica) or engine.render()
            for fault in self._faults.get(replica, ()):
                text = fault.apply(text)
            return text

    def faults(self) -> dict[str, list[dict[str, str]]]:
        """The faults injected into each replica's page."""
        with self._lock:
            return {name: [f.to_dict() for f in faults] for name, faults in self._faults.items()}

    def inject_fault(self, update: Any) -> dict[str, list[dict[str, str]]]:
        """Inject a fault into a replica's page (``{"replica": ..., "kind": ..., ...}``, see
        :mod:`envs.twin_faults`) or clear them (``{"clear": replica or "all"}``); the faults in
        force.

        Raises
        ------
        FaultError
            Naming the field: an unknown replica or kind, a missing or unexpected field.
        """
        if isinstance(update, Mapping) and "clear" in update:
            self._clear_faults(update["clear"])
            return self.faults()
        replica = update.get("replica") if isinstance(update, Mapping) else None
        if replica not in self._by_name:
            raise FaultError(f"replica: {replica!r} is not one of {', '.join(self._by_name)}")
        fault = PageFault.of(update)
        with self._lock:
            engine = self._by_name[replica]
            if fault.kind == "counter_reset":
                engine.restart(self.stats)  # a restart is an event, not a state of the page
            elif fault.kind == "stale":
                self._frozen[replica] = engine.render()
            else:
                self._faults.setdefault(replica, []).append(fault)
        return self.faults()

    def _clear_faults(self, replica: Any) -> None:
        if replica != "all" and replica not in self._by_name:
            raise FaultError(f"clear: {replica!r} is neither a replica nor 'all'")
        with self._lock:
            for name in list(self._by_name) if replica == "all" else [replica]:
                self._faults.pop(name, None)
                self._frozen.pop(name, None)

    def router_metrics_text(self) -> str:
        """Exposition text of the router's budgetpilot counters."""
        with self._lock:
            return self._router.render()

    def knobs(self) -> dict[str, float]:
        """The knob values in force, by action-contract name."""
        with self._lock:
            return dict(self._knob_values)

    def set_knobs(self, update: Any) -> dict[str, float]:
        """Apply a (partial) knob update from now on; return the knob values in force.

        Raises :class:`KnobError` (nothing applied) when any entry is invalid.
        """
        checked = validate_knob_update(self.action_contract, update)
        with self._lock:
            values = self.fleet.in_force({**self._knob_values, **checked})
            self.sim.set_knobs(sim_knobs(values, self.fleet))
            self._knob_values = values
            self.stats = self.sim.fleet_stats()  # capacity (offload) and batch limits changed
            return dict(values)

    def engines(self) -> list[dict[str, Any]]:
        """The replicas as ``GET /engines`` lists them: every slot holding a replica (all of a
        fixed fleet's); an elastic twin adds each one's ``state`` and its pool's
        ``desired_replicas``."""
        with self._lock:
            up = [e.up for e in self._engines]
            lifecycle = self.stats.lifecycle.tolist()
            desired = self.sim.desired_replicas
        base = self.url if self._server is not None else ""
        listed = []
        for r, healthy, state in zip(self.replicas, up, lifecycle, strict=True):
            if state == ReplicaState.STOPPED:
                continue
            entry = {
                "name": r.name,
                "pool": r.pool,
                "model": r.model,
                "served_model": r.served_model,
                "gpu": r.gpu,
                "tier": r.tier,
                "max_num_seqs": r.max_num_seqs,
                "healthy": healthy,
                "metrics_url": f"{base}/engines/{r.name}/metrics",
            }
            if self.elastic:
                entry |= {"state": STATE_NAMES[state], "desired_replicas": desired[r.pool]}
            listed.append(entry)
        return listed

    def fleet_capacity(self) -> dict[str, Any]:
        """What ``GET /fleet`` reports: requests/s each role of :data:`envs.contract.ROLES`
        serves saturated (0 for a role the fleet lacks; the cheap one measured when first
        asked, then cached)."""
        rps = self.fleet.role_capacity_rps
        return {"capacity_rps": dict(zip(ROLES, rps, strict=True))}

    def replicas_state(self) -> dict[str, Any]:
        """What ``GET /v1/replicas`` reports: per pool, the desired replicas, the cap and the
        replicas provisioning, serving and draining.

        Raises :class:`FixedFleetError` on a fixed fleet.
        """
        self._require_elastic()
        with self._lock:
            return self._replica_counts()

    def set_replicas(self, update: Any) -> dict[str, Any]:
        """Scale pools from now on (``{"desired": {"strong": 4}}``, as
        :meth:`envs.sim.Simulator.set_desired_replicas` does); return :meth:`replicas_state`.

        Raises :class:`FixedFleetError` on a fixed fleet, :class:`ReplicasError` (nothing
        applied) when any entry is invalid.
        """
        self._require_elastic()
        checked = validate_replicas_update(update, self.max_replicas)
        with self._lock:
            for pool, count in checked.items():
                self.sim.set_desired_replicas(pool, count)
            self.stats = self.sim.fleet_stats()  # provisioning, draining and stopped replicas
            self._account(empty_events())
            return self._replica_counts()

    def _require_elastic(self) -> None:
        if not self.elastic:
            raise FixedFleetError(
                f"the twin runs the fixed fleet of scenario {self.scenario!r}: its pools do not "
                "scale (run an elastic scenario, or EngineTwin(elastic=True) / twin --elastic)"
            )

    def _replica_counts(self) -> dict[str, Any]:
        stats = self.stats
        counts = {
            "provisioning": stats.pool_provisioning,
            "serving": stats.pool_serving,
            "draining": stats.pool_draining,
        }
        return {
            "desired": self.sim.desired_replicas,
            "max_replicas": dict(self.max_replicas),
            "replicas": {
                pool: {state: int(n[p]) for state, n in counts.items()}
                for p, pool in enumerate(stats.pool_names)
            },
        }

    def state(self) -> dict[str, Any]:
        """What ``GET /v1/state`` reports."""
        with self._lock:
            healthy = {r.name: e.up for r, e in zip(self.replicas, self._engines, strict=True)}
            scaling = {"replicas": self._replica_counts()} if self.elastic else {}
            return {
                "scenario": self.scenario,
                "seed": self.seed,
                "time_s": self.sim.now,
                "speed": self.speed,
                "tick_s": self.tick_s,
                "lag_s": self.lag_s,
                "mapping": self.mapping.name,
                "knobs": dict(self._knob_values),
                "healthy": healthy,
                "scenario_parameters": dict(self.setup.parameters),
                **scaling,
            }

    # ----------------------------------------------------------------------------------------
    # Serving

    @property
    def url(self) -> str:
        """Base URL of the running server (``http://host:port``)."""
        if self._server is None:
            raise RuntimeError("the twin is not serving: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port) and start the clock when ``speed`` > 0;
        return the base URL. Raises ``OSError`` when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError(f"the twin already serves on {self.url}")
        self._server = _TwinServer((host, port), self)
        self._stop.clear()
        self._spawn(self._server.serve_forever, "twin-http", poll_interval=0.05)
        if self.speed > 0:
            self._spawn(self._run_clock, "twin-clock")
        return self.url

    def _spawn(self, target: Any, name: str, **kwargs: Any) -> None:
        thread = threading.Thread(target=target, name=name, kwargs=kwargs, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop the clock and the server (idempotent)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._server = None

    def __enter__(self) -> EngineTwin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NotFoundError(LookupError):
    """No such endpoint or replica (404)."""


class _TwinServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], twin: EngineTwin) -> None:
        self.twin = twin
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Routes the twin's endpoints (see the module docstring)."""

    server: _TwinServer
    server_version = "budgetpilot-twin"

    def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
        self._respond(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._respond(self._post)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base signature)
        _log.debug("%s %s", self.address_string(), format % args)

    def _respond(self, route: Any) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            status, body, content_type = route(self.server.twin, path)
        except KnobError as err:
            status, body, content_type = _json(HTTPStatus.BAD_REQUEST, err, knob=err.knob)
        except ReplicasError as err:
            status, body, content_type = _json(HTTPStatus.BAD_REQUEST, err, pool=err.pool)
        except FaultError as err:
            status, body, content_type = _json(HTTPStatus.BAD_REQUEST, err)
        except FixedFleetError as err:
            status, body, content_type = _json(HTTPStatus.CONFLICT, err)
        except ReplicaDownError as err:
            status, body, content_type = _json(HTTPStatus.SERVICE_UNAVAILABLE, err)
        except (_NotFoundError, ReplicaStoppedError) as err:
            status, body, content_type = _json(HTTPStatus.NOT_FOUND, err)
        except Exception as err:  # a bug must not kill the server thread silently
            _log.exception("twin: %s %s failed", self.command, path)
            status, body, content_type = _json(HTTPStatus.INTERNAL_SERVER_ERROR, repr(err))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _get(self, twin: EngineTwin, path: str) -> tuple[int, bytes, str]:
        documents = {
            "/healthz": lambda: {"status": "ok"},
            "/engines": twin.engines,
            "/v1/knobs": twin.knobs,
            "/v1/replicas": twin.replicas_state,
            "/v1/state": twin.state,
            "/v1/faults": twin.faults,
            "/fleet": twin.fleet_capacity,
        }
        if path in documents:
            return _json(HTTPStatus.OK, documents[path]())
        if path == "/router/metrics":
            return _text(twin.router_metrics_text())
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "engines" and parts[3] == "metrics":
            names = [r.name for r in twin.replicas]
            if parts[2] not in names:
                raise _NotFoundError(f"no replica {parts[2]!r}; replicas: {', '.join(names)}")
            return _text(twin.metrics_text(parts[2]))
        raise _NotFoundError(f"no endpoint GET {path}")

    def _post(self, twin: EngineTwin, path: str) -> tuple[int, bytes, str]:
        routes = {
            "/v1/knobs": (twin.set_knobs, KnobError),
            "/v1/replicas": (twin.set_replicas, ReplicasError),
            "/v1/faults": (twin.inject_fault, FaultError),
        }
        if path not in routes:
            raise _NotFoundError(f"no endpoint POST {path}")
        apply, error = routes[path]
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise error(f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
        try:
            update = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise error(f"body is not valid JSON: {err}") from None
        return _json(HTTPStatus.OK, apply(update))


def _serving_knobs(contract: ActionContract) -> ActionContract:
    """``contract`` without its replica knobs (the same contract for a fixed fleet)."""
    knobs = tuple(k for k in contract.knobs if not k.name.endswith(REPLICAS_KNOB_SUFFIX))
    return contract if knobs == contract.knobs else ActionContract(knobs, contract.version)


def _running(stats: FleetStats) -> list[bool]:
    """Per replica slot, whether its engine runs: up, and serving or draining."""
    running = stats.healthy & np.isin(stats.lifecycle, _RUNNING)
    return running.tolist()


def _json(status: int, payload: Any, **extra: Any) -> tuple[int, bytes, str]:
    if isinstance(payload, BaseException | str):
        payload = {"error": str(payload), **extra}
    return int(status), json.dumps(payload).encode(), "application/json"


def _text(text: str) -> tuple[int, bytes, str]:
    return int(HTTPStatus.OK), text.encode(), CONTENT_TYPE_PLAIN_0_0_4
