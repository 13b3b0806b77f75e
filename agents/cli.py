"""``budgetpilot`` subcommands of the ``agents`` package."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's benchmarks to ``perf``."""

    @perf.command("env")
    def perf_env(
        scenario: str = typer.Option("steady", help="Scenario to step."),
        steps: int = typer.Option(400, help="Environment steps timed."),
        ppo_timesteps: int = typer.Option(8192, help="PPO timesteps timed on each environment."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Environment steps/s, overhead over the raw simulator, PPO throughput vs CartPole."""
        from agents.perf import run

        figures = run(scenario, steps, ppo_timesteps)
        if as_json:
            typer.echo(json.dumps(figures))
        else:
            for key, value in figures.items():
                typer.echo(f"{key:28s} {value}")
