"""``budgetpilot fit``: a fleet file fitted to a real fleet's metrics, with its calibration."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from envs.twin_cli import fail
from slo.cli import positive

if TYPE_CHECKING:
    from envs.fit import FitOptions, FleetFit
    from envs.fit_report import SLICalibration
    from slo.series import MetricsSource


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add the ``fit`` command to the root app."""
    app.command("fit")(fit)


def parse_time(value: str, option: str) -> float:
    """Unix seconds or an RFC 3339 / ISO 8601 date-time with its offset, as Unix seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = _date_time(value, option)
    if not math.isfinite(seconds):
        raise ValueError(f"{option}: not a finite time: {value!r}")
    return seconds


def _date_time(value: str, option: str) -> float:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{option}: expected Unix seconds or a date-time such as 2026-12-07T05:00:00Z, "
            f"got {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{option}: give the date-time's offset (Z or +HH:MM): {value!r}")
    return moment.timestamp()


def fit(
    out: Annotated[Path, typer.Option("-o", "--out", help="Fleet file to write (YAML).")],
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus base URL to read the fleet's metrics from.")
    ] = None,
    scrapes: Annotated[
        Path | None,
        typer.Option(
            help="Directory of saved scrapes instead: one file per scrape of the fleet named by "
            "its Unix time (1765000000.prom), series with their target labels (as /federate)."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="Start of the interval: Unix seconds or RFC 3339 (with --prometheus)."),
    ] = None,
    end: Annotated[str | None, typer.Option(help="End of the interval (same forms).")] = None,
    step: Annotated[
        float, typer.Option(help="Seconds between samples read from Prometheus.", callback=positive)
    ] = 15.0,
    mapping: Annotated[
        str, typer.Option(help="Metric names of the engines: built-in mapping or YAML file.")
    ] = "vllm",
    pool_label: Annotated[str, typer.Option(help="Label naming a replica's pool.")] = "pool",
    replica_label: Annotated[
        str | None,
        typer.Option(
            help="Label naming a replica.", show_default="the first of pod, replica, instance"
        ),
    ] = None,
    tenant_label: Annotated[
        str, typer.Option(help="Label naming a tenant on the request counters, if any.")
    ] = "tenant",
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="MODEL_LABEL=CATALOG_MODEL_OR_CONFIG_JSON for a served model the catalog does "
            "not know by its label (repeatable)."
        ),
    ] = None,
    gpu: Annotated[
        str, typer.Option(help="Accelerator of the pools (metrics do not name it).")
    ] = "a100-80gb",
    report: Annotated[
        Path | None,
        typer.Option(
            help="Calibration report (markdown; the plot beside it as .png).",
            show_default="OUT with .calibration.md",
        ),
    ] = None,
    calibrate: Annotated[
        bool, typer.Option(help="Simulate the fitted fleet and write the calibration report.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the calibration's simulation.", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Fit a fleet file to a real fleet's metrics: traffic, lengths, pools and replicas.

    Reads the engines' counters over [--start, --end] from Prometheus (--prometheus URL) or from
    a directory of saved scrapes (--scrapes DIR): the arrival rate per model (and tenant) from
    the finished-request counters, prompt and output length distributions from the length
    histograms, pools and replicas from the series' labels. Writes the fleet file (-o) and a
    calibration report: the fitted fleet simulated over as long, its TTFT, ITL and E2E
    quantiles against the observed ones. What the metrics cannot tell is listed with what was
    used instead.
    """
    from envs.fit import FitError, FitOptions, fit_fleet, parse_model_options
    from slo.metrics import load_mapping
    from slo.series import SourceError

    try:
        source = _source(prometheus, scrapes, start, end, step)
        options = FitOptions(
            mapping=load_mapping(mapping),
            pool_label=pool_label,
            replica_label=replica_label,
            tenant_label=tenant_label,
            models=parse_model_options(model or []),
            gpu=gpu,
        )
        fitted = fit_fleet(source, options)
    except (FitError, SourceError, ValueError, OSError) as exc:
        fail(str(exc))
    _write_fleet(fitted, out)
    calibration = None
    if calibrate:
        calibration = _calibrate(fitted, source, options, seed, out, report)
    _echo(fitted, calibration, out, as_json)


def _source(
    prometheus: str | None, scrapes: Path | None, start: str | None, end: str | None, step: float
) -> MetricsSource:
    from slo.series import PrometheusSource, ScrapesSource

    if (prometheus is None) == (scrapes is None):
        raise ValueError("give --prometheus URL or --scrapes DIR (one of them)")
    t0 = None if start is None else parse_time(start, "--start")
    t1 = None if end is None else parse_time(end, "--end")
    if scrapes is not None:
        return ScrapesSource(scrapes, t0, t1)
    if t0 is None or t1 is None:
        raise ValueError("--prometheus needs the interval: --start T0 --end T1")
    return PrometheusSource(prometheus, t0, t1, step)


def _write_fleet(fitted: FleetFit, out: Path) -> None:
    import yaml

    document = fitted.config.model_dump(exclude_unset=True)  # token counts as numbers
    header = "".join(f"# {note}\n" for note in ["Written by budgetpilot fit.", *fitted.notes])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(document, sort_keys=False))


def _calibrate(
    fitted: FleetFit,
    source: MetricsSource,
    options: FitOptions,
    seed: int,
    out: Path,
    report: Path | None,
) -> list[SLICalibration]:
    from envs.fit_report import WARMUP_S, calibrate, write_report
    from slo.progress import ProgressReport

    total = WARMUP_S + fitted.end - fitted.start
    with ProgressReport("simulating the fitted fleet", total, unit="simulated s") as progress:
        calibration = calibrate(fitted, source, options.mapping, seed, progress.update)
    markdown = report or out.with_suffix(".calibration.md")
    write_report(fitted, calibration, markdown, markdown.with_suffix(".png"))
    return calibration


def _echo(
    fitted: FleetFit, calibration: list[SLICalibration] | None, out: Path, as_json: bool
) -> None:
    figures: dict[str, Any] = {
        "fleet": str(out),
        "rate_rps": round(fitted.rate, 4),
        "rates_rps": {name: round(rate, 4) for name, rate in fitted.rates.items()},
        "rate_curves": sorted(fitted.rate_curves()),
        "prompt_tokens_mean": round(fitted.lengths["prompt"].mean, 1),
        "output_tokens_mean": round(fitted.lengths["output"].mean, 1),
        "pools": {p.name: p.replicas for p in fitted.config.pools},
        "notes": fitted.notes,
    }
    for c in calibration or []:
        for q, obs, sim, error in c.rows():
            name = f"{c.sli}_p{round(q * 100)}"
            figures[f"{name}_observed_s"] = obs
            figures[f"{name}_simulated_s"] = sim
            figures[f"{name}_error"] = None if error is None else round(error, 4)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    typer.echo(f"wrote {out}: {fitted.rate:.3f} requests/s, pools {figures['pools']}")
    for note in fitted.notes:
        typer.echo(f"  note: {note}")
    for c in calibration or []:
        error = "no data" if c.error is None else f"{c.error:.1%}"
        typer.echo(f"  {c.sli}: largest quantile error {error}")
