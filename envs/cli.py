"""``budgetpilot`` subcommands of the ``envs`` package."""

from __future__ import annotations

import typer


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to perf."""
