"""Tune every tunable baseline on every available scenario for the benchmark.

For each baseline with a parameter grid (all but ``vllm-defaults``) and each scenario whose data
is present, runs :func:`agents.tuning.tune` on training seeds 1000, 1001, ... and writes the
result in the format of ``budgetpilot tune --out`` to ``agents/tuned/<baseline>/<scenario>.json``,
which ``budgetpilot bench`` loads. Scenarios replaying the reference traces are skipped (with a
message) when the data is absent. Elastic scenarios run in the elastic environment, and the
autoscalers (``hpa``, ``wva``, ``kpa``, ``budget-autoscaler``) are tuned on them only.

``--fair POLICY`` tunes for information parity instead: one parameter set per baseline over the
scenarios the zoo policy POLICY was trained on (from its manifest), the candidate with the highest
mean return over them (:func:`agents.tuning.pool_tuning`), written to
``agents/tuned/<baseline>/fair.json``. Per-scenario results already in the output directory with
the same seeds, episode length and warm-up are reused (the same episodes), the others tuned and
written first.

Usage: ``python scripts/tune_baselines.py [--seeds 2] [--episode-hours 1] [--max-candidates N]
[--baselines static pid ...] [--scenarios steady ...] [--out-dir agents/tuned]
[--fair ppo-standard]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agents.baselines import BASELINES
from agents.tuning import applies_to, candidate_params, pool_tuning, tune, tuning_seeds
from envs.paths import REPO_ROOT
from envs.scenarios import SCENARIOS
from eval.bench import (
    FAIR,
    TUNED_DIR,
    ZOO_DIR,
    scenario_unavailable_reason,
    tuned_params_path,
)
from slo.progress import ProgressReport


def tunable_baselines() -> tuple[str, ...]:
    """Baselines with more than one candidate to choose from."""
    return tuple(name for name in BASELINES if len(candidate_params(name)) > 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per candidate")
    parser.add_argument("--episode-hours", type=float, default=1.0)
    parser.add_argument("--warmup-s", type=float, default=600.0)
    parser.add_argument("--max-candidates", type=int, default=None, help="cut every grid to this")
    parser.add_argument("--baselines", nargs="+", default=list(tunable_baselines()))
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--out-dir", type=Path, default=TUNED_DIR)
    parser.add_argument(
        "--fair",
        metavar="POLICY",
        help="tune one parameter set per baseline over this zoo policy's training scenarios",
    )
    return parser.parse_args(argv)


def _write(result: dict, baseline: str, tuned_on: str, out_dir: Path) -> Path:
    """Write a tuning result where the benchmark reads it; the path as shown."""
    path = tuned_params_path(baseline, tuned_on, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return _shown(path)


def _shown(path: Path) -> Path:
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def tuned(baseline: str, scenario: str, args: argparse.Namespace, reuse: bool = False) -> dict:
    """Tune ``baseline`` on ``scenario`` and write the result; with ``reuse``, a result already
    written for the same episodes (seeds, length, warm-up) and the full grid is read instead."""
    path = tuned_params_path(baseline, scenario, args.out_dir)
    episodes = {
        "seeds": list(tuning_seeds(args.seeds)),
        "episode_hours": args.episode_hours,
        "warmup_s": args.warmup_s,
    }
    if reuse and path.is_file():
        kept = json.loads(path.read_text())
        full = len(kept["candidates"]) == len(candidate_params(baseline, args.max_candidates))
        if full and all(kept.get(k) == v for k, v in episodes.items()):
            print(f"{baseline:17s} {scenario:20s} reused {_shown(path)}", flush=True)
            return kept
    t0 = time.perf_counter()
    with ProgressReport(f"tuning {baseline} on {scenario}: episodes") as report:
        result = tune(
            baseline,
            scenario,
            episodes["seeds"],
            episode_hours=args.episode_hours,
            warmup_s=args.warmup_s,
            max_candidates=args.max_candidates,
            progress=report.update,
        ).to_dict()
    shown = _write(result, baseline, scenario, args.out_dir)
    print(
        f"{baseline:17s} {scenario:20s} {len(result['candidates']):3d} candidates "
        f"{time.perf_counter() - t0:6.1f} s  best {result['best_params']} -> {shown}",
        flush=True,
    )
    return result


def tune_fair(policy: str, args: argparse.Namespace) -> None:
    """Every baseline's one parameter set over ``policy``'s training scenarios."""
    from policies.runtime import read_manifest

    scenarios = read_manifest(ZOO_DIR / f"{policy}.onnx").provenance.scenarios
    for baseline in (b for b in args.baselines if all(applies_to(b, s) for s in scenarios)):
        pooled = pool_tuning([tuned(baseline, s, args, reuse=True) for s in scenarios], FAIR)
        shown = _write(pooled, baseline, FAIR, args.out_dir)
        print(f"{baseline:17s} {FAIR:20s} best {pooled['best_params']} -> {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.fair:
        tune_fair(args.fair, args)
        print(f"total {time.perf_counter() - started:.0f} s", flush=True)
        return 0
    for scenario in args.scenarios:
        reason = scenario_unavailable_reason(scenario)
        if reason is not None:
            print(f"skip {scenario}: {reason}", file=sys.stderr)
            continue
        for baseline in (b for b in args.baselines if applies_to(b, scenario)):
            tuned(baseline, scenario, args)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
