"""The benchmark's run matrix: every controller on every scenario over evaluation seeds.

A *run* is one episode of one controller (a heuristic baseline with its tuned parameters, or an
exported policy) on one scenario with one evaluation seed. Runs are independent, so
:func:`execute` spreads them over Ray workers (one CPU and one thread each) or runs them in this
process; either way a run's result depends only on its :class:`RunSpec`, and results come back
in plan order, so the benchmark is deterministic.

Per-run metrics are computed from the environment's info stream by :class:`EpisodeRecorder`.
:class:`BenchEnv` adds to that stream what :class:`envs.fleet_env.LLMFleetEnv` does not expose
yet: per-step good/total counts per SLO, window burn rates, goodput and GPU-hours.

Evaluation seeds are ``0 .. n-1``, kept below :data:`agents.tuning.TUNING_SEED_OFFSET` so that no
baseline is scored on an episode it was tuned on.

With a fleet file (:attr:`BenchConfig.fleet`) every run governs that fleet instead of the
reference one; baselines take parameters tuned on it (``budgetpilot tune --fleet``), and a
policy runs only if its observation contract is the fleet's.

With a user's trace (:attr:`BenchConfig.trace`, :class:`envs.scenarios.TraceTraffic`) the
controllers are also judged on that trace replayed on the fleet, a scenario of its own group
(``user-trace``) that no default, training or held-out selection contains.

Elastic scenarios (:data:`envs.scenarios.ELASTIC_SCENARIOS`) run in the elastic environment
(:func:`envs.scenarios.env_kwargs_for`). They are benchmarked when named, not by default; a
baseline that scales pools runs on them only, and a policy only on scenarios of its own kind
(fixed or elastic, as its contract says).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import LATENCY_KINDS, ControlContext, Controller
from agents.baselines import BASELINES, make_controller, params_as_dict, params_from_dict
from agents.tuning import (
    TUNING_SEED_OFFSET,
    CandidateMap,
    CandidateRun,
    EpisodeScore,
    control_context,
    load_tuned_params,
)
from envs.fleet_env import LLMFleetEnv
from envs.paths import REPO_ROOT
from envs.scenarios import (
    ELASTIC_SCENARIOS,
    HELD_OUT_SCENARIOS,
    SCENARIOS,
    TRAINING_SCENARIOS,
    TraceTraffic,
    env_kwargs_for,
    get_scenario,
    governed_fleet,
    register_trace_scenario,
)
from eval.on_demand import TuningBudget, on_demand_params
from slo.sli import EventBatch, SLIClassifier
from slo.spec import ServiceSpec

#: Tuned baseline parameters: ``<baseline>/<scenario>.json`` as ``budgetpilot tune --out`` writes.
TUNED_DIR = REPO_ROOT / "agents" / "tuned"
#: Reference policies: ``NAME.onnx`` with its manifest ``NAME.json``.
ZOO_DIR = REPO_ROOT / "policies" / "zoo"
#: Every run uses one thread: runs are the unit of parallelism.
PINNED_THREADS = {
    name: "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}
#: The burn-rate window recorded for the timeline plots (the long window of the fast page).
TIMELINE_WINDOW = "1h"
#: The default benchmark's scenarios: every fixed-fleet one (elastic ones run when named).
DEFAULT_SCENARIOS = tuple(n for n, s in SCENARIOS.items() if not s.elastic)
#: The report's scenario groups (keys of its ``groups`` section) and their names.
GROUPS = {
    "in_distribution": "in-distribution",
    "held_out": "held-out",
    "elastic": "elastic",
    "user_trace": "user-trace",
}
#: Names that stand for a group's scenarios in ``--scenarios`` (a user's trace is named by
#: ``--trace``).
SCENARIO_GROUPS = {
    "in-distribution": TRAINING_SCENARIOS,
    "held-out": HELD_OUT_SCENARIOS,
    "elastic": ELASTIC_SCENARIOS,
}

#: Frontier sweeps run on the first this many evaluation seeds: each point of a sweep costs as
#: much as a controller of its own.
FRONTIER_SEEDS = 5
#: Variant of a policy run through the sidecar's default guardrails (``NAME@sidecar``).
SIDECAR = "sidecar"
#: Variant of a baseline tuned over the policy's training scenarios (``NAME@fair``); its
#: parameters are ``<baseline>/fair.json`` in the tuned directory.
FAIR = "fair"
#: Variant of a policy behind an out-of-distribution guard (``NAME+guard``,
#: :mod:`eval.ood_guard`), benchmarked only when named.
GUARD = "guard"


def variant_suffix(variant: str) -> str:
    """How a variant is written after a controller's name: ``+guard``, ``@sidecar``, ``@fair``."""
    return f"+{variant}" if variant == GUARD else f"@{variant}"


#: ``(runs done, runs in total)``, called after every run.
ProgressCallback = Callable[[int, int], None]
#: ``(what is tuned, episodes done, episodes in total)``, called after every tuning episode.
TuningProgress = Callable[[str, int, int], None]


def tuned_params_path(baseline: str, scenario: str, tuned_dir: Path = TUNED_DIR) -> Path:
    """Where the tuned parameters of ``baseline`` on ``scenario`` are kept."""
    return Path(tuned_dir) / baseline / f"{scenario}.json"


