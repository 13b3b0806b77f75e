"""``budgetpilot`` subcommands of the ``agents`` package: ``tune`` and ``perf env``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agents.baseline_names import BASELINE_NAMES
from slo.cli import echo_figures, positive


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to ``perf``."""
    app.command("tune")(tune)

    @perf.command("env")
    def perf_env(
        scenario: str = typer.Option("steady", help="Scenario to step."),
        steps: int = typer.Option(200, help="Environment steps timed per round.", min=1),
        rounds: int = typer.Option(5, help="Rounds; each figure is the fastest.", min=1),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Environment steps/s: its overhead over the simulator, and fleets of 3 to 64 replicas.

        Environment steps per CPU-second, its overhead over the raw simulator, and steps per
        CPU-second of 3-, 16- and 64-replica fleets (fastest of interleaved rounds)."""
        from agents.perf import run

        echo_figures(run(scenario, steps, rounds), as_json)


def tune(
    baseline: Annotated[str, typer.Argument(help=f"Baseline: {', '.join(BASELINE_NAMES)}.")],
    scenario: Annotated[str, typer.Option(help="Scenario to tune on.")] = "steady",
    seeds: Annotated[
        int, typer.Option(help="Training seeds (1000, 1001, ...) per candidate.", min=1)
    ] = 3,
    episode_hours: Annotated[
        float | None,
        typer.Option(
            help="Simulated hours per episode.",
            callback=positive,
            show_default="the scenario's, else 2",
        ),
    ] = None,
    warmup_s: Annotated[
        float, typer.Option(help="Warm-up seconds before each episode.", min=0)
    ] = 600.0,
    max_candidates: Annotated[
        int | None, typer.Option(help="Score only the first candidates of the grid.", min=1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON to this file.")] = None,
    fleet: Annotated[
        Path | None,
        typer.Option(help="Fleet file to tune on instead of the reference fleet."),
    ] = None,
) -> None:
    """Grid-search a baseline's parameters on one scenario, on training seeds 1000 and up.

    Evaluate the tuned baseline on other seeds (below 1000); --out writes the best parameters
    and every candidate's score for the benchmark to load.
    """
    from agents.tuning import tune as run_tune
    from agents.tuning import tuning_seeds
    from slo.progress import ProgressReport

    try:
        with ProgressReport(f"tuning {baseline} on {scenario}: episodes") as report:
            result = run_tune(
                baseline,
                scenario,
                tuning_seeds(seeds),
                episode_hours=episode_hours,
                warmup_s=warmup_s,
                max_candidates=max_candidates,
                progress=report.update,
                fleet=None if fleet is None else str(fleet),
            )
    except ValueError as exc:  # also ConfigError: a bad fleet file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = result.to_dict()
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary)


def _print_summary(summary: dict) -> None:
    """Best parameters, then the five best candidates."""
    typer.echo(f"{summary['baseline']} on {summary['scenario']}, seeds {summary['seeds']}")
    typer.echo(f"best mean return {summary['best_mean_return']:.3f}: {summary['best_params']}")
    ranked = sorted(summary["candidates"], key=lambda c: c["mean_return"], reverse=True)
    for candidate in ranked[:5]:
        typer.echo(f"  {candidate['mean_return']:10.3f}  {candidate['params']}")
