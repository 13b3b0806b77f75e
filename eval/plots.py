"""The benchmark's plots, drawn from the ``results.json`` document with matplotlib (Agg).

Per scenario (the traced seed, every controller): burn-rate timelines per SLO with the page
threshold, budget remaining over time, knob traces. Across scenarios: IQM cost against IQM
budget spent, and the performance profiles of budget spent per scenario group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench import GROUPS, TIMELINE_WINDOW
from slo.durations import parse_duration
from slo.spec import ServiceSpec

DPI = 90
#: Burn rates are drawn on a log axis from here (a burn rate of 0 sits on the floor).
MIN_BURN = 0.01


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def page_thresholds(spec: ServiceSpec, window: str = TIMELINE_WINDOW) -> dict[str, float]:
    """SLO name -> the burn rate of its page condition whose long window is ``window`` (SLOs
    whose page alert is disabled, or without such a condition, are left out)."""
    seconds = parse_duration(window)
    rates = [c.burn_rate for c in spec.budgetpilot.alert_windows.page if c.long == seconds]
    if not rates:
        return {}
    return {
        slo.name: rates[0]
        for slo in spec.engine_slos
        if slo.alerting is None or not slo.alerting.page_alert.disable
    }


def _colors(controllers: Sequence[str]) -> dict[str, Any]:
    cmap = _pyplot().get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(controllers)}


def _grid(
    n: int, columns: int = 2, height: float = 2.0, sharex: bool = True
) -> tuple[Any, np.ndarray]:
    rows = int(np.ceil(n / columns))
    fig, axes = _pyplot().subplots(
        rows, columns, figsize=(5.2 * columns, height * rows + 0.8), sharex=sharex, squeeze=False
    )
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _header(fig: Any, title: str, handles: list, labels: list[str]) -> None:
    """A title and, below it, the controllers' legend, above the panels."""
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 1.0 - 0.3 / fig.get_figheight()),
        ncol=min(8, len(labels)),  # one row for the default benchmark's controllers
        fontsize=8,
        frameon=False,
    )


def _save(fig: Any, path: Path, header: bool = True) -> str:
    # Fixed margins in inches (tight_layout costs seconds per figure): room for the title and
    # the legend above the panels, tick labels at the left and the axis label below.
    width, height = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(
        left=0.75 / width,
        right=1.0 - 0.15 / width,
        bottom=0.5 / height,
        top=1.0 - (0.8 if header else 0.35) / height,
        hspace=0.45,
        wspace=0.25,
    )
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path.name


def _timeline(
    traces: list[dict],
    key: str,
    labels: Sequence[str],
    title: str,
    path: Path,
    colors: dict[str, Any],
    *decorate: Any,
    **options: Any,
) -> str:
    """A :func:`timeline_figure` saved to ``path``; returns its file name."""
    return _save(timeline_figure(traces, key, labels, title, colors, *decorate, **options), path)


