"""Ablation of the retrain's ingredients: what each one buys on the held-out grid.

Trains one policy per variant of a recipe preset (default ``standard-v3``), each variant the
recipe with some of its ingredients removed:

========================  ====================================================================
variant                   ``env_kwargs`` kept from the recipe
========================  ====================================================================
``baseline``              none of the ingredients (the standard recipe)
``smoothness``            ``action_filter`` and ``reward.smoothness``
``randomisation``         ``randomisation``
``reward``                ``reward.overload_weights`` and ``reward.overload_load``
``all``                   every ingredient (the recipe itself)
========================  ====================================================================

then exports each (``<out>/zoo/abl-<variant>.onnx``, the rate limit in the graph when trained
with it), benchmarks them all in one run on the held-out scenarios with every baseline, strict
and ``@fair``, each policy also through the sidecar's guardrails (``eval.bench``, the report in
``<out>/bench``), and writes ``<out>/ablation.md`` (the table: per variant the held-out pass
fractions, IQM budget spent and cost of the controller judged, action change per step raw and
as deployed) and ``<out>/ablation.png``.

Usage (the quick size, one seed; the numbers of so short a training say nothing about the
standard preset's)::

    BUDGETPILOT_DATA=../shared/data python scripts/ablation.py --timesteps 24576 --seeds 1 \\
        --bench-seeds 3 --episode-hours 0.5 --out ablation-quick

The full run: ``python scripts/ablation.py --seeds 2 --out ablation-standard`` (the recipe's
655,360 timesteps per policy, 10 seeds of 2 h on the held-out scenarios).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from training.config import Preset, load_preset

#: What each ingredient keeps of the recipe's ``env_kwargs``: whole fields (``None``) or the
#: named fields of ``reward``.
INGREDIENTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "smoothness": {"action_filter": None, "reward": ("smoothness",)},
    "randomisation": {"randomisation": None},
    "reward": {"reward": ("overload_weights", "overload_load")},
}
#: The variants trained, by name: the ingredients each keeps.
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "smoothness": ("smoothness",),
    "randomisation": ("randomisation",),
    "reward": ("reward",),
    "all": tuple(INGREDIENTS),
}
#: Prefix of the variants' policy names in the benchmark.
POLICY_PREFIX = "abl-"


def variant_env_kwargs(recipe: Mapping[str, Any], ingredients: Iterable[str]) -> dict[str, Any]:
    """The recipe's ``env_kwargs`` with only ``ingredients`` of :data:`INGREDIENTS` (reward
    fields that belong to no ingredient are kept by every variant)."""

    def owned(names: Iterable[str]) -> tuple[set[str], set[str]]:
        parts = [INGREDIENTS[n] for n in names]
        fields = {k for p in parts for k, reward_fields in p.items() if reward_fields is None}
        return fields, {f for p in parts for f in p.get("reward") or ()}

    all_fields, all_reward = owned(INGREDIENTS)
    kept_fields, kept_reward = owned(ingredients)
    kwargs = {
        k: v
        for k, v in recipe.items()
        if k != "reward" and (k not in all_fields or k in kept_fields)
    }
    reward = {
        k: v for k, v in recipe.get("reward", {}).items() if k not in all_reward or k in kept_reward
    }
    return kwargs | ({"reward": reward} if reward else {})


def variant_preset(recipe: Preset, variant: str, timesteps: int | None) -> Preset:
    """The preset ``variant`` trains with: the recipe's scenarios and hyperparameters, its
    ingredients cut to the variant's, its timesteps ``timesteps`` when given."""
    env_kwargs = variant_env_kwargs(recipe.env_kwargs.as_kwargs(), VARIANTS[variant])
    steps = timesteps or recipe.timesteps
    return recipe.with_overrides(
        name=f"{recipe.name}-{variant}",
        env_kwargs=env_kwargs,
        timesteps=steps,
        chunk_timesteps=min(recipe.chunk_timesteps, steps),
    )


def train_and_export(preset: Preset, seeds: list[int], out: Path, zoo: Path, name: str) -> Path:
    """Train ``preset`` (one trial per seed, on Ray) into ``out`` and export its best trial to
    ``zoo/<name>.onnx``."""
    from policies.export import export_checkpoint
    from training.run import TrainRequest, resolve_best, run_training

    summary = run_training(TrainRequest(preset=preset, seeds=seeds, out=out), verbose=0)
    if summary.best_checkpoint is None:
        raise SystemExit(f"{name}: no trial finished (see {out / 'summary.json'})")
    result = export_checkpoint(resolve_best(out), zoo / f"{name}.onnx")
    print(f"{name}: {result.summary()}", file=sys.stderr, flush=True)
    return result.onnx_path