@cache
def scenario_unavailable_reason(name: str) -> str | None:
    """Why scenario ``name`` cannot run here (its reference data is missing), or ``None``."""
    scenario = get_scenario(name)
    if not scenario.needs_data:
        return None
    try:
        scenario.build(np.random.default_rng(0), 0.0)
    except FileNotFoundError as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------
# Measuring an episode


class LatencyJudge:
    """Counts served requests that meet every per-request latency SLO of a spec (goodput).

    Parameters
    ----------
    spec:
        The SLO spec. Its SLOs of a kind in :data:`agents.base.LATENCY_KINDS` that judge whole
        requests (TTFT, E2E, normalised latency, streaming pace, ITL per request) decide; an SLI
        counting tokens (ITL per token) promises a share of tokens, not a verdict per request,
        and is left out, as DistServe's goodput judges requests by TTFT and time per token.
    """

    def __init__(self, spec: ServiceSpec) -> None:
        classifiers = (
            SLIClassifier(slo, spec)
            for slo in spec.engine_slos
            if slo.sli.llm.kind in LATENCY_KINDS
        )
        self._classifiers = [c for c in classifiers if not c.weighted]

    def good_requests(self, events: np.ndarray) -> tuple[int, int]:
        """``(served within every per-request latency SLO, served)`` among ``events``."""
        batch = EventBatch(events)
        good = batch.served.copy()
        for classifier in self._classifiers:
            ok, counted = classifier.classify(batch)
            good &= ok | ~counted
        return int(good.sum()), int(batch.served.sum())


