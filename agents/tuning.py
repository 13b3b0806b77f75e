"""Honest per-scenario tuning of the heuristic baselines.

:func:`tune` grid-searches a baseline's ``param_grid()`` on one scenario and keeps the candidate
with the highest mean episode return. Tuning runs on *training* seeds (:data:`TUNING_SEEDS`,
1000 and up); evaluation must use other seeds (the benchmark's seeds start at 0), otherwise the
tuned baseline is scored on the very episodes it was fitted to. :func:`make_controller` rebuilds a
baseline from its name and the tuned parameters stored by ``budgetpilot tune --out``.

Elastic scenarios run in the elastic environment (:func:`envs.scenarios.env_kwargs_for`); the
baselines that scale pools apply to them only (:func:`applies_to`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.base import ControlContext, Controller
from agents.baselines import (
    VllmDefaults,
    baseline_class,
    make_controller,
    params_as_dict,
    params_from_dict,
)
from envs.fleet_env import LLMFleetEnv
from envs.scenarios import ELASTIC_SCENARIOS, env_kwargs_for, get_scenario
from slo.files import TextFileError, read_text

#: First training seed: tuning uses 1000, 1001, ...; evaluation seeds stay below 1000.
TUNING_SEED_OFFSET = 1000
TUNING_SEEDS: tuple[int, ...] = (1000, 1001, 1002)

#: ``(context) -> controller``: builds a fresh controller for the environment being scored.
ControllerFactory = Callable[[ControlContext], Controller]
#: ``(episodes done, episodes in total)``: called after every episode.
ProgressCallback = Callable[[int, int], None]


def tuning_seeds(n: int) -> tuple[int, ...]:
    """The first ``n`` training seeds (``1000, 1001, ...``)."""
    if n < 1:
        raise ValueError(f"the number of tuning seeds must be >= 1, got {n}")
    return tuple(range(TUNING_SEED_OFFSET, TUNING_SEED_OFFSET + n))


@dataclass(frozen=True)
class EpisodeScore:
    """Undiscounted episode returns of one controller, one per seed, and their mean."""

    returns: tuple[float, ...]

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))


@dataclass(frozen=True)
class TuningResult:
    """Outcome of :func:`tune`.

    Parameters
    ----------
    baseline, scenario:
        What was tuned, where.
    seeds, episode_hours, warmup_s:
        The episodes every candidate was scored on.
    candidates:
        Every candidate's parameters as a dict, in grid order, with its score.
    best_index:
        Index into ``candidates`` of the highest mean return (the first one on ties).
    fleet:
        The fleet file tuned on (``None``: the reference fleet).
    observation_contract:
        Digest of the environment's observation contract (its pools, capacity, SLOs and
        knobs): parameters tuned on one fleet are refused on another.
    """

    baseline: str
    scenario: str
    seeds: tuple[int, ...]
    episode_hours: float
    warmup_s: float
    candidates: tuple[tuple[dict, EpisodeScore], ...]
    best_index: int
    fleet: str | None = None
    observation_contract: str | None = None

    @property
    def best_params(self) -> dict:
        return dict(self.candidates[self.best_index][0])

    @property
    def best_score(self) -> EpisodeScore:
        return self.candidates[self.best_index][1]

    def to_dict(self) -> dict:
        """A JSON-ready dict (the format of ``budgetpilot tune --out``)."""
        return {
            "baseline": self.baseline,
            "scenario": self.scenario,
            "fleet": self.fleet,
            "observation_contract": self.observation_contract,
            "seeds": list(self.seeds),
            "episode_hours": self.episode_hours,
            "warmup_s": self.warmup_s,
            "best_params": self.best_params,
            "best_mean_return": self.best_score.mean_return,
            "best_returns": list(self.best_score.returns),
            "candidates": [
                {"params": params, "mean_return": s.mean_return, "returns": list(s.returns)}
                for params, s in self.candidates
            ],
        }


def applies_to(name: str, scenario: str) -> bool:
    """Whether baseline ``name`` can govern ``scenario``: a baseline that scales pools needs an
    elastic scenario; the others run everywhere."""
    return not baseline_class(name).needs_elastic or get_scenario(scenario).elastic


def scenario_env(
    scenario: str, episode_hours: float | None, warmup_s: float, fleet: str | None = None
) -> LLMFleetEnv:
    """The environment ``scenario`` is tuned and evaluated in (elastic for an elastic one)."""
    kwargs = env_kwargs_for(scenario) | ({"fleet": fleet} if fleet is not None else {})
    return LLMFleetEnv(scenario, episode_hours=episode_hours, warmup_s=warmup_s, **kwargs)


def control_context(env: LLMFleetEnv) -> ControlContext:
    """What a controller needs to know about ``env``."""
    return ControlContext(
        env.observation_contract, env.action_contract, env.slo_kinds, env.control_interval_s
    )


def candidate_params(
    name: str, max_candidates: int | None = None, spread: int | None = None
) -> list[dict]:
    """The baseline's grid as plain dicts (``[{}]`` for ``vllm-defaults``): whole, its first
    ``max_candidates`` (smoke runs, tests), or ``spread`` of them evenly spaced over the grid, the
    first and the last included (a quick tuning that still spans every parameter's range)."""
    cls = baseline_class(name)
    grid = [{}] if cls is VllmDefaults else [params_as_dict(p) for p in cls.param_grid()]
    if max_candidates is not None:
        grid = grid[: max(1, max_candidates)]
    if spread is not None and spread < len(grid):
        picks = np.linspace(0, len(grid) - 1, max(1, spread)).round().astype(int)
        grid = [grid[i] for i in dict.fromkeys(picks.tolist())]
    return grid


@dataclass(frozen=True)
class CandidateRun:
    """One candidate of a grid scored on the tuning episodes: the unit of work that
    :func:`tune` hands to a :data:`CandidateMap` (picklable, to run in another process)."""

    baseline: str
    scenario: str
    params: dict
    seeds: tuple[int, ...]
    episode_hours: float | None
    warmup_s: float
    fleet: str | None = None

    def score(
        self, env: LLMFleetEnv | None = None, after_episode: Callable[[], None] | None = None
    ) -> EpisodeScore:
        """The candidate's returns, in ``env`` (default: a new one of the scenario), calling
        ``after_episode`` after each episode."""
        if env is None:
            env = scenario_env(self.scenario, self.episode_hours, self.warmup_s, self.fleet)
        controller = make_controller(self.baseline, control_context(env), self.params)
        return _score(env, controller, self.seeds, after_episode)


#: ``(candidates, progress) -> scores``: scores every candidate (:meth:`CandidateRun.score`), in
#: order, calling ``progress(candidates done, in total)`` as each finishes; how :func:`tune` runs
#: its candidates elsewhere (e.g. in parallel on Ray: :func:`eval.bench.candidates_on_ray`).
CandidateMap = Callable[[Sequence[CandidateRun], Callable[[int, int], None]], list[EpisodeScore]]


def evaluate(
    controller_factory: ControllerFactory,
    scenario: str,
    seeds: Sequence[int],
    episode_hours: float | None = None,
    warmup_s: float = 600.0,
) -> EpisodeScore:
    """Score a controller: one episode of the scenario's environment (:func:`scenario_env`)
    per seed.

    Parameters
    ----------
    controller_factory:
        Builds the controller from the environment's :class:`ControlContext`.
    scenario:
        Scenario name (:data:`envs.scenarios.SCENARIOS`).
    seeds:
        One episode per seed (``env.reset(seed=...)``); the controller is reset between them.
    episode_hours, warmup_s:
        Passed to :class:`envs.fleet_env.LLMFleetEnv` (``None``: the scenario's own length).
    """
    env = scenario_env(scenario, episode_hours, warmup_s)
    return _score(env, controller_factory(control_context(env)), seeds)


def _score(
    env: LLMFleetEnv,
    controller: Controller,
    seeds: Sequence[int],
    after_episode: Callable[[], None] | None = None,
) -> EpisodeScore:
    returns = []
    for seed in seeds:
        controller.reset()
        obs, _ = env.reset(seed=int(seed))
        total, truncated = 0.0, False
        while not truncated:
            obs, reward, _, truncated, _ = env.step(controller.act(obs))
            total += reward
        returns.append(total)
        if after_episode is not None:
            after_episode()
    return EpisodeScore(tuple(returns))


def tune(
    baseline_name: str,
    scenario: str,
    seeds: Sequence[int] = TUNING_SEEDS,
    episode_hours: float | None = None,
    warmup_s: float = 600.0,
    max_candidates: int | None = None,
    progress: ProgressCallback | None = None,
    fleet: str | None = None,
    spread: int | None = None,
    map_candidates: CandidateMap | None = None,
) -> TuningResult:
    """Grid-search a baseline's ``param_grid()`` on one scenario.

    Parameters
    ----------
    baseline_name:
        A name of :data:`agents.baselines.BASELINES`; ``vllm-defaults`` has a single candidate.
    scenario:
        Scenario to tune on (an elastic one for a baseline that scales pools).
    seeds:
        Training seeds, the same episodes for every candidate. Keep them apart from the
        evaluation seeds (:func:`tuning_seeds` starts at 1000).
    episode_hours, warmup_s:
        Episode length (``None``: the scenario's own) and warm-up of
        :class:`envs.fleet_env.LLMFleetEnv`.
    max_candidates:
        Score only the first candidates of the grid (smoke runs, tests).
    progress:
        Called with (episodes done, episodes in total) after every episode (after every
        candidate's episodes with ``map_candidates``).
    fleet:
        A fleet file to tune on instead of the reference fleet.
    spread:
        Score only this many candidates, evenly spaced over the grid (a quick tuning).
    map_candidates:
        Scores the candidates elsewhere (in parallel); the result is the same as here, one after
        the other in one environment (``None``).
    """
    get_scenario(scenario)  # fail on a bad name before any work
    if not applies_to(baseline_name, scenario):
        raise ValueError(
            f"baseline {baseline_name!r} scales pools: tune it on an elastic scenario "
            f"({', '.join(ELASTIC_SCENARIOS)}), not {scenario!r}"
        )
    if not seeds:
        raise ValueError("tuning needs at least one seed")
    grid = candidate_params(baseline_name, max_candidates, spread)
    env = scenario_env(scenario, episode_hours, warmup_s, fleet)
    seeds = tuple(int(s) for s in seeds)
    runs = [
        CandidateRun(baseline_name, scenario, params, seeds, episode_hours, warmup_s, fleet)
        for params in grid
    ]
    total, done = len(grid) * len(seeds), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    if map_candidates is None:
        scores = [run.score(env, tick) for run in runs]
    else:
        report = progress or (lambda done, total: None)
        scores = map_candidates(runs, lambda n, _: report(n * len(seeds), total))
    scored = tuple(zip(grid, scores, strict=True))
    means = [score.mean_return for score in scores]
    return TuningResult(
        baseline=baseline_name,
        scenario=scenario,
        seeds=seeds,
        episode_hours=env.max_steps * env.control_interval_s / 3600.0,
        warmup_s=float(warmup_s),
        candidates=scored,
        best_index=int(np.argmax(means)),
        fleet=fleet,
        observation_contract=env.observation_contract.digest,
    )


def load_tuned_params(path: str | Path, contract: str | None = None) -> tuple[str, str, dict]:
    """``(baseline, scenario, best_params)`` from a file written by ``budgetpilot tune --out``;
    parameters the baseline does not have, or out of their documented ranges, are refused
    (``ValueError`` naming the file and the parameter).

    With ``contract`` (an observation contract's digest), the parameters must have been tuned in
    an environment of that contract, i.e. on the same fleet: ValueError names both otherwise.
    """
    try:
        data = json.loads(read_text(path))
        baseline, scenario, params = data["baseline"], data["scenario"], dict(data["best_params"])
    except (OSError, TextFileError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read tuning result {path}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"tuning result {path} lacks field {exc}") from None
    if baseline_class(baseline) is not VllmDefaults:
        try:
            params_from_dict(baseline, params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tuning result {path}: {exc}") from None
    tuned_for = data.get("observation_contract")
    if contract is not None and tuned_for != contract:
        raise ValueError(
            f"{path}: tuned on fleet {data.get('fleet') or 'reference'} (observation contract "
            f"{tuned_for}), not on this one ({contract}): tune it again with --fleet"
        )
    return baseline, scenario, params


def pool_tuning(results: Sequence[dict], tuned_on: str) -> dict:
    """One parameter set for several scenarios from their per-scenario tuning results.

    Every candidate is scored by its mean return over the scenarios (each already a mean over
    the same tuning seeds), i.e. its expected return when a scenario is drawn uniformly, as the
    policies' domain randomisation draws them; the best one is kept. This gives a baseline the
    information a policy trained on those scenarios had, and no more.

    Parameters
    ----------
    results:
        Results of :func:`tune` (their :meth:`TuningResult.to_dict`, the format of
        ``budgetpilot tune --out``), one per scenario, of one baseline over the same grid,
        seeds, episode length and warm-up.
    tuned_on:
        The name the pooled result is kept under (its ``scenario`` field, e.g. ``fair``).

    Returns
    -------
    The pooled result in the same format, with ``scenarios`` (those pooled) and, per candidate,
    ``by_scenario`` (its mean return on each).
    """
    if not results:
        raise ValueError("pooling needs at least one tuning result")
    first = results[0]
    grid = [c["params"] for c in first["candidates"]]
    shared = ("baseline", "seeds", "episode_hours", "warmup_s", "observation_contract")
    for result in results[1:]:
        for key in shared:
            if result.get(key) != first.get(key):
                raise ValueError(
                    f"tuning result of {result['scenario']} differs from {first['scenario']}'s "
                    f"in {key}: {result.get(key)!r} against {first.get(key)!r}"
                )
        if [c["params"] for c in result["candidates"]] != grid:
            raise ValueError(
                f"tuning result of {result['scenario']} scored other candidates than "
                f"{first['scenario']}'s: tune them over the same grid"
            )
    scenarios = [r["scenario"] for r in results]
    candidates = [
        {
            "params": candidate["params"],
            "mean_return": float(np.mean([r["candidates"][i]["mean_return"] for r in results])),
            "by_scenario": {r["scenario"]: r["candidates"][i]["mean_return"] for r in results},
        }
        for i, candidate in enumerate(first["candidates"])
    ]
    best = candidates[int(np.argmax([c["mean_return"] for c in candidates]))]
    return {
        **{key: first.get(key) for key in ("baseline", "fleet", "observation_contract")},
        "scenario": tuned_on,
        "scenarios": scenarios,
        **{key: first[key] for key in ("seeds", "episode_hours", "warmup_s")},
        "best_params": best["params"],
        "best_mean_return": best["mean_return"],
        "candidates": candidates,
    }