def bench_variants(zoo: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark the exported variants with every baseline on the held-out scenarios; write
    the benchmark's report to ``<out>/bench`` and return its ``results.json`` document."""
    from eval.bench import BenchConfig, expand_scenarios, resolve_controllers, run_bench
    from eval.headline import EXAMPLE_FLEETS
    from eval.report import write_report
    from slo.progress import ProgressReport

    scenarios = expand_scenarios(["held-out"])
    config = BenchConfig(
        controllers=resolve_controllers(None, zoo_dir=zoo, scenarios=scenarios),
        scenarios=tuple(scenarios),
        seeds=tuple(range(args.bench_seeds)),
        episode_hours=args.episode_hours,
        bootstrap_reps=args.bootstrap_reps,
        grid_fleets=EXAMPLE_FLEETS,
    )
    with ProgressReport("ablation benchmark runs") as report:
        result = run_bench(
            config,
            use_ray=not args.no_ray,
            progress=lambda done, total: report.update(done, total, "ablation benchmark runs"),
        )
    write_report(result, args.out / "bench")
    return json.loads((args.out / "bench" / "results.json").read_text())


def ablation_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per variant benchmarked: the headline of its judged controller (pass fractions, why
    cells failed), its held-out IQMs of budget spent and cost, and its held-out IQM action
    change per step, raw and as deployed (the report's figures, with their intervals)."""
    held_out = document["analysis"]["groups"]["held_out"]["controllers"]
    rows = []
    for judged, headline in document["headline"].items():
        policy = headline["policy"]
        if not policy.startswith(POLICY_PREFIX):
            continue
        rows.append(
            {
                "variant": policy.removeprefix(POLICY_PREFIX),
                "judged": judged,
                "pass_fraction_fair": headline["pass_fraction_fair"],
                "pass_fraction_strict": headline["pass_fraction_strict"],
                "exhaustion_free": headline["exhaustion_free_where_a_rival_is"],
                "budget_spent": held_out[judged]["budget_spent_total"],
                "gpu_hours": held_out[judged]["cost_gpu_hours"],
                "smoothness_raw": held_out[policy]["action_smoothness"],
                "smoothness_deployed": held_out[judged]["action_smoothness"],
                "failing_cells": [
                    f"{c['scenario']} ({r}): {c[r]['why']}"
                    for c in headline["cells"]
                    for r in ("fair", "strict")
                    if c.get(r) and not c[r]["pass"] and c[r].get("why")
                ],
            }
        )
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)


def _fraction(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _interval(value: Mapping[str, float | None], scale: float = 1.0, digits: int = 3) -> str:
    """``point [low, high]`` (times ``scale``), ``no data`` without a point."""
    if value.get("point") is None:
        return "no data"
    low, high = (value.get(k) for k in ("low", "high"))
    bounds = "" if low is None or high is None else f" [{low * scale:.{digits}f}, "
    bounds += "" if not bounds else f"{high * scale:.{digits}f}]"
    return f"{value['point'] * scale:.{digits}f}{bounds}"


def describe_run(document: Mapping[str, Any], zoo: Path) -> str:
    """How the variants were trained (their manifests' provenance) and benchmarked (the
    benchmark's configuration)."""
    from policies.runtime import read_manifest

    trained = sorted(
        {
            (m.provenance.timesteps, m.provenance.seed)
            for m in (read_manifest(p) for p in sorted(zoo.glob(f"{POLICY_PREFIX}*.onnx")))
        }
    )
    config = document["config"]
    hours = config["episode_hours"]
    training = ", ".join(
        f"{steps:,} timesteps (best trial: seed {seed})" for steps, seed in trained
    )
    return (
        (f"Policies trained for {training}" if training else f"No policy manifests in {zoo}")
        + f"; benchmark on the held-out scenarios, {len(config['seeds'])} seeds of "
        + (f"{hours:g} h" if hours else "each scenario's own length")
    )


def render_table(rows: list[dict[str, Any]], setup: str, timing: str) -> str:
    """``ablation.md``: how it was run, the table, and why the failing cells failed."""
    lines = [
        "# Ablation of the retrain's ingredients",
        "",
        f"{setup}; {timing}. Held-out IQMs with "
        "95 % stratified-bootstrap intervals (the benchmark report's): budget spent (% of the "
        "period budgets) and GPU-hours of the controller judged (the policy through the "
        "sidecar's guardrails); action change per step of the raw policy and as deployed "
        "(target <= 0.02). The full benchmark report is in `bench/`.",
        "",
        "| variant | judged | pass fair | pass strict | no exhaustion where a rival has none "
        "| budget spent (%) | GPU-hours | action change raw | as deployed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | `{r['judged']}` | {_fraction(r['pass_fraction_fair'])} | "
            f"{_fraction(r['pass_fraction_strict'])} | {'yes' if r['exhaustion_free'] else 'no'} "
            f"| {_interval(r['budget_spent'], 100, 2)} | {_interval(r['gpu_hours'], digits=2)} | "
            f"{_interval(r['smoothness_raw'])} | {_interval(r['smoothness_deployed'])} |"
        )
    lines += ["", "## Why cells failed", ""]
    for r in rows:
        lines += [f"- **{r['variant']}**" + ("" if r["failing_cells"] else ": none failed")]
        lines += [f"  - {cell}" for cell in r["failing_cells"]]
    return "\n".join(lines) + "\n"


def _percent(interval: Mapping[str, float | None], key: str) -> float:
    """``interval[key]`` in percent; the point where the bound is missing, 0 without data."""
    value = interval.get(key)
    return 100 * (value if value is not None else interval.get("point") or 0.0)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per variant: held-out cells passed, budget spent (IQM and interval) and action change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    fig, (passed, spent, change) = plt.subplots(1, 3, figsize=(14, 3.8))
    for offset, reading in ((-0.2, "fair"), (0.2, "strict")):
        values = [r[f"pass_fraction_{reading}"] or 0.0 for r in rows]
        passed.bar([i + offset for i in x], values, width=0.4, label=reading)
    passed.axhline(0.7, color="tab:blue", ls=":", lw=1)
    passed.axhline(0.5, color="tab:orange", ls=":", lw=1)
    passed.set(ylim=(0, 1), ylabel="held-out cells passed")
    budget = [r["budget_spent"] for r in rows]
    points = [_percent(b, "point") for b in budget]
    errors = [
        [p - _percent(b, "low") for p, b in zip(points, budget, strict=True)],
        [_percent(b, "high") - p for p, b in zip(points, budget, strict=True)],
    ]
    spent.bar(x, points, yerr=errors, capsize=3, color="tab:gray")
    spent.set(ylabel="budget spent, as deployed (%)")
    for offset, key in ((-0.2, "smoothness_raw"), (0.2, "smoothness_deployed")):
        values = [r[key]["point"] or 0.0 for r in rows]
        change.bar(
            [i + offset for i in x], values, width=0.4, label=key.removeprefix("smoothness_")
        )
    change.axhline(0.02, color="k", ls=":", lw=1, label="target")
    change.set(ylabel="action change per step")
    for ax in (passed, spent, change):
        ax.set_xticks(x, [r["variant"] for r in rows], rotation=20)
    passed.legend()
    change.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="standard-v3", help="preset holding the ingredients")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--timesteps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per variant")
    parser.add_argument("--bench-seeds", type=int, default=10)
    parser.add_argument("--episode-hours", type=float, default=None)
    parser.add_argument("--bootstrap-reps", type=int, default=2000)
    parser.add_argument("--no-ray", action="store_true", help="benchmark serially")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and plot from <out>/bench/results.json, train and run nothing",
    )
    parser.add_argument("--out", type=Path, default=Path("ablation-out"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.report_only:
        document = json.loads((args.out / "bench" / "results.json").read_text())
        minutes = document["timing"]["wall_time_s"] / 60
        write_ablation(document, args, f"benchmark {minutes:.0f} min")
        return
    recipe = load_preset(args.recipe)
    zoo = args.out / "zoo"
    for variant in args.variants:
        preset = variant_preset(recipe, variant, args.timesteps)
        name = f"{POLICY_PREFIX}{variant}"
        onnx_path = zoo / f"{name}.onnx"
        if onnx_path.is_file():  # an earlier, interrupted ablation trained it
            print(f"{name}: {onnx_path} exists, not retrained", file=sys.stderr)
            continue
        start = time.perf_counter()
        train_and_export(preset, list(range(args.seeds)), args.out / "runs" / variant, zoo, name)
        print(f"{name}: trained in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    document = bench_variants(zoo, args)
    minutes = (time.perf_counter() - started) / 60
    write_ablation(document, args, f"{minutes:.0f} min in all, training and benchmark")


def write_ablation(document: Mapping[str, Any], args: argparse.Namespace, timing: str) -> None:
    """``ablation.md``, ``ablation.json`` and ``ablation.png`` in ``args.out`` from the
    benchmark's ``results.json`` document."""
    rows = ablation_rows(document)
    setup = describe_run(document, args.out / "zoo")
    (args.out / "ablation.md").write_text(render_table(rows, setup, timing))
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.out / "ablation.png")
    print(f"ablation: {args.out / 'ablation.md'} ({timing})")


if __name__ == "__main__":
    main()
