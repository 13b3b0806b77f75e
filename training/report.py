"""Learning curves of a training run, drawn from its trials' TensorBoard logs.

``run_training`` writes ``learning_curves.png`` into the run directory when the run ends; the
reference policies in ``policies/zoo`` ship theirs beside the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: (TensorBoard tag, panel title) of the top row.
_PANELS = (
    ("rollout/ep_rew_mean", "mean episode reward"),
    ("rollout/budget_exhaustions_per_episode", "budget exhaustions per episode"),
)
_COMPONENTS = "reward_components/"
#: A line's colour tells one series (component, SLO), its dash one trial: 10 x 4 apart.
_DASHES = ("-", "--", ":", "-.")


def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of one TensorBoard log directory: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        scalars[tag] = (
            np.array([e.step for e in events], dtype=np.int64),
            np.array([e.value for e in events], dtype=np.float64),
        )
    return scalars


def trial_logs(run_dir: Path) -> dict[str, Path]:
    """Trial name -> its TensorBoard directory, for every trial under ``run_dir``."""
    return {d.parent.name: d for d in sorted(Path(run_dir).glob("*/tensorboard")) if d.is_dir()}


def _cost_components(scalars: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per rollout, the mean per-step cost of each reward group (``burn/<slo>`` terms summed,
    as they are logged together)."""
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag, (steps, values) in sorted(scalars.items()):
        if tag.startswith(_COMPONENTS):
            group = tag.removeprefix(_COMPONENTS).split("/")[0]
            previous = groups.get(group, (steps, 0.0))[1]
            groups[group] = (steps, previous + values)
    return groups


def _style(series: int, trial: int) -> dict[str, str]:
    """Colour of the ``series``-th series, dash of the ``trial``-th trial (20 colours)."""
    import matplotlib

    colours = matplotlib.colormaps["tab20" if series >= 10 else "tab10"].colors
    return {"color": colours[series % len(colours)], "linestyle": _DASHES[trial % len(_DASHES)]}


def learning_curves_figure(run_dir: str | Path):
    """The figure of :func:`plot_learning_curves` (a matplotlib ``Figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = trial_logs(Path(run_dir))
    if not logs:
        raise FileNotFoundError(f"{run_dir}: no trial with a tensorboard/ log")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    groups: dict[str, int] = {}  # reward component -> its colour, the same in every trial
    for index, (trial, log_dir) in enumerate(logs.items()):
        scalars = read_scalars(log_dir)
        for ax, (tag, title) in zip(axes[0], _PANELS, strict=True):
            if tag in scalars:
                ax.plot(*scalars[tag], label=trial, **_style(index, index // 10))
            ax.set_title(title)
        for group, (steps, values) in _cost_components(scalars).items():
            style = _style(groups.setdefault(group, len(groups)), index)
            axes[1, 0].plot(steps, values, label=f"{group} ({trial})", **style)
        burn_tags = sorted(t for t in scalars if t.startswith("burn_rate/"))
        if burn_tags and index == 0:
            for slo, tag in enumerate(burn_tags):
                axes[1, 1].plot(
                    *scalars[tag], label=tag.removeprefix("burn_rate/"), **_style(slo, 0)
                )
    axes[1, 0].set_title("mean cost per step by reward component")
    axes[1, 1].set_title(f"mean step burn rate per SLO ({next(iter(logs))})")
    axes[1, 1].set_yscale("symlog")
    for ax in axes.flat:
        ax.set_xlabel("timesteps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Training run {Path(run_dir).name}")
    fig.tight_layout()
    return fig


def plot_learning_curves(run_dir: str | Path, out: str | Path) -> Path:
    """Draw every trial's learning curves (reward, exhaustions, cost by reward component, mean
    burn rate per SLO) as one PNG; every line differs from the others of its panel in colour
    or dash.

    Parameters
    ----------
    run_dir:
        The run directory (``runs/NAME``) whose trials hold ``tensorboard/`` logs.
    out:
        The PNG to write.

    Raises
    ------
    FileNotFoundError
        When no trial under ``run_dir`` has a TensorBoard log.
    """
    import matplotlib.pyplot as plt

    fig = learning_curves_figure(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
