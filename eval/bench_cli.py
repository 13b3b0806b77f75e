"""``budgetpilot bench`` (every controller on every scenario over evaluation seeds, reported) and
``budgetpilot perf sidecar``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slo.cli import positive

if TYPE_CHECKING:
    from envs.scenarios import TraceTraffic
    from eval.on_demand import TuningBudget

#: ``--quick``: fewer seeds and shorter episodes (within 5 minutes on 2 cores).
QUICK_SEEDS = 3
QUICK_EPISODE_HOURS = 0.5
QUICK_BOOTSTRAP_REPS = 2_000
DEFAULT_SEEDS = 10
#: Tuning on demand (``--tune``): training seeds and episode hours per candidate, as the shipped
#: parameters were tuned (agents/tuned), and with ``--quick``.
TUNING_SEEDS = 2
TUNING_HOURS = 1.0
QUICK_TUNING_SEEDS = 1
#: ``--quick`` tunes this many candidates of each grid, evenly spaced over it ("quick-tuned"): a
#: first benchmark on a new fleet within 3 minutes.
QUICK_TUNING_CANDIDATES = 8


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add ``bench`` to the root app and the sidecar's benchmark to ``perf``."""
    app.command("bench")(bench)
    perf.command("sidecar")(perf_sidecar)


