"""The calibration report of a fitted fleet: simulated against observed latency histograms.

:func:`calibrate` simulates the fitted fleet file over as long as the fitted interval (after the
environments' warm-up) and compares its TTFT, ITL and E2E histograms with the engines' over the
interval, quantile by quantile (Prometheus's ``histogram_quantile`` interpolation on both
sides), the rate curves in the fleet file aligned with the interval (:func:`aligned`);
:func:`write_report` writes the comparison as a markdown table and a matplotlib plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.fit import ALL, FleetFit, histogram_increase
from envs.sim.config import RateCurveConfig, SimConfig
from envs.sim.simulator import Simulator, histogram_quantile
from slo.events import ITL_BUCKETS_S
from slo.metrics import MetricMapping
from slo.series import MetricsSource
from slo.sli import EventBatch, e2e_s, itl_gap_counts, ttft_s

#: The latency histograms compared, by metric mapping attribute.
SLIS = ("ttft", "itl", "e2e")
#: The quantiles compared.
QUANTILES = (0.5, 0.9, 0.99)
#: Simulated seconds before the compared interval: the fleet fills up (the twin's warm-up).
WARMUP_S = 600.0


@dataclass(frozen=True)
class Histogram:
    """Finite bucket bounds and per-bucket counts (the last one ``+Inf``)."""

    bounds: np.ndarray
    counts: np.ndarray

    def quantile(self, q: float) -> float | None:
        """``histogram_quantile(q)``; None without observations."""
        value = histogram_quantile(q, self.counts, self.bounds) if self.counts.sum() else math.nan
        return None if math.isnan(value) else value

    def cdf(self) -> np.ndarray:
        """The share of observations at or below each finite bound."""
        return np.cumsum(self.counts)[: len(self.bounds)] / max(self.counts.sum(), 1.0)


@dataclass(frozen=True)
class SLICalibration:
    """One latency SLI, observed and simulated."""

    sli: str
    metric: str
    observed: Histogram
    simulated: Histogram

    def rows(self) -> list[tuple[float, float | None, float | None, float | None]]:
        """``(quantile, observed, simulated, relative error)`` per compared quantile."""
        rows = []
        for q in QUANTILES:
            obs, sim = self.observed.quantile(q), self.simulated.quantile(q)
            error = None if obs is None or sim is None or obs == 0 else sim / obs - 1.0
            rows.append((q, obs, sim, error))
        return rows

    @property
    def error(self) -> float | None:
        """The largest relative error over the quantiles (None: not measurable)."""
        errors = [abs(e) for *_, e in self.rows() if e is not None]
        return max(errors) if errors else None


def calibrate(
    fit: FleetFit,
    source: MetricsSource,
    mapping: MetricMapping,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> list[SLICalibration]:
    """Simulate ``fit.config`` over the fitted interval and compare its latency histograms with
    the observed ones (SLIs the engines do not export are left out).

    ``progress`` is called with the simulated seconds done (warm-up included).
    """
    observed = {}
    for sli in SLIS:
        metric = getattr(mapping, sli)
        if metric is not None:
            bounds, counts, _ = histogram_increase(source, metric)
            if len(counts):
                observed[sli] = (metric, Histogram(bounds, counts))
    simulated = _simulate(fit, {sli: h.bounds for sli, (_, h) in observed.items()}, seed, progress)
    return [
        SLICalibration(sli, metric, histogram, simulated[sli])
        for sli, (metric, histogram) in observed.items()
    ]


def aligned(config: SimConfig, start_s: float) -> SimConfig:
    """``config`` with its rate curves (if any) starting at simulated time ``start_s``: the
    compared interval after a warm-up of ``start_s`` replays the fitted interval block for block
    (the warm-up sees the curve's last blocks, as the curve repeats).

    Parameters
    ----------
    config: a fitted fleet file.
    start_s: simulated seconds before the fitted interval.
    """
    return config.curves_starting_at(start_s)


def _simulate(
    fit: FleetFit,
    bounds: dict[str, np.ndarray],
    seed: int,
    progress: Callable[[float], None] | None,
) -> dict[str, Histogram]:
    """The fitted fleet's latency histograms over the interval: TTFT and E2E binned on the
    observed bounds, inter-token gaps on the simulator's (vLLM's) ITL buckets."""
    sim = Simulator(aligned(fit.config, WARMUP_S), seed=seed)
    end = WARMUP_S + (fit.end - fit.start)
    counts = {sli: np.zeros(len(b) + 1) for sli, b in bounds.items() if sli != "itl"}
    itl = np.zeros(len(ITL_BUCKETS_S) + 1)
    while sim.now < end:
        events = sim.advance(min(end, sim.now + 60.0))
        if progress is not None:
            progress(sim.now)
        batch = EventBatch(events[events["t_end"] >= WARMUP_S])
        for sli, measure in (("ttft", ttft_s), ("e2e", e2e_s)):
            if sli in counts:
                values = measure(batch)
                seen = values[~np.isnan(values) & (batch.column("tier") >= 0)]
                index = np.searchsorted(bounds[sli], seen, side="left")
                counts[sli] += np.bincount(index, minlength=len(bounds[sli]) + 1)
        itl += itl_gap_counts(batch).sum(axis=0)
    histograms = {sli: Histogram(bounds[sli], c) for sli, c in counts.items()}
    return histograms | {"itl": Histogram(np.asarray(ITL_BUCKETS_S), itl)}


# ---------------------------------------------------------------------------------------------
# The report


def write_report(
    fit: FleetFit, calibration: list[SLICalibration], markdown: Path, plot: Path
) -> None:
    """Write the calibration report: ``markdown`` (fit and comparison tables, notes) and
    ``plot`` (the rate curve and the observed and simulated latency CDFs)."""
    markdown.write_text(report_markdown(fit, calibration, plot.name))
    _plot(fit, calibration, plot)


def report_markdown(fit: FleetFit, calibration: list[SLICalibration], plot_name: str) -> str:
    """The calibration report as markdown."""
    curves = fit.rate_curves()
    lines = [
        "# Calibration of the fitted fleet",
        "",
        f"Fitted to {fit.source}, from {fit.start:.0f} to {fit.end:.0f} "
        f"({(fit.end - fit.start) / 60:.1f} min); simulated over as long after a "
        f"{WARMUP_S:.0f} s warm-up.",
        "",
        "| traffic | requests/s | rate curve written |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {rate:.3f} | {_curve_cell(curves.get(name))} |"
            for name, rate in fit.rates.items()
        ),
        f"| {ALL} | {fit.rate:.3f} | {_curve_cell(curves.get(ALL))} |",
        "",
        "| lengths | mean tokens | sigma (log) | from |",
        "| --- | --- | --- | --- |",
        *(
            f"| {which} | {f.mean:.1f} | {f.sigma:.2f} | {f.source} |"
            for which, f in fit.lengths.items()
        ),
        "",
        "| SLI | quantile | observed (s) | simulated (s) | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in calibration:
        for q, obs, sim, error in c.rows():
            lines.append(
                f"| {c.sli} | p{round(q * 100)} | {_figure(obs)} | {_figure(sim)} | "
                f"{'no data' if error is None else f'{error:+.1%}'} |"
            )
    lines += ["", "| SLI | metric | largest error |", "| --- | --- | --- |"]
    for c in calibration:
        error = "no data" if c.error is None else f"{c.error:.1%}"
        lines.append(f"| {c.sli} | `{c.metric}` | {error} |")
    lines += ["", "What the metrics could not tell, and what was used instead:", ""]
    lines += [f"- {note}" for note in fit.notes] or ["- nothing"]
    lines += ["", f"![observed and simulated]({plot_name})", ""]
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def _curve_cell(curve: RateCurveConfig | None) -> str:
    if curve is None:
        return "none"
    return (
        f"{min(curve.rates):.3g} to {max(curve.rates):.3g} requests/s, {len(curve.rates)} "
        f"blocks of {curve.step_s / 60:.3g} min"
    )


def _plot(fit: FleetFit, calibration: list[SLICalibration], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * (1 + len(calibration)), 3.6), layout="constrained")
    axes = figure.subplots(1, 1 + len(calibration), squeeze=False)[0]
    minutes = (fit.curve_times - fit.start) / 60.0
    for name, curve in fit.curve.items():
        axes[0].step(minutes, curve, where="pre", label=f"{name} observed")
        axes[0].axhline(fit.rates.get(name, 0.0), linestyle="--", linewidth=1)
    for name, blocks in fit.rate_curves().items():
        ends = blocks.step_s * np.arange(len(blocks.rates) + 1) / 60.0
        axes[0].stairs(blocks.rates, ends, baseline=None, label=f"fleet file ({name})", lw=1.5)
    axes[0].set(title="arrival rate", xlabel="minutes", ylabel="requests/s")
    axes[0].legend(fontsize="small")
    for ax, c in zip(axes[1:], calibration, strict=True):
        for label, histogram in (("observed", c.observed), ("simulated", c.simulated)):
            ax.step(histogram.bounds, histogram.cdf(), where="post", label=label)
        ax.set(title=c.sli.upper(), xlabel="seconds", ylabel="share at or below", xscale="log")
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=90)
