"""The held-out headline, judged fairly and strictly, on the controller operators deploy.

The project's claim is that a learned policy governs error budgets better than the heuristics
operators use, on traffic it was never trained on. :func:`judge` tests it on the *held-out grid*:
every held-out scenario on every fleet (the benchmark's own, plus
:attr:`eval.bench.BenchConfig.grid_fleets`), each cell a verdict.

- **Judged as deployed.** A policy is judged through the sidecar's default guardrails
  (``NAME@sidecar``, :class:`eval.policy_controller.SidecarGuardedController`) when that
  controller was benchmarked, since that is what operators run.
- **Fair** and **strict.** Fair: the rivals are the baselines tuned with the information the
  policy had, one parameter set each over its training scenarios (``NAME@fair``,
  ``scripts/tune_baselines.py --fair``). Strict: the rivals are the baselines tuned on each
  held-out scenario itself (on tuning seeds), which the policy never saw.
- **Verdict** of a cell, for each reading: the policy passes when it spends less budget than the
  lowest-spending rival (the 95 % interval of the paired IQM difference below zero) at no higher
  cost (the interval of the cost difference reaching zero or below). A failing cell says why:
  which SLO burned more than the rival's, which knob the policy held where the rival did not.

Cells that cannot run (a policy of another fleet's contract, a fleet this benchmark did not
govern) are listed with the reason, never counted as a pass or a failure: the pass fractions
are over the cells judged, and are unknown (``None``) when none was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs.paths import REPO_ROOT
from envs.scenarios import get_scenario
from eval.bench import FAIR, SIDECAR, BenchConfig, BenchResult, ControllerSpec

if TYPE_CHECKING:
    from eval.report import Analysis

#: Example fleets of the held-out grid besides the reference one (``reference.yaml`` is the
#: reference fleet itself).
EXAMPLE_FLEETS = tuple(
    str(p)
    for p in sorted((REPO_ROOT / "examples" / "fleets").glob("*.yaml"))
    if p.name != "reference.yaml"
)
#: The issue's targets: shares of the held-out cells passed.
TARGETS = {FAIR: 0.7, "strict": 0.5}
#: The name of the benchmark's own fleet when it governs the reference one.
REFERENCE_FLEET = "reference"


def held_out(scenarios: Sequence[str]) -> list[str]:
    """The held-out scenarios among ``scenarios``."""
    return [s for s in scenarios if get_scenario(s).held_out]


def judged_policies(controllers: Sequence[ControllerSpec]) -> dict[str, str]:
    """Each benchmarked policy -> the controller its headline is judged on (its ``@sidecar``
    variant when benchmarked, else itself)."""
    names = {c.name for c in controllers}
    return {
        c.name: f"{c.name}@{SIDECAR}" if f"{c.name}@{SIDECAR}" in names else c.name
        for c in controllers
        if c.is_policy and c.variant is None
    }


def cells_not_run(config: BenchConfig) -> list[dict[str, str]]:
    """The held-out grid's cells on ``config.grid_fleets`` (none but the benchmark's own fleet
    is run) with the reason each was not: the policy cannot govern that fleet, or how to run
    it."""
    policies = [c for c in config.controllers if c.is_policy and c.variant is None]
    scenarios = held_out(config.scenarios or ())
    cells = []
    for fleet in config.grid_fleets:
        if fleet == config.fleet:
            continue
        for policy in policies:
            for scenario in scenarios:
                reason = policy.unfit_reason(scenario, fleet) or (
                    f"not run here: budgetpilot bench --fleet {fleet} --scenarios {scenario} "
                    "--tuned-dir DIR (baselines tuned on that fleet)"
                )
                cells.append(
                    {"policy": policy.name, "scenario": scenario, "fleet": fleet, "reason": reason}
                )
    return cells


class Judge:
    """Verdicts of one policy on the held-out cells of one benchmark.

    Parameters
    ----------
    analysis:
        The benchmark's :class:`eval.report.Analysis` (paired differences, IQMs).
    controllers:
        The benchmarked controllers.
    policy:
        The controller judged (``NAME@sidecar`` when benchmarked).
    """

    def __init__(
        self, analysis: Analysis, controllers: Sequence[ControllerSpec], policy: str
    ) -> None:
        self.analysis = analysis
        self.scores = analysis.scores
        self.policy = policy
        fair = [c.name for c in controllers if c.variant == FAIR]
        # vllm-defaults has no parameters: it took no information and rivals in both readings.
        untuned = [b for b in self.scores.baselines if b == "vllm-defaults"]
        self.rivals = {FAIR: fair + untuned if fair else [], "strict": self.scores.baselines}

    def verdict(self, scenario: str, reading: str) -> dict[str, Any] | None:
        """The cell's verdict in ``reading`` (``fair`` or ``strict``), ``None`` without
        rivals."""
        rivals = self.rivals[reading]
        if not rivals:
            return None
        best = self.analysis.ranking(scenario, rivals)[0]
        row = self.analysis.headline_row(self.policy, scenario, best)
        row["exhaustions"] = self._exhaustions(scenario, rivals)
        row["why"] = None if row["pass"] else self.why(scenario, row)
        return row

    def _exhaustions(self, scenario: str, rivals: Sequence[str]) -> dict[str, Any]:
        """Budget exhaustions over the seeds: the policy's, and whether a rival had none."""
        total = {c: int(self.scores.column(c, scenario, "exhaustions").sum()) for c in rivals}
        policy = int(self.scores.column(self.policy, scenario, "exhaustions").sum())
        clean = sorted(c for c, n in total.items() if n == 0)
        return {
            "policy": policy,
            "rivals_without": clean,
            "ok": policy == 0 or not clean,
        }

    def why(self, scenario: str, row: dict[str, Any]) -> str:
        """Why the cell failed: the budget or cost lost, the SLO that burned most beyond the
        rival's, the knob held furthest from where the rival held it."""
        rival = row["best_baseline"]
        reasons = []
        if not row["spends_less"]:
            burned = self._largest_gap(scenario, rival, "budget_spent")
            spent = f"{100 * row['policy_spent']:.3g}% against {100 * row['baseline_spent']:.3g}%"
            reasons.append(
                f"spent {spent} (not less with 95% confidence)"
                + (
                    f"; {burned[0]} burned most beyond {rival}'s (+{100 * burned[1]:.3g} points)"
                    if burned and burned[1] > 0
                    else ""
                )
            )
        if not row["cost_not_higher"]:
            reasons.append(
                f"cost {row['policy_cost']:.3g} GPU-h against {row['baseline_cost']:.3g} "
                "(higher with 95% confidence)"
            )
        held = self._largest_gap(scenario, rival, "action_mean", absolute=True)
        if held is not None:
            knob = held[0]
            mine = self.scores.per_slo_mean(self.policy, scenario, "knob_mean")[knob]
            theirs = self.scores.per_slo_mean(rival, scenario, "knob_mean")[knob]
            reasons.append(f"held {knob} at {mine:.3g} on average against {rival}'s {theirs:.3g}")
        return "; ".join(reasons)

    def _largest_gap(
        self, scenario: str, rival: str, key: str, absolute: bool = False
    ) -> tuple[str, float] | None:
        """The entry of a per-SLO or per-knob metric where the policy's mean exceeds the
        rival's most (``absolute``: differs most either way), with the difference."""
        mine = self.scores.per_slo_mean(self.policy, scenario, key)
        theirs = self.scores.per_slo_mean(rival, scenario, key)
        gaps = {
            name: mine[name] - theirs[name]
            for name in mine
            if mine[name] is not None and theirs.get(name) is not None
        }
        if not gaps:
            return None
        name = max(gaps, key=lambda n: abs(gaps[n]) if absolute else gaps[n])
        return name, gaps[name]


