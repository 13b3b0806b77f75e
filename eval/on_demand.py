"""Baselines tuned on demand for the benchmark, cached by fleet, scenario and tuning budget.

A benchmark on a fleet file (or a user's trace) needs its baselines tuned on that fleet and
traffic: parameters tuned elsewhere would judge them unfairly, and untuned ones would be a
strawman. :func:`on_demand_params` returns the parameters of a baseline on a scenario, tuning
them with :func:`agents.tuning.tune` (on training seeds, 1000 and up) the first time and reading
them afterwards from ``<cache>/tuned/<key>/<baseline>/<scenario>.json``, where the cache is
:func:`envs.sim.capacity.cache_dir` and the key hashes the environment's observation contract
(the fleet's pools, capacity and SLOs), the trace replayed (content, columns, time scale, load)
and the :class:`TuningBudget`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.tuning import (
    CandidateMap,
    ProgressCallback,
    candidate_params,
    load_tuned_params,
    tune,
    tuning_seeds,
)
from envs.scenarios import get_scenario
from envs.sim.capacity import cache_dir, write_json_atomically


@dataclass(frozen=True)
class TuningBudget:
    """How hard on-demand tuning searches: every candidate of the grid, or ``candidates`` of
    them evenly spaced over it (a quick tuning, reported as quick-tuned), on ``seeds`` training
    episodes of ``episode_hours`` (``None``: the scenario's own) after ``warmup_s``."""

    seeds: int = 2
    episode_hours: float | None = 1.0
    warmup_s: float = 600.0
    candidates: int | None = None

    @property
    def verb(self) -> str:
        """How the report names what this budget does: tuned, or quick-tuned."""
        return "tuned" if self.candidates is None else "quick-tuned"

    def describe(self) -> str:
        hours = (
            "the scenario's length" if self.episode_hours is None else f"{self.episode_hours:g} h"
        )
        return f"{self.seeds} seed(s) of {hours}"


def _traffic_digest(scenario: str) -> dict | None:
    """What a user's trace replay depends on (``None`` for a scenario of the suite)."""
    builder = get_scenario(scenario).builder
    if not get_scenario(scenario).user_trace:
        return None
    content = hashlib.sha256(Path(builder.path).read_bytes()).hexdigest()
    return {"sha256": content} | {k: v for k, v in asdict(builder).items() if k != "path"}


def tuning_cache_path(baseline: str, scenario: str, contract: str, budget: TuningBudget) -> Path:
    """Where the parameters of ``baseline`` tuned on ``scenario`` in an environment of
    observation contract ``contract`` with ``budget`` are cached."""
    content = {"contract": contract, "traffic": _traffic_digest(scenario), "budget": asdict(budget)}
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "tuned" / key / baseline / f"{scenario}.json"


def on_demand_params(
    baseline: str,
    scenario: str,
    fleet: str | None,
    budget: TuningBudget,
    progress: ProgressCallback | None = None,
    map_candidates: CandidateMap | None = None,
) -> tuple[dict, str]:
    """The parameters of ``baseline`` tuned on ``scenario`` on the fleet file ``fleet``
    (``None``: the reference fleet), from the cache or tuned now (``progress`` and
    ``map_candidates`` as for :func:`agents.tuning.tune`), and a note for the report saying
    which."""
    from eval.bench import fleet_contract

    contract = fleet_contract(scenario, fleet)
    path = tuning_cache_path(baseline, scenario, contract, budget)
    if path.is_file():
        _, _, params = load_tuned_params(path, contract)
        return params, (
            f"{baseline} on {scenario}: {budget.verb} on this fleet earlier, read from {path}"
        )
    result = tune(
        baseline,
        scenario,
        tuning_seeds(budget.seeds),
        episode_hours=budget.episode_hours,
        warmup_s=budget.warmup_s,
        progress=progress,
        fleet=fleet,
        spread=budget.candidates,
        map_candidates=map_candidates,
    )
    write_json_atomically(path, result.to_dict())
    grid = len(candidate_params(baseline))
    return result.best_params, (
        f"{baseline} on {scenario}: {budget.verb} now on this fleet ({len(result.candidates)} "
        f"of {grid} candidates x {budget.describe()}), cached in {path}"
    )