class BenchEnv(LLMFleetEnv):
    """:class:`LLMFleetEnv` whose info dict also carries what the benchmark measures.

    Extra info keys (per step; at reset they cover the warm-up): ``slo_good`` and ``slo_total``
    (SLO name -> events counted during the step), ``window_burn_rates`` (window -> SLO name ->
    burn rate), ``goodput_requests`` and ``served_requests`` (requests that ended during the step
    served within every per-request latency SLO, see :class:`LatencyJudge`, and served at all)
    and ``gpu_hours`` (the step's serving cost in GPU-hours). Arguments are those of
    :class:`LLMFleetEnv`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._judge = LatencyJudge(self.slo_spec)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._requests = np.zeros(2, dtype=np.int64)
        self._counts_seen = np.zeros((2, len(self.slo_names)))
        return super().reset(seed=seed, options=options)

    def _ingest(self, events: np.ndarray) -> None:
        super()._ingest(events)
        self._requests += self._judge.good_requests(events)

    def _gpu_hours(self, cost: float) -> float:
        # The serving cost is busy GPU time relative to the strong pool (pool 0) fully busy,
        # priced per GPU: times that pool's GPUs it is in GPU-hours at the strong GPU's price.
        strong = self.setup.config.pools[0]
        return cost * strong.replicas * strong.tp * self.control_interval_s / 3600.0

    def _info(self, step_burn: np.ndarray, components: dict[str, float], cost: float) -> dict:
        info = super()._info(step_burn, components, cost)
        counts = np.array(self.engine.cumulative_counts())
        good, total = counts - self._counts_seen
        self._counts_seen = counts
        names = self.slo_names
        burn = self.budget.burn_rates
        goodput, served = (int(x) for x in self._requests)
        self._requests[:] = 0
        return info | {
            "slo_good": dict(zip(names, good.tolist(), strict=True)),
            "slo_total": dict(zip(names, total.tolist(), strict=True)),
            "window_burn_rates": {
                w: dict(zip(names, burn[:, i].tolist(), strict=True))
                for i, w in enumerate(self.engine.windows)
            },
            "goodput_requests": goodput,
            "served_requests": served,
            "gpu_hours": self._gpu_hours(cost),
        }


class EpisodeRecorder:
    """Collects an episode's info stream and turns it into the run's metrics and trace.

    Parameters
    ----------
    env:
        The environment, after ``reset`` (for SLO names, objectives and periods).
    info:
        The info dict ``reset`` returned (the budgets at the start).
    """

    def __init__(self, env: BenchEnv, info: dict[str, Any]) -> None:
        self.slo_names = env.slo_names
        self.knob_names = env.action_contract.names
        self.objectives = env.engine.objectives.copy()
        self.periods = env.engine.periods.copy()
        self.interval_s = env.control_interval_s
        self._rows: list[dict[str, Any]] = []
        self._start = self._slo_vector(info["budget_remaining"])
        self._start_page = self._paging(info)

    def _slo_vector(self, values: dict[str, float]) -> np.ndarray:
        return np.array([values[name] for name in self.slo_names], dtype=np.float64)

    def _paging(self, info: dict[str, Any]) -> np.ndarray:
        return np.array([info["alerts"][name] == "page" for name in self.slo_names])

    def record(self, action: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        """Add one step: the action taken, the reward and the info returned."""
        self._rows.append(
            {
                "action": np.asarray(action, dtype=np.float64),
                "reward": float(reward),
                "time_s": float(info["time_s"]),
                "good": self._slo_vector(info["slo_good"]),
                "total": self._slo_vector(info["slo_total"]),
                "step_burn": self._slo_vector(info["step_burn_rates"]),
                "window_burn": self._slo_vector(info["window_burn_rates"][TIMELINE_WINDOW]),
                "remaining": self._slo_vector(info["budget_remaining"]),
                "page": self._paging(info),
                "knobs": np.array([info["knobs"][k] for k in self.knob_names]),
                "goodput": info["goodput_requests"],
                "served": info["served_requests"],
                "gpu_hours": float(info["gpu_hours"]),
                **self._replicas(info),
            }
        )

    @staticmethod
    def _replicas(info: dict[str, Any]) -> dict[str, Any]:
        """Serving and desired replicas per pool (elastic environments only)."""
        if "replicas" not in info:
            return {}
        pools = info["replicas"].values()
        return {
            "pool_names": list(info["replicas"]),
            "replicas_serving": [counts["serving"] for counts in pools],
            "replicas_desired": [counts["desired"] for counts in pools],
        }

    def _by_slo(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.slo_names, values.tolist(), strict=True))

    def _by_knob(self, values: np.ndarray) -> dict[str, float]:
        return dict(zip(self.knob_names, values.tolist(), strict=True))

    def _column(self, key: str) -> np.ndarray:
        return np.array([row[key] for row in self._rows])

    def _episode_burn(self, good: np.ndarray, total: np.ndarray) -> np.ndarray:
        """Burn rate over the whole episode per SLO (0 for an SLO that counted nothing)."""
        bad = total - good
        ratio = np.divide(bad, total, out=np.zeros_like(bad), where=total > 0)
        return ratio / (1.0 - self.objectives)

    def metrics(self) -> dict[str, Any]:
        """The run's metrics (definitions in ``eval/report.py``'s method section)."""
        if not self._rows:
            raise ValueError("no step recorded: the episode is empty")
        good, total = self._column("good").sum(axis=0), self._column("total").sum(axis=0)
        duration_s = len(self._rows) * self.interval_s
        spent = self._episode_burn(good, total) * duration_s / self.periods
        remaining = np.vstack([self._start, self._column("remaining")])
        page = np.vstack([self._start_page, self._column("page")])
        actions = self._column("action")
        attainment = np.divide(good, total, out=np.full_like(good, np.nan), where=total > 0)
        return {
            "budget_spent": self._by_slo(spent),
            "budget_spent_total": float(spent.sum()),
            "budget_remaining_drop": self._by_slo(remaining[0] - remaining[-1]),
            "budget_remaining_end": self._by_slo(remaining[-1]),
            "exhaustions": int(np.sum((remaining[1:] <= 0.0) & (remaining[:-1] > 0.0))),
            "page_alerts": int(np.sum(page[1:] & ~page[:-1])),
            "page_alert_steps": int(page[1:].sum()),
            "attainment": {
                k: (None if np.isnan(v) else v) for k, v in self._by_slo(attainment).items()
            },
            "goodput_rps": float(self._column("goodput").sum() / duration_s),
            "served_rps": float(self._column("served").sum() / duration_s),
            "cost_gpu_hours": float(self._column("gpu_hours").sum()),
            "action_smoothness": float(np.abs(np.diff(actions, axis=0)).mean())
            if len(actions) > 1
            else 0.0,
            # Where the controller held each knob: the action in [-1, 1] and the knob's value.
            "action_mean": self._by_knob(actions.mean(axis=0)),
            "knob_mean": self._by_knob(self._column("knobs").mean(axis=0)),
            "episode_return": float(self._column("reward").sum()),
            "steps": len(self._rows),
        }

    def trace(self) -> dict[str, Any]:
        """Per-step series for the timeline plots (plain lists, JSON-ready)."""
        good, total = np.cumsum(self._column("good"), 0), np.cumsum(self._column("total"), 0)
        elapsed_s = self.interval_s * np.arange(1, len(self._rows) + 1)[:, np.newaxis]
        spent = self._episode_burn(good, total) * elapsed_s / self.periods
        start_s = self._rows[0]["time_s"] - self.interval_s
        return {
            "slo_names": list(self.slo_names),
            "knob_names": list(self.knob_names),
            "hours": ((self._column("time_s") - start_s) / 3600.0).tolist(),
            "step_burn_rate": self._column("step_burn").tolist(),
            "window_burn_rate": self._column("window_burn").tolist(),
            "budget_remaining": self._column("remaining").tolist(),
            "budget_spent_total": spent.sum(axis=1).tolist(),
            "page": self._column("page").tolist(),
            "knobs": self._column("knobs").tolist(),
            "gpu_hours": np.cumsum(self._column("gpu_hours")).tolist(),
            **self._replica_trace(),
        }

    def _replica_trace(self) -> dict[str, Any]:
        if "pool_names" not in self._rows[0]:
            return {}
        return {
            "pool_names": self._rows[0]["pool_names"],
            "replicas_serving": self._column("replicas_serving").tolist(),
            "replicas_desired": self._column("replicas_desired").tolist(),
        }


# ----------------------------------------------------------------------------------------------
# Controllers and runs


@dataclass(frozen=True)
class ControllerSpec:
    """A controller to benchmark: a baseline by name or an exported policy by path.

    Parameters
    ----------
    name:
        Name in tables and plots (the baseline's name, or the policy file's stem).
    policy_path:
        The ``.onnx`` file of an exported policy; ``None`` for a baseline.
    trained_on:
        The scenarios a policy was trained on (from its manifest), for the report.
    elastic:
        Whether the controller needs an elastic environment (it scales pools, or its policy's
        contract is elastic).
    contract:
        A policy's observation contract digest (from its manifest).
    variant:
        :data:`SIDECAR` for a policy run through the sidecar's default guardrails
        (``NAME@sidecar``), :data:`FAIR` for a baseline with the parameters tuned over the
        policy's training scenarios (``NAME@fair``), :data:`GUARD` for a policy behind an
        out-of-distribution guard (``NAME+guard``), ``None`` otherwise.
    contract_version:
        The observation contract the controller's environment builds (a policy's: 2 or 3;
        baselines read either).
    """

    name: str
    policy_path: str | None = None
    trained_on: tuple[str, ...] = ()
    elastic: bool = False
    contract: str | None = None
    variant: str | None = None
    contract_version: int = 2

    @property
    def is_policy(self) -> bool:
        return self.policy_path is not None

    @property
    def base_name(self) -> str:
        """The baseline's or policy's own name, without the variant."""
        return self.name.removesuffix(variant_suffix(self.variant)) if self.variant else self.name

    def unfit_reason(self, scenario: str, fleet: str | None = None) -> str | None:
        """Why this controller cannot govern ``scenario`` (on the fleet file ``fleet``), or
        ``None`` when it can."""
        elastic_scenario = get_scenario(scenario).elastic
        if self.elastic and not elastic_scenario:
            return f"{self.name} cannot govern {scenario}: it needs an elastic scenario"
        if self.is_policy and elastic_scenario and not self.elastic:
            return f"{self.name} cannot govern {scenario}: its policy is for fixed fleets"
        if self.variant == GUARD and (self.elastic or fleet is not None):
            return (
                f"{self.name} cannot govern {scenario}"
                + (f" on {fleet}" if fleet else "")
                + ": its fallback is tuned for the fixed reference fleet"
            )
        if self.variant == FAIR and (elastic_scenario or fleet is not None):
            return (
                f"{self.name} cannot govern {scenario}"
                + (f" on {fleet}" if fleet else "")
                + ": its parameters were tuned over the fixed reference fleet's training scenarios"
            )
        if (
            self.is_policy
            and fleet is not None
            and self.contract != fleet_contract(scenario, fleet, self.contract_version)
        ):
            return (
                f"{self.name} cannot govern {scenario} on {fleet}: its observation contract "
                "(pools, capacity, SLOs) is another fleet's"
            )
        outside = () if not self.is_policy else outside_envelope(self.policy_path, fleet)
        if outside:
            return (
                f"{self.name} cannot govern {scenario}"
                + (f" on {fleet}" if fleet else "")
                + f": the fleet is outside its envelope: {'; '.join(outside)}"
            )
        return None

    def build(self, context: ControlContext, params: dict | None) -> Controller:
        """A fresh controller for the environment of ``context`` (``params``: tuned baseline
        parameters, ``None`` for the defaults)."""
        if self.policy_path is None:
            return make_controller(self.base_name, context, params)
        from eval.policy_controller import OnnxController, SidecarGuardedController

        policy = OnnxController(context, self.policy_path)
        if self.variant == GUARD:
            from eval.ood_guard import guarded

            return guarded(policy)
        return SidecarGuardedController(policy) if self.variant == SIDECAR else policy


@cache
def outside_envelope(policy_path: str, fleet: str | None) -> tuple[str, ...]:
    """How the fleet file ``fleet`` (``None``: the reference fleet) lies outside the envelope of
    the policy at ``policy_path`` (empty: inside), as the sidecar judges a live fleet."""
    from policies.manifest import FleetFacts
    from policies.runtime import read_manifest

    governed = governed_fleet(fleet)
    facts = FleetFacts(
        replicas={role: high for role, (_, high) in governed.role_replicas().items()},
        models=frozenset(governed.model_names),
        gpus=frozenset(governed.gpu_names),
    )
    return tuple(read_manifest(policy_path).envelope.differences(facts))


@cache
def fleet_contract(scenario: str, fleet: str | None, version: int = 2) -> str:
    """The observation contract digest (of ``version``) of ``scenario``'s environment on the
    fleet file ``fleet`` (``None``: the reference fleet)."""
    env = LLMFleetEnv(scenario, fleet=fleet, contract=version, **env_kwargs_for(scenario))
    return env.observation_contract.digest


def resolve_controllers(
    names: Sequence[str] | None = None,
    zoo_dir: Path = ZOO_DIR,
    scenarios: Sequence[str] | None = None,
    fleet: str | None = None,
) -> tuple[ControllerSpec, ...]:
    """Controllers by name: a baseline, a policy of the zoo (file stem) or a path to an ``.onnx``
    file, each optionally with its variant (``ppo-standard@sidecar``, ``pid@fair``). ``None``:
    every policy of the zoo with its ``@sidecar`` variant, every baseline and every tunable
    baseline's ``@fair`` variant that can govern all of ``scenarios`` (``None``: the fixed-fleet
    scenarios of the default benchmark) on ``fleet`` (a fleet file; ``None``: the reference
    fleet). A policy's manifest is read now, so a missing or corrupt policy fails before any
    run."""
    zoo = {p.stem: p for p in sorted(Path(zoo_dir).glob("*.onnx"))}
    if names is None:
        # The fair tuning covers the fixed-fleet baselines with parameters.
        fair = [
            f"{name}@{FAIR}"
            for name, cls in BASELINES.items()
            if name != "vllm-defaults" and not cls.needs_elastic
        ]
        everything = [n for p in zoo for n in (p, f"{p}@{SIDECAR}")] + [*BASELINES, *fair]
        fitting = [
            spec
            for spec in resolve_controllers(everything, zoo_dir)
            if all(spec.unfit_reason(s, fleet) is None for s in scenarios or DEFAULT_SCENARIOS)
        ]
        return tuple(fitting)
    specs = [_controller_spec(name, zoo, zoo_dir) for name in names]
    duplicates = {s.name for s in specs if [t.name for t in specs].count(s.name) > 1}
    if duplicates:
        raise ValueError(f"controller names must be unique, repeated: {sorted(duplicates)}")
    return tuple(specs)


def _controller_spec(name: str, zoo: dict[str, Path], zoo_dir: Path) -> ControllerSpec:
    """One controller of :func:`resolve_controllers` by name (variant included)."""
    from policies.runtime import read_manifest

    base, _, variant = name.rpartition("@") if "@" in name else (name, "", "")
    if not variant and name.endswith(variant_suffix(GUARD)):
        base, variant = name.removesuffix(variant_suffix(GUARD)), GUARD
    if base in BASELINES and variant in ("", FAIR):
        if variant == FAIR and base == "vllm-defaults":
            raise ValueError("vllm-defaults has no parameters: it has no @fair variant")
        return ControllerSpec(name, elastic=BASELINES[base].needs_elastic, variant=variant or None)
    path = zoo.get(base) or (Path(base) if base.endswith(".onnx") else None)
    if path is None or variant not in ("", SIDECAR, GUARD):
        known = ", ".join([*BASELINES, *zoo]) or "none"
        raise ValueError(
            f"unknown controller {name!r}: give a baseline (optionally NAME@{FAIR}), a policy of "
            f"{zoo_dir} or a path to an .onnx file (optionally NAME@{SIDECAR} or NAME+{GUARD}); "
            f"known: {known}"
        )
    manifest = read_manifest(path)  # PolicyFileError names what is wrong
    contract = manifest.observation_contract
    return ControllerSpec(
        path.stem + (variant_suffix(variant) if variant else ""),
        str(path),
        manifest.provenance.scenarios,
        contract.elastic,
        contract.digest,
        variant or None,
        contract_version=3 if contract.by_role else 2,
    )


@dataclass(frozen=True)
class RunSpec:
    """One episode to run: everything its result depends on."""

    controller: ControllerSpec
    scenario: str
    seed: int
    params: dict | None = None
    episode_hours: float | None = None
    warmup_s: float = 600.0
    record_trace: bool = False
    fleet: str | None = None
    label: str | None = None  # results' controller name, when not the controller's (a sweep point)
    trace: TraceTraffic | None = None

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """Arguments of the run's :class:`BenchEnv` besides the scenario."""
        return {
            "episode_hours": self.episode_hours,
            "warmup_s": self.warmup_s,
            **env_kwargs_for(self.scenario),
            **({"fleet": self.fleet} if self.fleet is not None else {}),
            **({"contract": 3} if self.controller.contract_version == 3 else {}),
        }


