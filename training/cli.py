"""``budgetpilot`` subcommands of the ``training`` package: ``train`` and ``perf train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slo.cli import echo_figures

#: The bundled presets, found without importing the training stack (for --help).
_PRESETS = sorted(path.stem for path in (Path(__file__).parent / "presets").glob("*.yaml"))


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to ``perf``."""
    app.command("train")(train)

    @perf.command("train")
    def perf_train(
        timesteps: int = typer.Option(16384, help="PPO timesteps per trial.", min=1),
        preset: str = typer.Option(
            "quick", help="Preset whose environment and hyperparameters the trials run."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """PPO steps/s: one trial, two at once, one with two rollout workers; learn_over_sim.

        PPO steps/s of one Ray trial alone, of two at once (parallel efficiency) and of one
        trial with two rollout workers (rollout scaling, end to end and of the collection, with
        the bound the serial update sets), and one trial's steps per CPU-second over the raw
        simulator's (learn_over_sim)."""
        from training.perf import run

        try:
            figures = run(timesteps, preset)
        except ValueError as exc:  # PresetError too
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        echo_figures(figures, as_json)


def train(
    out: Annotated[Path, typer.Option(help="Run directory (runs/NAME).")],
    preset: Annotated[
        str, typer.Option(help=f"Preset name ({', '.join(_PRESETS)}) or YAML path.")
    ] = "quick",
    seeds: Annotated[int, typer.Option(help="Trials per configuration: seeds 0..N-1.", min=1)] = 1,
    search: Annotated[
        int, typer.Option(help="Hyperparameter samples from the preset's space (ASHA).", min=0)
    ] = 0,
    timesteps: Annotated[
        int | None, typer.Option(help="Override the preset's timesteps per trial.", min=1)
    ] = None,
    chunk_timesteps: Annotated[
        int | None, typer.Option(help="Override the timesteps between checkpoints.", min=1)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Override the preset's rollout workers: CPUs per trial, on one node, the "
            "environments stepping in parallel processes.",
            min=1,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted run in --out, with the preset, seeds, timesteps and "
            "workers it was started with (read from its train.json; those flags are ignored).",
        ),
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Tune storage root (shared on a cluster); default: --out.")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of a local Ray (default: all).", min=1)
    ] = None,
) -> None:
    """Train PPO policies with Ray Tune, one trial per (configuration, seed).

    Every trial writes a checkpoint per chunk and TensorBoard logs; --resume continues an
    interrupted run. Ends with a summary table; OUT/summary.json records every trial and OUT/best
    points at the best trial's last checkpoint.
    """
    from training.config import PresetError, load_preset
    from training.run import TrainingError, TrainRequest, run_training

    try:
        spec = load_preset(preset).with_overrides(
            timesteps=timesteps, chunk_timesteps=chunk_timesteps, workers=workers
        )
        request = TrainRequest(spec, list(range(seeds)), out, storage, search)
        summary = run_training(request, resume=resume, address=address, num_cpus=num_cpus)
    except (PresetError, TrainingError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print_summary(summary, out)
    if any(t.error for t in summary.trials):
        raise typer.Exit(1)


def _print_summary(summary, out: Path) -> None:
    """Per trial: steps, mean episode reward, budget exhaustions per episode."""
    from rich.console import Console
    from rich.table import Table

    def number(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(title=f"{summary.preset}: {summary.experiment}")
    table.add_column("trial", no_wrap=True)
    for column in ("seed", "steps", "ep reward", "exhaust/ep"):
        table.add_column(column, justify="right")
    table.add_column("status")
    for t in summary.trials:
        best = " (best)" if t.trial == summary.best_trial else ""
        table.add_row(
            t.trial,
            str(t.seed),
            str(t.steps),
            number(t.mean_episode_reward, ".2f"),
            number(t.budget_exhaustions_per_episode, ".3f"),
            ("error" if t.error else "ok") + best,
        )
    console = Console()
    console.print(table)
    if summary.best_checkpoint:
        console.print(f"best: {out / 'best'} -> {summary.best_checkpoint}")