def timeline_figure(
    traces: list[dict],
    key: str,
    labels: Sequence[str],
    title: str,
    colors: dict[str, Any],
    decorate: Any = None,
    floor: float = -np.inf,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Any:
    """One panel per label (SLO or knob), one line per controller, values below ``floor``
    drawn at it (``transform`` applied to each controller's series first). With a finite
    ``floor``, labels whose every value lies on it get no panel: the title names them."""
    series = {}
    for i, label in enumerate(labels):
        lines = [np.asarray(trace[key], dtype=float)[:, i] for trace in traces]
        lines = [line if transform is None else transform(line) for line in lines]
        if np.isinf(floor) or any((line > floor).any() for line in lines):
            series[label] = [np.maximum(line, floor) for line in lines]
    flat = [label for label in labels if label not in series]
    if flat:
        title += f"; never above {floor:g}: {', '.join(flat)}"
    fig, axes = _grid(max(len(series), 1))
    for ax, (label, lines) in zip(axes, series.items(), strict=False):
        for trace, values in zip(traces, lines, strict=True):
            ax.plot(trace["hours"], values, color=colors[trace["controller"]], lw=1.1)
        if decorate is not None:
            decorate(ax, label)
        ax.set_title(label, fontsize=9, y=1.0)  # a fixed position skips a slow layout pass
        ax.tick_params(labelsize=8)
    for ax in axes[-2:]:
        ax.set_xlabel("hours into the episode", fontsize=8)
    names = [t["controller"] for t in traces]
    handles = [_pyplot().Line2D([], [], color=colors[name]) for name in names]
    _header(fig, title, handles, names)
    return fig


def scenario_timelines(
    scenario: str, traces: list[dict], thresholds: dict[str, float], out: Path, colors: dict
) -> dict[str, str]:
    """The three timeline figures of one scenario; returns their file names."""
    slos, knobs = traces[0]["slo_names"], traces[0]["knob_names"]
    seed = traces[0]["seed"]

    def burn_lines(ax: Any, slo: str) -> None:
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", ls=":", lw=0.8)
        if slo in thresholds:
            ax.axhline(thresholds[slo], color="red", ls="--", lw=0.9)
        ax.set_ylim(MIN_BURN, max(ax.get_ylim()[1], 30.0))

    figures = {
        "burn": _timeline(
            traces,
            "window_burn_rate",
            slos,
            f"{scenario} (seed {seed}): {TIMELINE_WINDOW} burn rate; red dashed: page "
            f"threshold ({TIMELINE_WINDOW} long window), dotted: burn rate 1",
            out / f"burn_{scenario}.png",
            colors,
            burn_lines,
            floor=MIN_BURN,
        ),
        # An episode spends a sliver of a 30-day budget: drawn from the episode's start, in %,
        # the lines move instead of lying flat on top of each other near the initial budget.
        "budget": _timeline(
            traces,
            "budget_remaining",
            slos,
            f"{scenario} (seed {seed}): budget spent since the episode start (% of the period "
            "budget)",
            out / f"budget_{scenario}.png",
            colors,
            transform=lambda remaining: 100.0 * (remaining[0] - remaining),
        ),
        "knobs": _timeline(
            traces,
            "knobs",
            knobs,
            f"{scenario} (seed {seed}): knob values",
            out / f"knobs_{scenario}.png",
            colors,
        ),
    }
    if "pool_names" in traces[0]:
        figures["replicas"] = replica_timeline(scenario, traces, out, colors)
    return figures


def replica_timeline(scenario: str, traces: list[dict], out: Path, colors: dict) -> str:
    """Serving (solid) and desired (dashed) replicas of each pool, one line per controller."""
    pools, seed = traces[0]["pool_names"], traces[0]["seed"]
    fig, axes = _grid(len(pools))
    for i, (ax, pool) in enumerate(zip(axes, pools, strict=False)):
        for trace in traces:
            color = colors[trace["controller"]]
            serving = np.asarray(trace["replicas_serving"])[:, i]
            desired = np.asarray(trace["replicas_desired"])[:, i]
            ax.plot(trace["hours"], serving, color=color, lw=1.1)
            ax.plot(trace["hours"], desired, color=color, lw=0.8, ls="--")
        ax.set_title(f"{pool} pool", fontsize=9, y=1.0)
        ax.set_ylabel("replicas", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in axes[-2:]:
        ax.set_xlabel("hours into the episode", fontsize=8)
    names = [t["controller"] for t in traces]
    handles = [_pyplot().Line2D([], [], color=colors[name]) for name in names]
    title = f"{scenario} (seed {seed}): replicas serving (solid) and desired (dashed)"
    _header(fig, title, handles, names)
    return _save(fig, out / f"replicas_{scenario}.png")


def cost_vs_budget(document: dict, out: Path, colors: dict) -> str:
    """IQM cost against IQM budget spent per controller, one panel per scenario, with the
    95 % intervals as error bars, and the autoscalers' frontier sweeps as dashed lines."""
    scenarios = document["analysis"]["scenarios"]
    fig, axes = _grid(len(scenarios), min(4, len(scenarios)), height=2.8, sharex=False)
    for ax, (name, section) in zip(axes, scenarios.items(), strict=False):
        for controller, stats in section["controllers"].items():
            spent, cost = stats["budget_spent_total"], stats["cost_gpu_hours"]
            ax.errorbar(
                100 * spent["point"],
                cost["point"],
                xerr=[
                    [100 * (spent["point"] - spent["low"])],
                    [100 * (spent["high"] - spent["point"])],
                ],
                yerr=[[cost["point"] - cost["low"]], [cost["high"] - cost["point"]]],
                fmt="o",
                ms=4,
                color=colors[controller],
                label=controller,
            )
        _frontier_lines(ax, document["analysis"].get("frontiers", {}).get(name, {}), colors)
        ax.set_title(name, fontsize=9, y=1.0)
        ax.tick_params(labelsize=8)
        # Budgets spent span orders of magnitude between controllers: a log axis keeps the
        # frugal ones apart.
        lowest = min(s["budget_spent_total"]["low"] for s in section["controllers"].values())
        if lowest > 0:
            _log_x(ax)
        ax.set_xlabel("budget spent (% of period budgets)", fontsize=8)
        ax.set_ylabel("cost (GPU-h)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    title = "cost against budget spent (IQM, 95 % CI; dashed: autoscaler frontiers)"
    _header(fig, title, handles, labels)
    return _save(fig, out / "cost_vs_budget.png")


def _frontier_lines(ax: Any, frontiers: dict, colors: dict) -> None:
    """Each autoscaler's sweep of its main target (IQM over the sweep's seeds), dashed, in the
    autoscaler's colour."""
    for autoscaler, frontier in frontiers.items():
        points = frontier["points"]
        ax.plot(
            [100 * p["spent"] for p in points],
            [p["cost"] for p in points],
            color=colors[autoscaler],
            ls="--",
            lw=0.8,
            marker="x",
            ms=3,
        )


def _log_x(ax: Any) -> None:
    """A log x axis labelled at 1-2-5 steps in plain numbers (matplotlib's default labels its
    minor ticks too on short ranges, and they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def performance_profiles(document: dict, out: Path, colors: dict) -> str:
    """Share of runs spending at most tau, per scenario group, with 95 % bands."""
    groups = document["analysis"]["groups"]
    fig, axes = _pyplot().subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (group, section) in zip(axes[0], groups.items(), strict=True):
        profile = section["profile"]
        taus = 100 * np.asarray(profile["taus"])
        for controller in section["controllers"]:
            curve = profile[controller]
            ax.plot(taus, curve["profile"], color=colors[controller], label=controller)
            ax.fill_between(taus, curve["low"], curve["high"], color=colors[controller], alpha=0.15)
        ax.set_title(f"{GROUPS[group]} scenarios", fontsize=10, y=1.0)
        ax.set_xlabel("tau: budget spent (% of period budgets)", fontsize=9)
        ax.set_ylabel("share of runs spending <= tau", fontsize=9)
        ax.set_ylim(0, 1.02)
        _log_x(ax)
        ax.legend(fontsize=8)
    return _save(fig, out / "profiles.png", header=False)


def write_plots(document: dict, out_dir: Path) -> dict[str, Any]:
    """Every plot of the report into ``out_dir``; returns the file names by figure."""
    from slo import default_spec

    controllers = [c["name"] for c in document["config"]["controllers"]]
    colors = _colors(controllers)
    thresholds = page_thresholds(default_spec())
    by_scenario: dict[str, list[dict]] = {}
    for trace in document["traces"]:
        by_scenario.setdefault(trace["scenario"], []).append(trace)
    return {
        "profiles": performance_profiles(document, out_dir, colors),
        "cost_vs_budget": cost_vs_budget(document, out_dir, colors),
        "scenarios": {
            scenario: scenario_timelines(scenario, traces, thresholds, out_dir, colors)
            for scenario, traces in by_scenario.items()
        },
    }