@dataclass(frozen=True)
class RunResult:
    """What one run measured (``trace`` only when the run recorded one)."""

    controller: str
    scenario: str
    seed: int
    metrics: dict[str, Any]
    trace: dict[str, Any] | None = None


def run_episode(run: RunSpec) -> RunResult:
    """Run one episode and measure it (the unit of work of :func:`execute`)."""
    if run.trace is not None:  # a Ray worker knows the user's trace from its run only
        register_trace_scenario(run.trace)
    env = BenchEnv(run.scenario, **run.env_kwargs)
    controller = run.controller.build(control_context(env), run.params)
    controller.reset()
    obs, info = env.reset(seed=run.seed)
    recorder = EpisodeRecorder(env, info)
    truncated = False
    while not truncated:
        # The environment clips actions when decoding them; smoothness is measured on what acts.
        action = np.clip(controller.act(obs), -1.0, 1.0)
        obs, reward, _, truncated, info = env.step(action)
        recorder.record(action, reward, info)
    return RunResult(
        controller=run.label or run.controller.name,
        scenario=run.scenario,
        seed=run.seed,
        metrics=recorder.metrics(),
        trace=recorder.trace() if run.record_trace else None,
    )


@contextmanager
def ray_session(
    use_ray: bool = True, address: str | None = None, num_cpus: int | None = None
) -> Iterator[None]:
    """Ray for the work inside (unless ``use_ray`` is false): the running one, or one started
    here (``address``: a cluster to connect to; ``num_cpus``: CPUs of a local one, default all)
    and shut down at the end."""
    if not use_ray:
        yield
        return
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,  # the progress bar is the output
            runtime_env={"env_vars": PINNED_THREADS},
        )
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def parallel_map(
    function: Callable[[Any], Any],
    items: Sequence[Any],
    progress: ProgressCallback | None = None,
) -> list[Any]:
    """``function`` of every item on Ray tasks of one CPU each (Ray must be running:
    :func:`ray_session`), results in the order of ``items``; ``progress(done, total)`` as each
    ends."""
    import ray

    tick = progress or (lambda done, total: None)
    remote = ray.remote(num_cpus=1)(function)
    pending = {remote.remote(item): i for i, item in enumerate(items)}
    results: list[Any] = [None] * len(items)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
        tick(len(items) - len(pending), len(items))
    return results


