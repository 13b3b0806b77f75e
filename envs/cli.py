"""``budgetpilot`` subcommands of the ``envs`` package: ``simulate`` and ``perf sim``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slo.cli import echo_figures, positive

_WORKLOADS = ("poisson", "bursty", "mmpp", "diurnal", "flash-crowd", "azure-conv", "azure-code",
              "trace")  # fmt: skip


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to perf."""
    app.command("simulate")(simulate)
    perf.command("sim")(perf_sim)


def simulate(
    workload: Annotated[
        str | None,
        typer.Option(help=f"Request source: {', '.join(_WORKLOADS)}.", show_default="poisson"),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Mean requests/s. Default: the reference rate scaled to the replicas (synthetic "
            "workloads), the trace's own rate (replays).",
            callback=positive,
        ),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(help="Replicas of the pool.", min=1, show_default="8")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model.", show_default="llama-2-7b")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU.", show_default="a100-80gb")] = None,
    tp: Annotated[
        int | None, typer.Option(help="Tensor-parallel degree.", min=1, show_default="1")
    ] = None,
    hours: Annotated[float, typer.Option(help="Simulated hours.", callback=positive)] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.", min=0)] = 0,
    trace: Annotated[
        Path | None, typer.Option(help="Trace CSV (Azure format) for --workload trace.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--fleet",
            "--config",
            help="Fleet file (pools, router, tenants, traffic...; examples/fleets/); replaces "
            "the pool flags.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    capacity: Annotated[
        bool,
        typer.Option(
            "--capacity",
            help="Print the fleet's capacity per pool role instead of simulating (requests/s "
            "saturated, measured and cached: the sidecar's fleet_capacity).",
        ),
    ] = False,
) -> None:
    """Simulate a fleet serving a workload and print latency, throughput and KV figures.

    Without options: the reference workload (8 x Llama-2-7B on A100-80GB, Poisson arrivals at
    ~80% of capacity, Azure-conversation lengths) for one simulated hour.
    """
    from envs.sim.config import ConfigError

    try:
        sim_config = _simulate_config(workload, rate, replicas, model, gpu, tp, trace, config)
        summary = _role_capacity(sim_config) if capacity else _run(sim_config, hours, seed)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_table(summary)


def _simulate_config(workload, rate, replicas, model, gpu, tp, trace, config):
    """The SimConfig that the ``simulate`` options describe."""
    from envs.sim.config import (
        REFERENCE_RATE,
        REFERENCE_REPLICAS,
        SimConfig,
        WorkloadConfig,
        validated,
    )

    pool_flags = {"replicas": replicas, "model": model, "gpu": gpu, "tp": tp}
    given = {k: v for k, v in pool_flags.items() if v is not None}
    if config is not None:
        if given:
            raise ValueError(f"--fleet describes the pools: drop --{', --'.join(given)}")
        base = SimConfig.from_yaml(config)
        if workload is None and rate is None and trace is None:
            return base  # the file's own workload
    else:
        base = SimConfig.from_dict({"pools": [given]}, source="command-line options")
    kind = workload or ("trace" if trace else "poisson")
    if rate is None and kind not in ("azure-conv", "azure-code", "trace"):
        strong = sum(p.replicas for p in base.pools if p.tier == 0)
        rate = REFERENCE_RATE * strong / REFERENCE_REPLICAS
    spec = {"kind": kind, "rate": rate, "trace": str(trace) if trace else None}
    source = validated(WorkloadConfig, spec, "workload options")
    return base.model_copy(update={"workload": source})


def _role_capacity(config) -> dict:
    """Requests/s each pool role of the fleet serves saturated (roles it lacks left out), as
    the sidecar's ``fleet_capacity`` takes them."""
    from rich.console import Console

    from envs.contract import ROLES
    from envs.scenarios import GovernedFleet

    with Console(stderr=True).status("measuring the fleet's capacity per role (cached)"):
        rps = GovernedFleet.from_config(config).role_capacity_rps
    return {role: value for role, value in zip(ROLES, rps, strict=True) if value > 0}


def _run(config, hours: float, seed: int) -> dict:
    """Run the simulation, reporting its progress on stderr."""
    from envs.sim.simulator import Simulator
    from slo.progress import ProgressReport

    if config.workload.load is not None:
        from rich.console import Console

        from envs.sim.capacity import with_load_resolved

        with Console(stderr=True).status("measuring the fleet's capacity (cached)"):
            config = with_load_resolved(config)
    with ProgressReport("simulating", hours * 3600.0, unit="simulated s") as report:
        sim = Simulator(config, seed=seed)  # compiles the simulator on a first run
        return sim.run(hours, progress=report.update)


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Fleet simulation")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, "-" if value is None else text)
    Console().print(table)


def perf_sim(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Simulator speed, its scaling with load and the step-time model's error.

    Speed on the reference workload (1 h, one core, compile excluded), its cost at 4x and 16x
    load, and the step-time model's error against real measurements."""
    from envs.sim.perf import benchmark

    echo_figures(benchmark(), as_json)
