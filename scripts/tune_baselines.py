"""Tune every tunable baseline on every available scenario for the benchmark.

For each baseline with a parameter grid (all but ``vllm-defaults``) and each scenario whose data
is present, runs :func:`agents.tuning.tune` on training seeds 1000, 1001, ... and writes the
result in the format of ``budgetpilot tune --out`` to ``agents/tuned/<baseline>/<scenario>.json``,
which ``budgetpilot bench`` loads. Scenarios replaying the reference traces are skipped (with a
message) when the data is absent. Elastic scenarios run in the elastic environment, and the
autoscalers (``hpa``, ``wva``, ``kpa``, ``budget-autoscaler``) are tuned on them only.

Usage: ``python scripts/tune_baselines.py [--seeds 2] [--episode-hours 1] [--max-candidates N]
[--baselines static pid ...] [--scenarios steady ...] [--out-dir agents/tuned]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agents.baselines import BASELINES
from agents.tuning import applies_to, candidate_params, tune, tuning_seeds
from envs.paths import REPO_ROOT
from envs.scenarios import SCENARIOS
from eval.bench import TUNED_DIR, scenario_unavailable_reason, tuned_params_path
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = tuning_seeds(args.seeds)
    started = time.perf_counter()
    for scenario in args.scenarios:
        reason = scenario_unavailable_reason(scenario)
        if reason is not None:
            print(f"skip {scenario}: {reason}", file=sys.stderr)
            continue
        for baseline in (b for b in args.baselines if applies_to(b, scenario)):
            t0 = time.perf_counter()
            with ProgressReport(f"tuning {baseline} on {scenario}: episodes") as report:
                result = tune(
                    baseline,
                    scenario,
                    seeds,
                    episode_hours=args.episode_hours,
                    warmup_s=args.warmup_s,
                    max_candidates=args.max_candidates,
                    progress=report.update,
                )
            path = tuned_params_path(baseline, scenario, args.out_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
            print(
                f"{baseline:17s} {scenario:20s} {len(result.candidates):3d} candidates "
                f"{time.perf_counter() - t0:6.1f} s  best {result.best_params} -> {shown}",
                flush=True,
            )
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