def execute(
    runs: Sequence[RunSpec],
    use_ray: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[RunResult]:
    """Run every run and return the results in the order of ``runs``.

    Parameters
    ----------
    runs:
        The runs.
    use_ray:
        Spread the runs over Ray tasks of one CPU each (else: one after the other here).
    address:
        A Ray cluster to connect to; ``None`` starts a local Ray (unless one is running).
    num_cpus:
        CPUs of the local Ray (default: all).
    progress:
        Called with (runs done, runs in total) after every run.
    """
    tick = progress or (lambda done, total: None)
    tick(0, len(runs))  # the total, before Ray starts and the first run ends
    if not use_ray:
        results = []
        for run in runs:
            results.append(run_episode(run))
            tick(len(results), len(runs))
        return results
    with ray_session(use_ray, address, num_cpus):
        return parallel_map(run_episode, runs, tick)


def _score_candidate(job: tuple[TraceTraffic | None, CandidateRun]) -> EpisodeScore:
    """A tuning candidate's score in a Ray worker (which knows the user's trace from its job)."""
    trace, run = job
    if trace is not None:
        register_trace_scenario(trace)
    return run.score()


def candidates_on_ray(trace: TraceTraffic | None = None) -> CandidateMap:
    """Tuning's :data:`agents.tuning.CandidateMap` on Ray tasks of one CPU each (Ray must be
    running: :func:`ray_session`), for a scenario of the suite or ``trace``'s replay."""
    return lambda runs, progress: parallel_map(
        _score_candidate, [(trace, run) for run in runs], progress
    )


# ----------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark.

    Parameters
    ----------
    controllers:
        The controllers (:func:`resolve_controllers`).
    scenarios:
        Scenario names (``None``: every scenario whose data is present).
    seeds:
        Evaluation seeds, all below :data:`agents.tuning.TUNING_SEED_OFFSET`.
    episode_hours, warmup_s:
        Episode length (``None``: each scenario's own, 2 h unless it says otherwise) and warm-up
        of every run.
    tuned_dir:
        Where tuned baseline parameters are read from (:func:`tuned_params_path`); ``None``:
        nowhere, baselines run with their defaults (and the report says so).
    bootstrap_reps, bootstrap_seed:
        Replicates and seed of every bootstrap of the report.
    fleet:
        A fleet file every run governs instead of the reference fleet.
    frontier_seeds:
        When an elastic policy is benchmarked, every autoscaler's main target is also swept
        (:func:`frontier_sweeps`) on this many of the first evaluation seeds (0: no sweeps).
    grid_fleets:
        Further fleet files of the held-out grid (:mod:`eval.headline`): their cells are not run
        here, the report says why (a policy of another fleet's contract) or how to run them.
    trace:
        A user's trace to judge the controllers on too (:func:`user_trace_scenario`); its
        scenario runs when :attr:`scenarios` names it.
    tuning:
        Tune a baseline whose parameters :attr:`tuned_dir` lacks (or all of them, when it is
        ``None``) with this budget, or read them from the cache of earlier tunings
        (:func:`eval.on_demand.on_demand_params`); ``None``: run it with its defaults.
    """

    controllers: tuple[ControllerSpec, ...]
    scenarios: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = tuple(range(10))
    episode_hours: float | None = None
    warmup_s: float = 600.0
    tuned_dir: Path | None = TUNED_DIR
    bootstrap_reps: int = 10_000
    bootstrap_seed: int = 0
    fleet: str | None = None
    frontier_seeds: int = FRONTIER_SEEDS
    grid_fleets: tuple[str, ...] = ()
    trace: TraceTraffic | None = None
    tuning: TuningBudget | None = None

    def __post_init__(self) -> None:
        if self.frontier_seeds < 0:
            raise ValueError(f"frontier_seeds must be >= 0, got {self.frontier_seeds}")
        if not self.controllers:
            raise ValueError("the benchmark needs at least one controller")
        if not self.seeds or min(self.seeds) < 0 or max(self.seeds) >= TUNING_SEED_OFFSET:
            raise ValueError(
                f"evaluation seeds must be in [0, {TUNING_SEED_OFFSET}) (tuning uses "
                f"{TUNING_SEED_OFFSET} and up), got {list(self.seeds)}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"evaluation seeds must be distinct, got {list(self.seeds)}")
        if (self.episode_hours is not None and self.episode_hours <= 0) or self.warmup_s < 0:
            raise ValueError("episode_hours must be > 0 and warmup_s >= 0")


@dataclass
class BenchResult:
    """Everything a benchmark produced, for :mod:`eval.report`.

    Parameters
    ----------
    config:
        What was run (``scenarios`` resolved).
    runs:
        Every run's result, in plan order.
    tuned_params:
        Baseline -> scenario -> the parameters used (``None``: the defaults).
    warnings:
        What the report must show (missing tuned parameters, skipped scenarios).
    wall_time_s:
        Wall-clock time of the runs.
    frontiers:
        The autoscalers' frontier sweeps (:func:`frontier_sweeps`).
    cells_not_run:
        Cells of the held-out grid on :attr:`BenchConfig.grid_fleets`, each with the reason it
        was not run (:func:`eval.headline.cells_not_run`).
    """

    config: BenchConfig
    runs: list[RunResult]
    tuned_params: dict[str, dict[str, dict | None]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    frontiers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    cells_not_run: list[dict[str, str]] = field(default_factory=list)


def user_trace_scenario(traffic: TraceTraffic, fleet: str | None = None) -> str:
    """Check a user's trace (every row parsed: ValueError naming the file, row and column),
    measure the capacity of ``fleet`` (a fleet file; ``None``: the reference fleet) for it, so
    that runs find it in the cache, and register the scenario replaying it; return its name."""
    if not Path(traffic.path).is_file():
        raise ValueError(f"trace file not found: {traffic.path}")
    if traffic.load is not None and not traffic.load > 0:
        raise ValueError(
            f"load must be > 0 (a multiple of the fleet's capacity), got {traffic.load}"
        )
    traffic.replay()
    load, capacity = traffic.load_on(governed_fleet(fleet))
    how = "the load it carries" if traffic.load is None else "the load asked for"
    description = (
        f"Replay of the user's trace {traffic.path} at load {load:.2f} ({how}) of the fleet's "
        f"capacity for its lengths, {capacity:.1f} req/s; each seed starts at its own point of it."
    )
    return register_trace_scenario(traffic, description)


def expand_scenarios(names: Sequence[str]) -> list[str]:
    """Scenario names with :data:`SCENARIO_GROUPS` names replaced by their scenarios."""
    return [s for name in names for s in SCENARIO_GROUPS.get(name, (name,))]


def select_scenarios(names: Sequence[str] | None) -> tuple[tuple[str, ...], list[str]]:
    """The scenarios to run and warnings about the ones skipped: ``None`` takes every fixed-fleet
    scenario whose data is present (elastic ones run when named); a named scenario without its
    data is an error."""
    warnings = []
    if names is None:
        chosen = []
        for name in DEFAULT_SCENARIOS:
            reason = scenario_unavailable_reason(name)
            if reason is None:
                chosen.append(name)
            else:
                warnings.append(f"scenario {name} skipped: {reason}")
        return tuple(chosen), warnings
    for name in names:
        reason = scenario_unavailable_reason(name)
        if reason is not None:
            raise ValueError(f"scenario {name} cannot run: {reason}")
    return tuple(names), warnings


def tuned_params(
    baseline: str, scenario: str, tuned_dir: Path | None, fleet: str | None = None
) -> tuple[dict | None, str | None]:
    """The tuned parameters of a baseline on a scenario (on the fleet file ``fleet``: tuned on
    that fleet, else ValueError), or ``(None, warning)`` when missing."""
    if tuned_dir is None:
        how = f"budgetpilot tune {baseline} --scenario {scenario} --fleet {fleet} --out DIR/"
        return None, (
            f"{baseline} on {scenario}: not tuned on this fleet, default parameters (tune: "
            f"{how}{baseline}/{scenario}.json, then bench --tuned-dir DIR)"
        )
    path = tuned_params_path(baseline, scenario, tuned_dir)
    if not path.is_file():
        return None, f"{baseline} on {scenario}: no tuned parameters ({path}), default parameters"
    contract = None if fleet is None else fleet_contract(scenario, fleet)
    name, tuned_on, params = load_tuned_params(path, contract)
    if (name, tuned_on) != (baseline, scenario):
        raise ValueError(f"{path} holds {name} tuned on {tuned_on}, not {baseline} on {scenario}")
    return params, None


def frontier_sweeps(
    config: BenchConfig, scenarios: Sequence[str], params_used: dict
) -> dict[str, dict[str, dict[str, Any]]]:
    """The points tracing each autoscaler's cost-against-budget frontier, when an elastic
    policy is benchmarked (``{}`` otherwise, or with ``frontier_seeds`` 0).

    Per scenario and autoscaler: its main target (``parameter``, see
    :meth:`agents.autoscalers.ScalingController.frontier_sweep`), the ``seeds`` the sweep runs
    on and the ``points`` by increasing value, each with the ``label`` its runs are recorded
    under (the autoscaler's own name for its tuned setting, ``NAME@PARAMETER=VALUE`` for the
    others) and its ``params``.
    """
    if not config.frontier_seeds or not any(c.is_policy and c.elastic for c in config.controllers):
        return {}
    sweeps: dict[str, dict[str, dict[str, Any]]] = {}
    for controller in config.controllers:
        if controller.is_policy or not controller.elastic:
            continue
        cls, name = BASELINES[controller.name], controller.name
        for scenario in scenarios:
            tuned = params_used[name][scenario]
            params = params_from_dict(name, tuned or {})
            own = getattr(params, cls.frontier_parameter)
            points = [{"label": name, "value": own, "params": tuned}]
            for point in cls.frontier_sweep(params):
                value = getattr(point, cls.frontier_parameter)
                label = f"{name}@{cls.frontier_parameter}={value:g}"
                points.append({"label": label, "value": value, "params": params_as_dict(point)})
            sweeps.setdefault(scenario, {})[name] = {
                "parameter": cls.frontier_parameter,
                "seeds": list(config.seeds[: config.frontier_seeds]),
                "points": sorted(points, key=lambda point: point["value"]),
            }
    return sweeps


def plan_runs(
    config: BenchConfig,
    tuning_progress: TuningProgress | None = None,
    map_candidates: CandidateMap | None = None,
) -> tuple[list[RunSpec], dict, list[str]]:
    """Every run of the benchmark (controller x scenario x seed; the first seed of each
    scenario records traces), the baselines' parameters (tuned now if :attr:`BenchConfig.tuning`
    says so, with ``tuning_progress``, their candidates scored by ``map_candidates``, default
    here one after the other) and warnings."""
    if config.trace is not None:
        user_trace_scenario(config.trace, config.fleet)
    scenarios, warnings = select_scenarios(config.scenarios)
    unfit = [
        r for c in config.controllers for s in scenarios if (r := c.unfit_reason(s, config.fleet))
    ]
    if unfit:
        raise ValueError(
            "every controller must govern every scenario of a benchmark: " + "; ".join(unfit)
        )
    runs, params_used = [], {}
    for controller in config.controllers:
        tunable = not controller.is_policy and controller.name != "vllm-defaults"
        for scenario in scenarios:
            params = None
            if tunable:
                # A fair baseline has one parameter set for every scenario.
                tuned_on = FAIR if controller.variant == FAIR else scenario
                params, warning = tuned_params(
                    controller.base_name, tuned_on, config.tuned_dir, config.fleet
                )
                # A fair parameter set pools the training scenarios: never tuned on one here.
                if params is None and config.tuning is not None and controller.variant != FAIR:
                    params, warning = _tune_now(
                        controller.base_name, scenario, config, tuning_progress, map_candidates
                    )
                params_used.setdefault(controller.name, {})[scenario] = params
                warnings += [warning] if warning else []
            runs += [
                RunSpec(
                    controller,
                    scenario,
                    seed,
                    params,
                    config.episode_hours,
                    config.warmup_s,
                    record_trace=seed == config.seeds[0],
                    fleet=config.fleet,
                    trace=config.trace,
                )
                for seed in config.seeds
            ]
    by_name = {c.name: c for c in config.controllers}
    for scenario, by_autoscaler in frontier_sweeps(config, scenarios, params_used).items():
        for name, sweep in by_autoscaler.items():
            runs += [
                RunSpec(
                    by_name[name],
                    scenario,
                    seed,
                    point["params"],
                    config.episode_hours,
                    config.warmup_s,
                    label=point["label"],
                    fleet=config.fleet,
                    trace=config.trace,
                )
                for point in sweep["points"]
                if point["label"] != name  # the tuned setting's runs are the controller's
                for seed in sweep["seeds"]
            ]
    return runs, params_used, warnings


def _tune_now(
    baseline: str,
    scenario: str,
    config: BenchConfig,
    progress: TuningProgress | None,
    map_candidates: CandidateMap | None,
) -> tuple[dict, str]:
    """A baseline's parameters tuned on demand (:func:`eval.on_demand.on_demand_params`) on
    ``config``'s fleet with its tuning budget."""
    label = f"tuning {baseline} on {scenario}"
    tick = None if progress is None else (lambda done, total: progress(label, done, total))
    return on_demand_params(baseline, scenario, config.fleet, config.tuning, tick, map_candidates)


def run_bench(
    config: BenchConfig,
    use_ray: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: ProgressCallback | None = None,
    tuning_progress: TuningProgress | None = None,
) -> BenchResult:
    """Plan and run the benchmark (arguments after ``config`` as for :func:`execute`;
    ``tuning_progress`` as for :func:`plan_runs`). With Ray, baselines tuned on demand score
    their candidates in parallel on the same Ray as the runs."""
    from eval.headline import cells_not_run

    with ray_session(use_ray, address, num_cpus):
        map_candidates = candidates_on_ray(config.trace) if use_ray else None
        runs, params_used, warnings = plan_runs(config, tuning_progress, map_candidates)
        scenarios = tuple(dict.fromkeys(run.scenario for run in runs))
        config = replace(config, scenarios=scenarios)
        not_run = cells_not_run(config)  # before the runs: a bad fleet file fails early
        started = time.perf_counter()
        results = execute(runs, use_ray, address, num_cpus, progress)
    return BenchResult(
        config=config,
        runs=results,
        tuned_params=params_used,
        warnings=warnings,
        wall_time_s=time.perf_counter() - started,
        frontiers=frontier_sweeps(config, scenarios, params_used),
        cells_not_run=not_run,
    )