def perf_sidecar(
    endpoints: Annotated[int, typer.Option(help="Engine endpoints scraped per cycle.", min=1)] = 64,
    cycles: Annotated[int, typer.Option(help="Cycles timed.", min=1)] = 40,
    decisions: Annotated[int, typer.Option(help="Decisions timed.", min=1)] = 3000,
    policy: Annotated[
        Path | None, typer.Option(help="Policy to time (default: a linear stand-in).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Sidecar decision latency (p99), 64-endpoint cycle time, peak RSS and start-up time."""
    from eval.perf_sidecar import run
    from slo.cli import echo_figures

    echo_figures(run(endpoints, cycles, decisions, policy), as_json)


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated options and comma-separated lists alike."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _trace_traffic(
    trace: Path | None, load: float | None, columns: str | None, time_scale: float
) -> TraceTraffic | None:
    """The user's trace of ``bench --trace`` (``None`` without one); ValueError on options that
    do not fit."""
    from envs.scenarios import TraceTraffic
    from envs.sim.workload import TRACE_COLUMNS

    if trace is None:
        if load is not None:
            raise ValueError("--load sets the load of --trace: give a trace")
        return None
    names = TRACE_COLUMNS if columns is None else tuple(c.strip() for c in columns.split(","))
    if len(names) != 3 or not all(names):
        raise ValueError(
            f"--trace-columns: give the timestamp, prompt-token and output-token columns, got "
            f"{columns!r}"
        )
    if not time_scale > 0:
        raise ValueError(f"--time-scale must be > 0, got {time_scale}")
    return TraceTraffic(str(trace), names, time_scale, load)  # type: ignore[arg-type]


def tuning_budget(quick: bool, episode_hours: float | None, warmup_s: float) -> TuningBudget:
    """How ``bench --tune`` tunes a baseline it has no parameters for: on episodes as long as
    the benchmark's when it sets their length."""
    from eval.on_demand import TuningBudget

    if quick:
        hours = episode_hours or QUICK_EPISODE_HOURS
        return TuningBudget(QUICK_TUNING_SEEDS, hours, warmup_s, QUICK_TUNING_CANDIDATES)
    return TuningBudget(TUNING_SEEDS, episode_hours or TUNING_HOURS, warmup_s)


def bench(
    policies: Annotated[
        list[str] | None,
        typer.Option(
            help="Controllers: baselines, policies of policies/zoo (file stem) or .onnx paths; "
            "repeat or comma-separate. Default: every zoo policy and baseline that can govern "
            "all the scenarios (elastic scenarios add the autoscalers, drop fixed-fleet policies)."
        ),
    ] = None,
    scenarios: Annotated[
        list[str] | None,
        typer.Option(
            help="Scenarios or groups (in-distribution, held-out, elastic); repeat or "
            "comma-separate. Default: every fixed-fleet scenario whose data is present."
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            help=f"Evaluation seeds 0..N-1 (default {DEFAULT_SEEDS}, --quick {QUICK_SEEDS}).",
            min=1,
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"{QUICK_SEEDS} seeds, {QUICK_EPISODE_HOURS} h episodes, "
            f"{QUICK_BOOTSTRAP_REPS} bootstrap replicates.",
        ),
    ] = False,
    episode_hours: Annotated[
        float | None,
        typer.Option(
            help="Simulated hours per episode (default: the scenario's own, 2 h unless it says; "
            f"--quick {QUICK_EPISODE_HOURS}).",
            callback=positive,
        ),
    ] = None,
    warmup_s: Annotated[
        float, typer.Option(help="Warm-up seconds before each episode.", min=0)
    ] = 600.0,
    out: Annotated[
        Path | None,
        typer.Option(help="Report directory (default bench-out/full, --quick bench-out/quick)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: a local Ray).")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray (default: all).", min=1)
    ] = None,
    no_ray: Annotated[
        bool, typer.Option("--no-ray", help="Run serially in this process (same results).")
    ] = False,
    tuned_dir: Annotated[
        Path | None,
        typer.Option(
            help="Tuned baseline parameters (default agents/tuned; with --fleet, none: --tune "
            "tunes them, or `budgetpilot tune --fleet` into this folder)."
        ),
    ] = None,
    fleet: Annotated[
        Path | None,
        typer.Option(
            help="Fleet file to govern instead of the reference fleet (examples/fleets/); "
            "policies run only if their contract is this fleet's."
        ),
    ] = None,
    grid_fleets: Annotated[
        list[Path] | None,
        typer.Option(
            "--grid-fleet",
            help="Fleet files of the held-out grid besides the one benchmarked; repeat. "
            "Default: examples/fleets. Their cells are listed with why they were not run.",
        ),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            help="Tune baselines without tuned parameters for this fleet or trace now, in "
            f"parallel on Ray (every candidate on {TUNING_SEEDS} training seeds of "
            f"{TUNING_HOURS:g} h; --quick: quick-tuned, {QUICK_TUNING_CANDIDATES} candidates "
            f"spread over each grid on {QUICK_TUNING_SEEDS} of {QUICK_EPISODE_HOURS:g} h; or of "
            "--episode-hours), cached for the next benchmark; --no-tune: run them with their "
            "defaults."
        ),
    ] = True,
    trace: Annotated[
        Path | None,
        typer.Option(
            help="Also judge the controllers on this trace (CSV) replayed on the fleet: the "
            "only scenario unless --scenarios names others; never in a default or held-out set.",
        ),
    ] = None,
    load: Annotated[
        float | None,
        typer.Option(
            help="Replay --trace at this multiple of the fleet's capacity for the trace's "
            "lengths (default: the load the trace carries).",
            callback=positive,
        ),
    ] = None,
    trace_columns: Annotated[
        str | None,
        typer.Option(
            help="The trace's timestamp, prompt-token and output-token columns, comma-separated "
            "(default: the Azure trace format's TIMESTAMP,ContextTokens,GeneratedTokens)."
        ),
    ] = None,
    time_scale: Annotated[
        float,
        typer.Option(
            help="Factor on the trace's times into seconds (0.001: milliseconds).",
            callback=positive,
        ),
    ] = 1.0,
    bootstrap_reps: Annotated[
        int | None, typer.Option(help="Bootstrap replicates (default 10000, --quick 2000).", min=1)
    ] = None,
    bootstrap_seed: Annotated[int, typer.Option(help="Seed of every bootstrap.", min=0)] = 0,
    frontier_seeds: Annotated[
        int | None,
        typer.Option(
            help="Beside an elastic policy, sweep every autoscaler's main target on this many "
            "of the first seeds (default 5; 0: no frontiers).",
            min=0,
        ),
    ] = None,
) -> None:
    """Benchmark learned policies against tuned baselines; write report.md, results.json, plots.

    Runs every controller on every scenario for seeds 0..N-1 (tuning uses 1000 and up) in
    parallel on Ray, then reports IQMs with stratified-bootstrap intervals, probabilities of
    improvement, performance profiles and the headline test on the held-out scenarios.
    """
    from rich.console import Console

    from eval.bench import (
        TUNED_DIR,
        BenchConfig,
        expand_scenarios,
        resolve_controllers,
        run_bench,
        user_trace_scenario,
    )
    from eval.headline import EXAMPLE_FLEETS
    from eval.report import write_report
    from slo.progress import ProgressReport

    console = Console(stderr=True)
    try:
        traffic = _trace_traffic(trace, load, trace_columns, time_scale)
        fleet_file = None if fleet is None else str(fleet)
        chosen = _names(scenarios)
        chosen = expand_scenarios(chosen) if chosen else None
        if traffic is not None:
            chosen = [*(chosen or ()), user_trace_scenario(traffic, fleet_file)]
        config = BenchConfig(
            controllers=resolve_controllers(_names(policies), scenarios=chosen, fleet=fleet_file),
            scenarios=chosen,
            seeds=tuple(range(seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS))),
            episode_hours=episode_hours or (QUICK_EPISODE_HOURS if quick else None),
            warmup_s=warmup_s,
            tuned_dir=tuned_dir or (TUNED_DIR if fleet is None else None),
            bootstrap_reps=bootstrap_reps or (QUICK_BOOTSTRAP_REPS if quick else 10_000),
            bootstrap_seed=bootstrap_seed,
            fleet=fleet_file,
            **({} if frontier_seeds is None else {"frontier_seeds": frontier_seeds}),
            grid_fleets=tuple(map(str, grid_fleets)) if grid_fleets else EXAMPLE_FLEETS,
            trace=traffic,
            tuning=tuning_budget(quick, episode_hours, warmup_s) if tune else None,
        )
        with ProgressReport("benchmark runs") as report:
            result = run_bench(
                config,
                use_ray=not no_ray,
                address=address,
                num_cpus=num_cpus,
                progress=lambda done, total: report.update(done, total, "benchmark runs"),
                tuning_progress=lambda what, done, total: report.update(done, total, what),
            )
    except ValueError as exc:  # also PolicyFileError, ConfigError: a bad policy or fleet file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    report = write_report(result, out or Path("bench-out") / ("quick" if quick else "full"))
    typer.echo(f"{len(result.runs)} runs in {result.wall_time_s:.0f} s; report: {report}")