def _fraction(cells: Sequence[dict[str, Any]], reading: str) -> float | None:
    verdicts = [c[reading]["pass"] for c in cells if c.get(reading) is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def judge(result: BenchResult, analysis: Analysis) -> dict[str, Any]:
    """The ``headline`` of ``results.json``: per benchmarked policy, keyed by the controller
    judged, every cell of the held-out grid with its fair and strict verdicts (or why it was not
    run) and the pass fractions (over the cells judged); empty without a held-out scenario."""
    config = result.config
    scenarios = held_out(config.scenarios or ())
    if not scenarios:
        return {}
    fleet = config.fleet or REFERENCE_FLEET
    headline = {}
    for policy, judged in judged_policies(config.controllers).items():
        judge_ = Judge(analysis, config.controllers, judged)
        cells = [
            {
                "scenario": scenario,
                "fleet": fleet,
                **{reading: judge_.verdict(scenario, reading) for reading in TARGETS},
            }
            for scenario in scenarios
        ]
        not_run = [
            {k: v for k, v in cell.items() if k != "policy"}
            for cell in result.cells_not_run
            if cell["policy"] == policy
        ]
        headline[judged] = {
            "policy": policy,
            "judged_as_deployed": judged != policy,
            "cells": cells,
            "cells_not_run": not_run,
            **{f"pass_fraction_{reading}": _fraction(cells, reading) for reading in TARGETS},
            "targets": dict(TARGETS),
            "exhaustion_free_where_a_rival_is": all(
                c[r]["exhaustions"]["ok"] for c in cells for r in TARGETS if c[r] is not None
            ),
        }
    return headline


def fleet_label(fleet: str) -> str:
    """A fleet file as shown in the report (its name), the reference fleet as itself."""
    return fleet if fleet == REFERENCE_FLEET else Path(fleet).name


# ----------------------------------------------------------------------------------------------
# report.md


READINGS = """\
*Fair*: each baseline with one parameter set tuned over the policy's own training scenarios
(`NAME@fair`, `scripts/tune_baselines.py --fair`), the information the policy had. *Strict*:
each baseline tuned on the held-out scenario itself (on tuning seeds), which the policy never
saw. A cell passes when the policy spends less budget than the lowest-spending rival (95 %
interval of the paired IQM difference below zero) at no higher cost (the cost difference's
interval reaches zero or below)."""


def render_grid(document: dict[str, Any]) -> str:
    """The report's section on the held-out grid (empty without a judged policy)."""
    from eval.report import METRICS, PRIMARY, _show, _show_interval, _table

    spent, cost = METRICS[PRIMARY], METRICS["cost_gpu_hours"]
    smooth = METRICS["action_smoothness"]
    groups = document["analysis"]["groups"]
    parts = []
    for judged, section in document.get("headline", {}).items():
        rows = []
        for cell in section["cells"]:
            for reading in TARGETS:
                row = cell[reading]
                if row is None:
                    rows.append(
                        [cell["scenario"], fleet_label(cell["fleet"]), reading]
                        + ["no rival benchmarked"]
                        + [""] * 4
                    )
                    continue
                rows.append(
                    [
                        cell["scenario"],
                        fleet_label(cell["fleet"]),
                        reading,
                        row["best_baseline"],
                        f"{_show(row['policy_spent'], spent)} vs "
                        f"{_show(row['baseline_spent'], spent)}",
                        _show_interval(row["spent_difference"], spent),
                        _show_interval(row["cost_difference"], cost),
                        "pass" if row["pass"] else f"fail: {row['why']}",
                    ]
                )
        rows += [
            [
                c["scenario"],
                fleet_label(c["fleet"]),
                "-",
                "-",
                "-",
                "-",
                "-",
                f"not run: {c['reason']}",
            ]
            for c in section["cells_not_run"]
        ]
        header = ["scenario", "fleet", "reading", "best rival", "budget spent (%)"]
        header += ["difference (points)", "cost difference (GPU-h)", "verdict"]
        fractions = ", ".join(
            f"**{reading}** {_fraction_text(section[f'pass_fraction_{reading}'])} "
            f"(target {target:.0%})"
            for reading, target in TARGETS.items()
        )
        how = (
            "through the sidecar's default guardrails (max step, hysteresis, bounds), as deployed"
            if section["judged_as_deployed"]
            else "raw: its @sidecar controller was not benchmarked"
        )
        held = groups.get("held_out", {}).get("controllers", {})
        smoothness = ", ".join(
            f"{name} {_show_interval(held[name]['action_smoothness'], smooth)}"
            for name in dict.fromkeys([section["policy"], judged])
            if name in held
        )
        parts.append(
            f"## Held-out grid: {judged}\n\n{section['policy']} judged {how}, on every held-out "
            f"scenario x fleet, in two readings side by side. {READINGS}\n\n"
            + _table(header, rows)
            + f"\n\nPass fraction over the cells judged: {fractions}. "
            + f"{len(section['cells'])} cells run ({_judged(section['cells'])} with a rival to "
            + f"judge against), {len(section['cells_not_run'])} not run. "
            + "Budget exhaustion where a rival had none: "
            + ("none." if section["exhaustion_free_where_a_rival_is"] else "yes (see cells).")
            + (
                f" Action change per step on the held-out scenarios: {smoothness}."
                if smoothness
                else ""
            )
        )
    return "\n\n".join(parts)


def _judged(cells: Sequence[dict[str, Any]]) -> int:
    return sum(any(c.get(reading) is not None for reading in TARGETS) for c in cells)


def _fraction_text(value: float | None) -> str:
    return "unknown (no cell judged)" if value is None else f"{value:.2f}"
