"""``budgetpilot`` subcommands of ``slo``: ``slo check``, ``slo rules`` and ``perf slo``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

MAPPING_HELP = (
    "Engine metric names: vllm, vllm-legacy, sglang, sglang-legacy, llamacpp, tgi or a YAML file."
)
SpecArgument = Annotated[Path, typer.Argument(help="The spec file (Sloth or OpenSLO YAML).")]
MappingOption = Annotated[str, typer.Option(help=MAPPING_HELP)]


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to perf."""
    slo_app = typer.Typer(
        help="SLO specs (Sloth prometheus/v1 or OpenSLO v1): validate, generate Prometheus rules.",
        no_args_is_help=True,
    )
    slo_app.command("check")(check)
    slo_app.command("rules")(rules)
    slo_app.command("dashboard")(dashboard)
    app.add_typer(slo_app, name="slo")
    perf.command("slo")(perf_slo)


def check(spec: SpecArgument, mapping: MappingOption = "vllm") -> None:
    """Validate a spec and print its SLOs; exit 1 with the problem on a bad spec."""
    from rich.console import Console
    from rich.table import Table

    from slo.metrics import metric_source
    from slo.spec import describe_sli, format_duration

    loaded, names = _load(spec), _mapping(mapping)
    table = Table(title=f"{loaded.service}: {len(loaded.slos)} SLOs ({spec})")
    for column in ("SLO", "dimension", "SLI", "objective", "period", "from metrics", "alerts"):
        table.add_column(column)
    for slo in loaded.slos:
        table.add_row(
            slo.name,
            slo.dimension_name,
            describe_sli(slo),
            f"{slo.objective * 100:g}%",
            format_duration(loaded.period_of(slo)),
            _source_text(metric_source(slo, loaded, names))
            if slo.sli.llm
            else "PromQL (rules only)",
            _alerts_text(slo),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: do not squeeze the table into 80 columns
    console.print(table)
    engine = len(loaded.engine_slos)
    typer.echo(f"OK: {engine} SLOs computed by the engine, {len(loaded.slos) - engine} rules only.")


def rules(
    spec: SpecArgument,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Rule file (default: stdout).")
    ] = None,
    mapping: MappingOption = "vllm",
    prometheus_rule: Annotated[
        str | None,
        typer.Option(help="Write them as a prometheus-operator PrometheusRule of this name."),
    ] = None,
) -> None:
    """Write Prometheus recording and alerting rules (Sloth's names) for a spec."""
    from slo.rules import render_rules

    text, warnings = render_rules(_load(spec), _mapping(mapping), prometheus_rule=prometheus_rule)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


def dashboard(
    spec: SpecArgument,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Dashboard JSON (default: stdout).")
    ] = None,
) -> None:
    """Write a Grafana dashboard of a spec's budgets and the sidecar's decisions.

    Per SLO: its burn rates by window, budget remaining and alert; the sidecar's decisions (mode,
    knobs, guardrail interventions, latency). It reads the series of `slo rules` and of the
    sidecar's /metrics."""
    from slo.dashboard import build_dashboard

    model = build_dashboard(_load(spec))
    text = json.dumps(model, indent=1) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


def perf_slo(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    events: Annotated[int, typer.Option(help="Events to ingest.", min=1)] = 2_097_152,
    batch: Annotated[int, typer.Option(help="Events per ingest_events call.", min=1)] = 8192,
) -> None:
    """Error-budget engine: batch ingestion (events/s) and full burn-rate query time (us)."""
    from slo.perf import benchmark

    echo_figures(benchmark(n_events=events, batch_events=batch), as_json)


def echo_figures(figures: Mapping[str, Any], as_json: bool) -> None:
    """Print a benchmark's figures: one JSON object with ``--json`` (what scripts read), else
    one aligned ``name value`` line each. Every ``budgetpilot perf`` command prints this way."""
    if as_json:
        typer.echo(json.dumps(figures))
        return
    width = max((len(key) for key in figures), default=0) + 2
    for key, value in figures.items():
        text = str(value)
        if isinstance(value, float):
            text = f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
        typer.echo(f"{key:{width}s}{text}")


def positive(value: float | None) -> float | None:
    """Option callback that refuses a value not above zero (typer's ``min`` admits its bound)."""
    if value is not None and not value > 0:  # also NaN
        raise typer.BadParameter(f"must be above 0, got {value:g}")
    return value


def _load(path: Path):
    from slo.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


def _mapping(name: str):
    from slo.metrics import load_mapping

    try:
        return load_mapping(name)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


def _source_text(source) -> str:
    if source.kind == "histogram":
        return f"{source.metric} le={source.threshold}"
    if source.kind == "request_success":
        return f'{source.metric}{{finished_reason="length"}}'
    return source.metric


def _alerts_text(slo) -> str:
    if slo.alerting is None or not slo.alerting.name:
        return "-"
    enabled = [s for s in ("page", "ticket") if not getattr(slo.alerting, f"{s}_alert").disable]
    return "+".join(enabled) or "-"
