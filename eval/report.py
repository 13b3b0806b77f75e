"""The benchmark's analysis and report: ``report.md``, ``results.json`` and the plots.

:func:`analyse` turns a :class:`eval.bench.BenchResult` into every aggregate (per scenario, per
scenario group, the headline test); :func:`write_report` writes them with every run's metrics to
``results.json``, renders ``report.md`` and the PNG plots (:mod:`eval.plots`). The method
section of the report (:data:`METHOD`) defines every figure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.autoscalers import PRODUCTION_AUTOSCALERS
from agents.baselines import BASELINES
from envs.scenarios import DEFAULT_EPISODE_HOURS, get_scenario
from eval.bench import GROUPS, BenchResult
from eval.bench_cli import DEFAULT_SEEDS
from eval.headline import judge, render_grid
from eval.stats import (
    Interval,
    bootstrap_ci,
    frontier_gap_ci,
    iqm,
    keyed_rng,
    paired_difference_ci,
    performance_profile_ci,
    probability_of_improvement_ci,
)

#: The headline passes when the policy wins on at least this share of held-out scenarios.
HEADLINE_SHARE = 0.7
#: The metric the headline, rankings, profiles and probabilities of improvement are about.
PRIMARY = "budget_spent_total"
PROFILE_POINTS = 101


@dataclass(frozen=True)
class Metric:
    """How a per-run metric is summarised and shown."""

    label: str
    lower_is_better: bool
    unit: str = ""
    scale: float = 1.0  # shown value = value * scale
    digits: int = 2


#: The per-run metrics summarised by IQM with stratified-bootstrap intervals.
METRICS: dict[str, Metric] = {
    PRIMARY: Metric("budget spent", True, "% of period budgets", 100.0, 3),
    "cost_gpu_hours": Metric("cost", True, "GPU-h"),
    "goodput_rps": Metric("goodput", False, "req/s"),
    "page_alerts": Metric("pages", True),
    "exhaustions": Metric("exhaustions", True),
    "action_smoothness": Metric("action change", True, "per step", 1.0, 3),
}


def scenario_group(name: str) -> str:
    """``held_out`` (never trained on), ``elastic`` (pools scale; fixed-fleet policies do not
    run there), ``user_trace`` (a user's own trace) or ``in_distribution``."""
    scenario = get_scenario(name)
    if scenario.user_trace:
        return "user_trace"
    if scenario.held_out:
        return "held_out"
    return "elastic" if scenario.elastic else "in_distribution"


def scenario_groups(scenarios: Sequence[str]) -> dict[str, list[str]]:
    """The benchmarked scenarios by group (:func:`scenario_group`), empty groups left out."""
    groups: dict[str, list[str]] = {key: [] for key in GROUPS}
    for name in scenarios:
        groups[scenario_group(name)].append(name)
    return {key: names for key, names in groups.items() if names}


class Scores:
    """Per-run values of a benchmark, as ``(seeds, scenarios)`` matrices per controller."""

    def __init__(self, result: BenchResult) -> None:
        self.seeds = list(result.config.seeds)
        self.scenarios = list(result.config.scenarios or ())
        self.controllers = [c.name for c in result.config.controllers]
        self.policies = [c.name for c in result.config.controllers if c.is_policy]
        # The baselines tuned per scenario (the @fair ones rival only in the held-out grid).
        self.baselines = [
            c.name for c in result.config.controllers if not c.is_policy and c.variant is None
        ]
        self._runs = {(r.controller, r.scenario, r.seed): r.metrics for r in result.runs}

    def value(self, controller: str, scenario: str, seed: int, key: str) -> float:
        metrics = self._runs[(controller, scenario, seed)]
        return float(metrics[key])

    def matrix(self, controller: str, scenarios: Sequence[str], key: str = PRIMARY) -> np.ndarray:
        """``(n_seeds, n_scenarios)`` values of ``key``."""
        return np.array(
            [[self.value(controller, s, seed, key) for s in scenarios] for seed in self.seeds]
        )

    def column(self, controller: str, scenario: str, key: str = PRIMARY) -> np.ndarray:
        return self.matrix(controller, [scenario], key)[:, 0]

    def per_slo_mean(self, controller: str, scenario: str, key: str) -> dict[str, float | None]:
        """The mean over seeds of a per-SLO metric (``None`` where no run had a value)."""
        runs = [self._runs[(controller, scenario, seed)][key] for seed in self.seeds]
        means = {}
        for slo in runs[0]:
            values = [run[slo] for run in runs if run[slo] is not None]
            means[slo] = float(np.mean(values)) if values else None
        return means


class Analysis:
    """Every aggregate of a benchmark (:meth:`to_dict` is the ``analysis`` part of
    ``results.json``).

    Parameters
    ----------
    result:
        The benchmark.
    """

    def __init__(self, result: BenchResult) -> None:
        self.scores = Scores(result)
        self.reps = result.config.bootstrap_reps
        self.seed = result.config.bootstrap_seed
        self.groups = scenario_groups(self.scores.scenarios)
        self.sweeps = result.frontiers
        self._iqm_cache: dict[tuple[str, str, str], float] = {}

    # -- helpers --------------------------------------------------------------------------------

    def rng(self, *keys: str) -> np.random.Generator:
        return keyed_rng(self.seed, *keys)

    def scenario_iqm(self, controller: str, scenario: str, key: str = PRIMARY) -> float:
        cache_key = (controller, scenario, key)
        if cache_key not in self._iqm_cache:
            self._iqm_cache[cache_key] = iqm(self.scores.column(controller, scenario, key))
        return self._iqm_cache[cache_key]

    def ranking(self, scenario: str, among: Sequence[str] | None = None) -> list[str]:
        """Controllers by IQM budget spent on ``scenario``, lowest first (ties: cost)."""
        names = self.scores.controllers if among is None else among
        return sorted(
            names,
            key=lambda c: (
                self.scenario_iqm(c, scenario),
                self.scenario_iqm(c, scenario, "cost_gpu_hours"),
            ),
        )

    def best_baseline(self, scenario: str, excluding: str | None = None) -> str | None:
        """The baseline (other than ``excluding``) with the lowest IQM budget spent."""
        candidates = [b for b in self.scores.baselines if b != excluding]
        return self.ranking(scenario, candidates)[0] if candidates else None

    def cost_eligible_baseline(self, policy: str, scenario: str) -> str | None:
        """The lead's variant: the lowest-IQM-spent baseline among those whose IQM cost is not
        higher than the policy's (all baselines when the policy is cheaper than every one)."""
        cost = self.scenario_iqm(policy, scenario, "cost_gpu_hours")
        eligible = [
            b
            for b in self.scores.baselines
            if self.scenario_iqm(b, scenario, "cost_gpu_hours") <= cost
        ]
        return self.ranking(scenario, eligible or self.scores.baselines)[0]

    def interval(self, controller: str, scenarios: Sequence[str], key: str) -> Interval:
        return bootstrap_ci(
            self.scores.matrix(controller, scenarios, key),
            self.rng("iqm", key, controller, *scenarios),
            reps=self.reps,
        )

    def difference(self, a: str, b: str, scenario: str, key: str = PRIMARY) -> Interval:
        """IQM of ``a`` minus IQM of ``b`` on ``scenario``, paired by seed."""
        return paired_difference_ci(
            self.scores.column(a, scenario, key),
            self.scores.column(b, scenario, key),
            self.rng("difference", key, a, b, scenario),
            reps=self.reps,
        )

    # -- sections -------------------------------------------------------------------------------

    def scenario_section(self, scenario: str) -> dict[str, Any]:
        controllers = {
            c: {
                **{key: self.interval(c, [scenario], key).to_dict() for key in METRICS},
                "budget_spent_by_slo": self.scores.per_slo_mean(c, scenario, "budget_spent"),
                "attainment_by_slo": self.scores.per_slo_mean(c, scenario, "attainment"),
            }
            for c in self.scores.controllers
        }
        ranking = self.ranking(scenario)
        section = {
            "group": scenario_group(scenario),
            "description": get_scenario(scenario).description,
            "controllers": controllers,
            "ranking": ranking,
            "best_baseline": self.best_baseline(scenario),
        }
        if len(ranking) > 1:
            section["winner_minus_runner_up"] = self.difference(
                ranking[0], ranking[1], scenario
            ).to_dict()
        return section

    def improvement(self, controller: str, scenarios: Sequence[str]) -> dict[str, Any] | None:
        """P(controller spends less than the best other baseline of each scenario)."""
        rivals = [self.best_baseline(s, excluding=controller) for s in scenarios]
        if None in rivals:
            return None
        x = self.scores.matrix(controller, scenarios)
        y = np.column_stack(
            [self.scores.column(r, s) for r, s in zip(rivals, scenarios, strict=True)]
        )
        poi = probability_of_improvement_ci(
            x, y, self.rng("poi", controller, *scenarios), lower_is_better=True, reps=self.reps
        )
        return {"versus": dict(zip(scenarios, rivals, strict=True)), **poi.to_dict()}

    def profiles(self, scenarios: Sequence[str]) -> dict[str, Any]:
        """Performance profiles of budget spent: share of runs spending at most tau."""
        everything = np.concatenate(
            [self.scores.matrix(c, scenarios).ravel() for c in self.scores.controllers]
        )
        # Budgets spent span orders of magnitude across scenarios: thresholds on a log grid.
        positive = everything[everything > 0]
        low, high = (positive.min(), positive.max()) if positive.size else (1e-6, 1e-6)
        taus = np.geomspace(low / 1.05, high * 1.05, PROFILE_POINTS)
        section: dict[str, Any] = {"taus": taus.tolist()}
        for c in self.scores.controllers:
            profile, low, high = performance_profile_ci(
                self.scores.matrix(c, scenarios),
                taus,
                self.rng("profile", c, *scenarios),
                lower_is_better=True,
                reps=min(self.reps, 2000),
            )
            section[c] = {"profile": profile.tolist(), "low": low.tolist(), "high": high.tolist()}
        return section

    def group_section(self, scenarios: Sequence[str]) -> dict[str, Any]:
        return {
            "scenarios": list(scenarios),
            "controllers": {
                c: {
                    **{key: self.interval(c, scenarios, key).to_dict() for key in METRICS},
                    "probability_of_improvement": self.improvement(c, scenarios),
                }
                for c in self.scores.controllers
            },
            "profile": self.profiles(scenarios),
        }

    def headline_row(self, policy: str, scenario: str, baseline: str) -> dict[str, Any]:
        spent = self.difference(policy, baseline, scenario)
        cost = self.difference(policy, baseline, scenario, "cost_gpu_hours")
        base = self.scenario_iqm(baseline, scenario)
        return {
            "best_baseline": baseline,
            "policy_spent": self.scenario_iqm(policy, scenario),
            "baseline_spent": base,
            "spent_difference": spent.to_dict(),
            "relative_difference": spent.point / base if base > 0 else None,
            "policy_cost": self.scenario_iqm(policy, scenario, "cost_gpu_hours"),
            "baseline_cost": self.scenario_iqm(baseline, scenario, "cost_gpu_hours"),
            "cost_difference": cost.to_dict(),
            "spends_less": spent.below_zero,
            "cost_not_higher": cost.low <= 0.0,
            "pass": spent.below_zero and cost.low <= 0.0,
        }

    def headline(self, policy: str) -> dict[str, Any]:
        """The headline test of ``policy`` on the held-out scenarios (definition in METHOD)."""
        scenarios = self.groups.get("held_out", [])
        verdicts = {}
        for variant, choose in (
            ("best_baseline", lambda s: self.best_baseline(s)),
            ("cost_eligible_baseline", lambda s: self.cost_eligible_baseline(policy, s)),
        ):
            rows = {s: self.headline_row(policy, s, choose(s)) for s in scenarios}
            passed = sum(row["pass"] for row in rows.values())
            verdicts[variant] = {
                "scenarios": rows,
                "passed": passed,
                "total": len(rows),
                "share": passed / len(rows) if rows else None,
                "pass": bool(rows) and passed / len(rows) >= HEADLINE_SHARE,
            }
        return verdicts

    def autoscaling(self, policy: str) -> dict[str, dict[str, Any]]:
        """``policy`` against every autoscaler on every elastic scenario: budget spent and cost,
        paired differences (a :meth:`headline_row` per pair; ``pass``: less budget at no higher
        cost)."""
        autoscalers = [b for b in self.scores.baselines if BASELINES[b].needs_elastic]
        return {
            s: {a: self.headline_row(policy, s, a) for a in autoscalers}
            for s in self.groups.get("elastic", [])
        }

    def production_autoscalers(self, scenario: str) -> dict[str, Any] | None:
        """The production-style autoscalers benchmarked on ``scenario`` ranked as the scenario's
        controllers are (budget spent, then cost), the ``strongest`` first."""
        among = [a for a in PRODUCTION_AUTOSCALERS if a in self.scores.baselines]
        if not among:
            return None
        ranking = self.ranking(scenario, among)
        return {"ranking": ranking, "strongest": ranking[0]}

    def frontier(self, scenario: str, autoscaler: str, sweep: dict[str, Any]) -> dict[str, Any]:
        """An autoscaler's cost-against-budget frontier on ``scenario`` (IQMs over the sweep's
        seeds) and, for every elastic policy, its gap to it (:func:`eval.stats.frontier_gap_ci`)
        with the verdict."""
        seeds = sweep["seeds"]

        def runs(label: str, key: str) -> np.ndarray:
            return np.array([self.scores.value(label, scenario, seed, key) for seed in seeds])

        spent = np.array([runs(p["label"], PRIMARY) for p in sweep["points"]])
        cost = np.array([runs(p["label"], "cost_gpu_hours") for p in sweep["points"]])
        points = [
            {"label": p["label"], "value": p["value"], "spent": iqm(s), "cost": iqm(c)}
            for p, s, c in zip(sweep["points"], spent, cost, strict=True)
        ]
        policies = {}
        for policy in self.scores.policies:
            gap, side = frontier_gap_ci(
                runs(policy, PRIMARY),
                runs(policy, "cost_gpu_hours"),
                spent,
                cost,
                self.rng("frontier", policy, autoscaler, scenario),
                reps=self.reps,
            )
            policies[policy] = {
                "spent": iqm(runs(policy, PRIMARY)),
                "cost": iqm(runs(policy, "cost_gpu_hours")),
                "gap": gap.to_dict(),
                "side": side,
                "verdict": frontier_verdict(gap, side),
            }
        return {"parameter": sweep["parameter"], "seeds": seeds, "points": points} | {
            "policies": policies
        }

    def to_dict(self) -> dict[str, Any]:
        has_rivals = bool(self.scores.baselines)
        return {
            "scenarios": {s: self.scenario_section(s) for s in self.scores.scenarios},
            "groups": {g: self.group_section(names) for g, names in self.groups.items()},
            "headline": {p: self.headline(p) for p in self.scores.policies if has_rivals},
            "autoscaling": {p: self.autoscaling(p) for p in self.scores.policies},
            "production_autoscalers": {
                s: ranked
                for s in self.groups.get("elastic", [])
                if (ranked := self.production_autoscalers(s)) is not None
            },
            "frontiers": {
                s: {a: self.frontier(s, a, sweep) for a, sweep in by_autoscaler.items()}
                for s, by_autoscaler in self.sweeps.items()
            },
        }


def frontier_verdict(gap: Interval, side: int) -> str:
    """Where a controller lies against a frontier, from the 95 % interval of its gap and the
    side of the frontier's cost range its cost is on (outside it the gap is a bound, which
    decides one way only)."""
    if gap.high < 0.0 and side <= 0:
        return "below the frontier" + (" (cheaper than all its settings)" if side else "")
    if gap.low > 0.0 and side >= 0:
        return "above the frontier" + (" (dearer than all its settings)" if side else "")
    if side:
        where = "cheaper" if side < 0 else "dearer"
        return f"no verdict ({where} than all its settings)"
    return "on the frontier (within noise)"


def analyse(result: BenchResult) -> dict[str, Any]:
    """Every aggregate of ``result`` (see :class:`Analysis`)."""
    return Analysis(result).to_dict()


# ----------------------------------------------------------------------------------------------
# results.json


def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def results_document(result: BenchResult, analysis: dict[str, Any]) -> dict[str, Any]:
    """``results.json``: the configuration, every run's metrics, the analysis, the traces and
    (under ``timing``, the only part that differs between two identical benchmarks) the wall
    time."""
    config = result.config
    return _json_safe(
        {
            "config": {
                "controllers": [asdict(c) for c in config.controllers],
                "scenarios": list(config.scenarios or ()),
                "seeds": list(config.seeds),
                "episode_hours": config.episode_hours,
                "warmup_s": config.warmup_s,
                "bootstrap_reps": config.bootstrap_reps,
                "bootstrap_seed": config.bootstrap_seed,
                "frontier_seeds": config.frontier_seeds,
                "tuned_dir": str(config.tuned_dir),
                **({"fleet": config.fleet} if config.fleet is not None else {}),
                "grid_fleets": list(config.grid_fleets),
                **({"trace": asdict(config.trace)} if config.trace is not None else {}),
            },
            "warnings": list(result.warnings),
            "tuned_params": result.tuned_params,
            "frontiers": result.frontiers,
            "runs": [
                {"controller": r.controller, "scenario": r.scenario, "seed": r.seed, **r.metrics}
                for r in result.runs
            ],
            "analysis": analysis,
            "headline": judge(result, Analysis(result)),
            "traces": [
                {"controller": r.controller, "scenario": r.scenario, "seed": r.seed, **r.trace}
                for r in result.runs
                if r.trace is not None
            ],
            "timing": {"wall_time_s": result.wall_time_s, "runs": len(result.runs)},
        }
    )


def dump_results(document: dict[str, Any]) -> str:
    """``results.json`` text: indented, except one line per trace (thousands of numbers)."""
    head = {k: v for k, v in document.items() if k != "traces"}
    traces = ",\n".join("  " + json.dumps(t, separators=(",", ":")) for t in document["traces"])
    body = json.dumps(head, indent=1)
    return f'{body[:-2]},\n "traces": [\n{traces}\n ]\n}}\n'


def write_report(result: BenchResult, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``results.json`` and the plots to ``out_dir``; return the report's
    path."""
    from eval.plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(result)
    document = results_document(result, analysis)
    (out / "results.json").write_text(dump_results(document))
    plots = write_plots(document, out)
    path = out / "report.md"
    path.write_text(render_report(document, plots))
    return path


# ----------------------------------------------------------------------------------------------
# report.md

METHOD = """\
## Method

**Runs.** A run is one episode of one controller on one scenario with one evaluation seed
(`LLMFleetEnv`, default SLO spec, {episode_hours} after a {warmup_s:.0f} s warm-up, knobs set
every 30 s). The seed fixes the scenario draw, the initial budgets and the simulator, so all
controllers face the same episodes (runs are paired by seed). Evaluation seeds are
{seeds}; the baselines were tuned on training seeds 1000 and up (`scripts/tune_baselines.py`,
`agents.tuning.tune`: grid search per baseline and scenario, best mean episode return), so no
baseline is scored on an episode it was tuned on. Baselines are tuned on every scenario, the
held-out ones included, while learned policies never train on held-out scenarios: the comparison
favours the baselines. A run's figures come from the environment's per-step info stream.

**Per-run metrics.**
- *Budget spent* per SLO: the fraction of that SLO's period error budget the episode's failures
  consume, `(bad / total over the episode) / (1 - objective) x episode length / period` (the
  burn rate over the episode times the share of the period the episode covers; counts are the
  engine's good/total events per step, requests or tokens or fairness slices). *Budget spent,
  summed over dimensions, normalised* (`budget_spent_total`, the headline metric, shown in % of
  period budgets) is the sum over SLOs of these fractions: each dimension counts equally. This is
  what `budget remaining at start - at end` measures when no prior ages out; the environment's
  remaining budget also moves with the ageing of the initial spent prior, with budget phases
  (model rollout) and, for the per-token ITL SLO, with a prior weighted in requests against a
  period counted in tokens, so that difference is kept in `results.json` as
  `budget_remaining_drop` but not used.
- *Budget exhaustions*: SLOs whose remaining budget (as the environment tracks it) crosses to
  0 or below during the episode. *Page alerts*: onsets of a page alert (summed over SLOs);
  `page_alert_steps` counts SLO-steps paging.
- *SLO attainment* per SLO: good / total events over the episode.
- *Goodput*: requests served within every per-request latency SLO (TTFT, normalised latency,
  streaming pace; the per-token ITL SLO judges tokens, not requests, and is left out), per
  second of the episode.
- *Cost*: busy GPU-hours, what the environment's serving cost measures: GPU busy time of every
  replica priced per GPU (all A100-80GB here) plus CPU offload at 20 % of a replica's GPU price at
  full offload, converted to GPU-hours at the strong GPU's price. Idle provisioned GPUs are not
  counted, so shedding traffic lowers cost.
- *Action change*: mean absolute change of the action vector (each knob in [-1, 1]) per step.

**Aggregates** (following Agarwal et al., 2021, "Deep RL at the edge of the statistical
precipice"; the rliable methods, implemented with numpy in `eval/stats.py` rather than adding
rliable and its scipy/arch dependencies): the interquartile mean (IQM, the mean of the middle
50 % of runs) over seeds, or over seeds x scenarios for a group, with 95 % percentile intervals
from the stratified bootstrap (seeds resampled within each scenario; {reps} replicates, seed
{boot_seed}, so intervals are reproducible). Differences between two controllers on a scenario
resample the same seeds for both (paired). *Probability of improvement* P(X < Y): the chance that
a run of X spends less budget than a run of Y on a scenario drawn at random (Mann-Whitney U per
scenario, averaged), Y being, per scenario, the best baseline other than X; intervals resample X
and Y independently, as rliable does. *Performance profiles*: the share of runs spending at most
tau of the period budgets, averaged over scenarios, with pointwise bootstrap bands. In-distribution
scenarios are the training suite, held-out ones are never trained on. Group aggregates pool runs
in these common units (fractions of period budgets), so a scenario that burns more weighs more;
per-scenario tables and the headline compare controllers within one scenario.

**Headline test.** On each held-out scenario, the *best baseline* is the tuned baseline with the
lowest IQM budget spent, whatever its cost. The learned policy *passes* the scenario when the
95 % interval of (policy - best baseline) IQM budget spent lies entirely below zero **and** its
cost is no higher: the 95 % interval of (policy - best baseline) IQM cost reaches zero or below
(the policy is not significantly more expensive). The headline holds when the policy passes on at
least {share:.0%} of the held-out scenarios. Choosing the best baseline regardless of cost is the
stricter reading: a baseline that buys budget with GPU-hours must still be beaten on budget, and
the policy may not pay more for it. The variant in `results.json` (`cost_eligible_baseline`)
picks the lowest-spending baseline among those whose IQM cost is not higher than the policy's
(all of them when the policy is cheaper than every baseline).
"""


def _show(value: float | None, metric: Metric) -> str:
    if value is None:
        return "n/a"
    return f"{value * metric.scale:.{metric.digits}f}"


def _show_interval(interval: dict[str, float], metric: Metric) -> str:
    return (
        f"{_show(interval['point'], metric)} "
        f"[{_show(interval['low'], metric)}, {_show(interval['high'], metric)}]"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_header() -> list[str]:
    return [f"{m.label} ({m.unit})" if m.unit else m.label for m in METRICS.values()]


def _episode_length(config: dict) -> str:
    """Episodes of the given hours, or each scenario's own length."""
    hours = config["episode_hours"]
    if hours is not None:
        return f"{hours} h"
    own = {s: get_scenario(s).episode_hours for s in config["scenarios"]}
    others = ", ".join(f"{s} {h:g} h" for s, h in own.items() if h)
    return f"{DEFAULT_EPISODE_HOURS:g} h" + (f" ({others})" if others else "")


def _title(document: dict) -> str:
    config, timing = document["config"], document["timing"]
    controllers = [c["name"] for c in config["controllers"]]
    fleet = config.get("fleet")
    runs = len(controllers) * len(config["scenarios"]) * len(config["seeds"])
    sweeps = timing["runs"] - runs
    return (
        "# budgetpilot benchmark\n\n"
        + (f"Fleet: `{fleet}` (instead of the reference fleet).\n\n" if fleet else "")
        + f"{len(controllers)} controllers ({', '.join(controllers)}) x "
        f"{len(config['scenarios'])} scenarios x {len(config['seeds'])} seeds = "
        f"{runs} runs{f' (and {sweeps} of frontier sweeps)' if sweeps else ''} of "
        f"{_episode_length(config)} (after {config['warmup_s']:.0f} s "
        f"of warm-up), in {timing['wall_time_s']:.0f} s. Figures are IQM over seeds with 95 % "
        "stratified-bootstrap intervals; budget spent is in % of the period error budgets, "
        "summed over the SLOs (see Method)."
    )


def _scope(document: dict) -> str:
    """What a run smaller than the full benchmark (fewer seeds, shorter episodes: ``--quick``)
    can show; nothing for a full run."""
    config = document["config"]
    seeds, hours = len(config["seeds"]), config["episode_hours"]
    if seeds >= DEFAULT_SEEDS and hours is None:
        return ""
    half_widths = [
        100 * (stats[PRIMARY]["high"] - stats[PRIMARY]["low"]) / 2
        for section in document["analysis"]["groups"].values()
        for stats in section["controllers"].values()
    ]
    half_widths = [w for w in half_widths if math.isfinite(w)]
    noise = (
        f"Its 95 % intervals of budget spent are +/- {np.median(half_widths):.2g} percentage "
        "points wide (median over controllers and scenario groups): smaller differences are "
        "noise. "
        if half_widths
        else ""
    )
    return (
        "## What this run can show\n\n"
        f"A short run: {seeds} seeds of {_episode_length(config)} episodes (`budgetpilot bench "
        f"--quick`), not the full benchmark ({DEFAULT_SEEDS} seeds of each scenario's own "
        f"length, {DEFAULT_EPISODE_HOURS:g} h unless it says; `budgetpilot bench`). {noise}"
        "Short episodes spend small shares of 30-day budgets, so controllers differ less than "
        "over the full length. The headline below is computed as for the full run, but the "
        "project's headline is judged on the full run (README, Benchmark)."
    )


def _warnings(document: dict) -> str:
    if not document["warnings"]:
        return ""
    items = "\n".join(f"- {w}" for w in document["warnings"])
    return f"## Warnings\n\n{items}"


def _headline(document: dict) -> str:
    analysis = document["analysis"]
    held_out = analysis["groups"].get("held_out", {}).get("scenarios", [])
    spent = METRICS[PRIMARY]
    if not held_out:
        return "## Headline\n\nNo held-out scenario was benchmarked: the headline test needs them."
    if not analysis["headline"]:
        if _policy_names(document):
            return (
                "## Headline\n\nNo baseline was benchmarked, so the headline test (each "
                "policy against the best baseline of each held-out scenario) was not run: "
                "benchmark the policy with baselines (`--policies NAME`) to judge it."
            )
        rows = [
            [
                s,
                analysis["scenarios"][s]["best_baseline"],
                _show_interval(_best_stats(analysis, s)[PRIMARY], spent),
                _show_interval(
                    _best_stats(analysis, s)["cost_gpu_hours"], METRICS["cost_gpu_hours"]
                ),
            ]
            for s in held_out
        ]
        return (
            "## Headline\n\nNo learned policy was benchmarked (policies/zoo holds none, or none "
            "was selected), so the headline test was not run. The best baseline of each "
            "held-out scenario, which a policy must beat:\n\n"
            + _table(["scenario", "best baseline", "budget spent (%)", "cost (GPU-h)"], rows)
        )
    trained_on = {c["name"]: c["trained_on"] for c in document["config"]["controllers"]}
    return "\n\n".join(
        _policy_headline(policy, verdicts, trained_on[policy])
        for policy, verdicts in analysis["headline"].items()
    )


def _autoscaling(document: dict) -> str:
    """Each learned policy against the autoscalers, scenario by scenario: paired differences
    with the tuned setting, the verdict against each autoscaler's frontier, and the strongest
    production-style autoscaler."""
    analysis = document["analysis"]
    spent, cost = METRICS[PRIMARY], METRICS["cost_gpu_hours"]
    frontiers = analysis.get("frontiers", {})
    parts = []
    for policy, scenarios in analysis.get("autoscaling", {}).items():
        rows = [
            [
                scenario,
                autoscaler,
                f"{_show(row['policy_spent'], spent)} vs {_show(row['baseline_spent'], spent)}",
                _show_interval(row["spent_difference"], spent),
                f"{_show(row['policy_cost'], cost)} vs {_show(row['baseline_cost'], cost)}",
                _show_interval(row["cost_difference"], cost),
                _scaling_verdict(row),
                _frontier_cell(frontiers.get(scenario, {}).get(autoscaler), policy),
            ]
            for scenario, by_autoscaler in scenarios.items()
            for autoscaler, row in by_autoscaler.items()
        ]
        if rows:
            header = ["scenario", "autoscaler", "budget spent (%)", "difference (points)"]
            header += ["cost (GPU-h)", "difference (GPU-h)", "verdict", "against its frontier"]
            parts.append(
                f"## Autoscaling: {policy}\n\nOn the elastic scenarios, {policy} against each "
                "autoscaler's tuned setting (policy vs autoscaler, IQM over seeds; differences "
                "paired by seed with 95 % CIs), and against the autoscaler's frontier: its main "
                "target swept, the budget its settings spend at the policy's cost, interpolated "
                "(gap in points of budget, negative: the policy spends less; see Method). The "
                "frontiers show in the cost-against-budget plot.\n\n" + _table(header, rows)
            )
    return "\n\n".join(parts)


def _frontier_cell(frontier: dict | None, policy: str) -> str:
    """The policy's verdict against one frontier, with its gap."""
    if frontier is None:
        return "no frontier traced"
    verdict = frontier["policies"][policy]
    return f"{verdict['verdict']}: {_show_interval(verdict['gap'], METRICS[PRIMARY])}"


def _strongest_autoscalers(document: dict) -> str:
    """Per scenario, the production-style autoscaler that spends the least budget."""
    analysis = document["analysis"]
    spent, cost = METRICS[PRIMARY], METRICS["cost_gpu_hours"]
    lines = []
    for scenario, ranked in analysis.get("production_autoscalers", {}).items():
        stats = analysis["scenarios"][scenario]["controllers"]
        shown = ", ".join(
            f"{a} ({_show(stats[a][PRIMARY]['point'], spent)} % at "
            f"{_show(stats[a]['cost_gpu_hours']['point'], cost)} GPU-h)"
            for a in ranked["ranking"]
        )
        lines.append(f"- {scenario}: **{ranked['strongest']}** strongest; {shown}")
    if not lines:
        return ""
    return (
        "## Production-style autoscalers\n\nThe strongest of the autoscalers operators run "
        "(Kubernetes HPA, llm-d WVA, Knative KPA), tuned per scenario, by IQM budget spent "
        "(then cost), the others after it:\n\n" + "\n".join(lines)
    )


def _scaling_verdict(row: dict) -> str:
    """Where the policy stands against one autoscaler on budget spent and GPU-hours."""
    spent, cost = row["spent_difference"], row["cost_difference"]
    less = "less budget" if spent["high"] < 0 else "more budget" if spent["low"] > 0 else None
    cheaper = "fewer GPU-h" if cost["high"] < 0 else "more GPU-h" if cost["low"] > 0 else None
    if row["pass"]:
        return "better: less budget at no higher cost"
    found = [claim for claim in (less, cheaper) if claim]
    return ", ".join(found) if found else "tie"


def _best_stats(analysis: dict, scenario: str) -> dict:
    section = analysis["scenarios"][scenario]
    return section["controllers"][section["best_baseline"]]


def _policy_headline(policy: str, verdicts: dict, trained_on: Sequence[str]) -> str:
    spent, cost = METRICS[PRIMARY], METRICS["cost_gpu_hours"]
    main = verdicts["best_baseline"]
    rows = [
        [
            scenario,
            row["best_baseline"],
            _show(row["policy_spent"], spent),
            _show(row["baseline_spent"], spent),
            _show_interval(row["spent_difference"], spent),
            _show_interval(row["cost_difference"], cost),
            "pass" if row["pass"] else "fail",
        ]
        for scenario, row in main["scenarios"].items()
    ]
    variant = verdicts["cost_eligible_baseline"]
    verdict = "HOLDS" if main["pass"] else "DOES NOT HOLD"
    return (
        f"## Headline: {policy}\n\n"
        f"On the held-out scenarios, does {policy} (trained on {', '.join(trained_on) or 'n/a'}) "
        "spend less error budget than the best baseline at no higher cost?\n\n"
        + _table(
            [
                "scenario",
                "best baseline",
                f"{policy} spent (%)",
                "baseline spent (%)",
                "difference (%) [95% CI]",
                "cost difference (GPU-h) [95% CI]",
                "verdict",
            ],
            rows,
        )
        + f"\n\n**{policy} passes on {main['passed']} of {main['total']} held-out scenarios: the "
        f"headline {verdict}** (it needs at least {HEADLINE_SHARE:.0%}). With the cost-eligible "
        f"baseline instead (see Method): {variant['passed']} of {variant['total']}, "
        f"{'holds' if variant['pass'] else 'does not hold'}."
    )


def _group_tables(document: dict, plots: dict) -> str:
    analysis = document["analysis"]
    parts = []
    for group, section in analysis["groups"].items():
        rows = []
        for controller, stats in section["controllers"].items():
            poi = stats["probability_of_improvement"]
            poi_text = (
                "n/a"
                if poi is None
                else f"{poi['point']:.2f} [{poi['low']:.2f}, {poi['high']:.2f}]"
            )
            cells = [_show_interval(stats[k], m) for k, m in METRICS.items()]
            rows.append([controller, *cells, poi_text])
        parts.append(
            f"### {GROUPS[group].capitalize()} scenarios: {', '.join(section['scenarios'])}\n\n"
            + _table(
                ["controller", *_metric_header(), "P(less budget than best other baseline)"], rows
            )
        )
    parts.append(
        f"![performance profiles]({plots['profiles']})\n\n"
        f"![cost against budget spent]({plots['cost_vs_budget']})"
    )
    return "## Aggregates\n\n" + "\n\n".join(parts)


def scenario_paragraph(scenario: str, section: dict, policies: Sequence[str]) -> str:
    """Who wins on a scenario and by how much, in words."""
    spent, cost = METRICS[PRIMARY], METRICS["cost_gpu_hours"]
    stats, ranking = section["controllers"], section["ranking"]
    winner = ranking[0]
    text = (
        f"**{winner}** spends the least budget, {_show_interval(stats[winner][PRIMARY], spent)} % "
        f"at {_show(stats[winner]['cost_gpu_hours']['point'], cost)} GPU-h"
    )
    if len(ranking) == 1:
        return text + "."
    runner = ranking[1]
    gap = section["winner_minus_runner_up"]
    runner_spent = stats[runner][PRIMARY]["point"]
    relative = f"{-gap['point'] / runner_spent:.0%} less than" if runner_spent > 0 else "vs"
    significance = (
        "a clear margin: the 95 % CI excludes zero"
        if gap["high"] < 0
        else "within noise: the 95 % CI of the difference includes zero"
    )
    text += (
        f", {relative} the runner-up **{runner}** ({_show(runner_spent, spent)} % at "
        f"{_show(stats[runner]['cost_gpu_hours']['point'], cost)} GPU-h; difference "
        f"{_show_interval(gap, spent)} points, {significance})."
    )
    cheapest = min(ranking, key=lambda c: stats[c]["cost_gpu_hours"]["point"])
    if cheapest not in (winner, runner):
        cheap = stats[cheapest]
        text += (
            f" The cheapest is {cheapest} ({_show(cheap['cost_gpu_hours']['point'], cost)} GPU-h, "
            f"{_show(cheap[PRIMARY]['point'], spent)} % spent)."
        )
    for name in [*policies, "vllm-defaults"]:
        if name in ranking[2:]:
            text += (
                f" {name} ranks {ranking.index(name) + 1} of {len(ranking)} "
                f"({_show(stats[name][PRIMARY]['point'], spent)} %)."
            )
    return text


def _policy_names(document: dict) -> list[str]:
    """The benchmarked controllers that are learned policies."""
    return [c["name"] for c in document["config"]["controllers"] if c["policy_path"]]


def _scenario_sections(document: dict, plots: dict) -> str:
    analysis = document["analysis"]
    policies = _policy_names(document)
    parts = []
    for scenario, section in analysis["scenarios"].items():
        rows = [
            [c, *(_show_interval(section["controllers"][c][k], m) for k, m in METRICS.items())]
            for c in section["ranking"]
        ]
        images = plots["scenarios"].get(scenario, {})
        links = " ".join(f"![{kind}]({name})" for kind, name in images.items())
        parts.append(
            f"### {scenario} ({GROUPS[section['group']]})\n\n{section['description']}\n\n"
            + _table(["controller", *_metric_header()], rows)
            + f"\n\n{scenario_paragraph(scenario, section, policies)}\n\n{links}"
        )
    return "## Scenarios\n\n" + "\n\n".join(parts)


def _dimension_tables(document: dict) -> str:
    """Mean budget spent and attainment per SLO, per group (mean over its scenarios)."""
    analysis = document["analysis"]
    parts = []
    for group, section in analysis["groups"].items():
        for key, title, scale in (
            ("budget_spent_by_slo", "budget spent per SLO (% of its period budget)", 100.0),
            ("attainment_by_slo", "attainment per SLO (%)", 100.0),
        ):
            rows, slos = [], None
            for controller in section["controllers"]:
                per_scenario = [
                    analysis["scenarios"][s]["controllers"][controller][key]
                    for s in section["scenarios"]
                ]
                slos = list(per_scenario[0])
                cells = []
                for slo in slos:
                    values = [p[slo] for p in per_scenario if p[slo] is not None]
                    cells.append(f"{scale * np.mean(values):.3f}" if values else "n/a")
                rows.append([controller, *cells])
            parts.append(
                f"### {GROUPS[group].capitalize()}: {title}\n\n"
                + _table(["controller", *slos], rows)
            )
    return "## Budget dimensions\n\nMeans over seeds and the group's scenarios.\n\n" + "\n\n".join(
        parts
    )


def _tuned_section(document: dict) -> str:
    rows = [
        [baseline, scenario, "defaults (not tuned)" if params is None else json.dumps(params)]
        for baseline, by_scenario in document["tuned_params"].items()
        for scenario, params in by_scenario.items()
    ]
    if not rows:
        return ""
    return "## Baseline parameters\n\n" + _table(["baseline", "scenario", "parameters"], rows)


FRONTIER_METHOD = """\
**Frontiers (elastic scenarios).** A tuned autoscaler is one point of a trade: a lower target
buys budget with GPU-hours. To judge a policy's trade, each autoscaler's main target is swept
over a documented range with its other tuned parameters kept (`hpa`: the KV-usage target
2.5-40 % or the waiting-requests target 0.25-4; `budget-autoscaler`: the calm burn rate 0.25-2;
`wva`: `kvCacheThreshold` 10-80 %; `kpa`: the target concurrency 4-32), on evaluation seeds
{seeds}. The frontier joins, by increasing cost, the points (IQM cost, IQM budget spent) that no
other point of the sweep beats on both. The policy's gap is its IQM budget spent minus the
frontier's at the policy's IQM cost (linear between points), on the same seeds; its 95 % interval
comes from a bootstrap that resamples the same seeds for the policy and every point. The policy
lies *below* the frontier (a better trade than any setting of that autoscaler) when the interval
is below zero, *above* it when above zero, *on* it otherwise. Outside the frontier's cost range
the frontier is continued flat from its end point, which bounds it (a frontier only falls with
cost): a policy cheaper than every setting is below when it spends less than the cheapest
setting's budget (interval below zero), a policy dearer than every setting is above when it
spends more than the dearest setting's; otherwise there is no verdict."""


def _frontier_method(document: dict) -> str:
    seeds = {tuple(sweep["seeds"]) for f in document["frontiers"].values() for sweep in f.values()}
    if not seeds:
        return ""
    return FRONTIER_METHOD.format(seeds=", ".join(map(str, sorted(seeds)[0])))


def render_report(document: dict, plots: dict) -> str:
    """``report.md`` from the ``results.json`` document and the plot file names."""
    config = document["config"]
    method = METHOD.format(
        episode_hours=_episode_length(config),
        warmup_s=config["warmup_s"],
        seeds=f"{config['seeds'][0]} to {config['seeds'][-1]}"
        if config["seeds"] == list(range(config["seeds"][0], config["seeds"][-1] + 1))
        else ", ".join(map(str, config["seeds"])),
        reps=config["bootstrap_reps"],
        boot_seed=config["bootstrap_seed"],
        share=HEADLINE_SHARE,
    )
    parts = [
        _title(document),
        _scope(document),
        _warnings(document),
        render_grid(document),
        _headline(document),
        _autoscaling(document),
        _strongest_autoscalers(document),
        _group_tables(document, plots),
        _scenario_sections(document, plots),
        _dimension_tables(document),
        _tuned_section(document),
        method,
        _frontier_method(document),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
