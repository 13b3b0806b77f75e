"""Where the time of a first ``budgetpilot bench --fleet F --trace T --quick`` goes, per fleet.

For every fleet file given (default: ``examples/fleets/*.yaml``), on a cold cache (an empty
``BUDGETPILOT_CACHE_DIR`` of its own), runs what ``bench`` runs, stage by stage: the trace's
check and the fleet's capacity for it, Ray's start, the quick tuning of the baselines (in
parallel on Ray, or serially with ``--no-ray``), the benchmark runs and the report. Prints one
JSON object: seconds per stage and in total, per fleet, with the machine's load average (wall
times on a shared machine depend on it). The trace is the user's (``--trace``, with
``--trace-columns`` and ``--time-scale`` as for ``bench``), or a small synthetic one written here.

Usage: ``python scripts/time_quick_bench.py [FLEET ...] [--trace T] [--no-ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from envs.paths import EXAMPLE_FLEETS_DIR
from envs.sim.capacity import CACHE_ENV


def synthetic_trace(path: Path) -> Path:
    """600 requests in milliseconds (5 req/s, log-normal lengths), as the tests write them."""
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(200.0, 600))
    prompts = rng.lognormal(6.0, 0.8, 600).astype(int) + 1
    outputs = rng.lognormal(5.0, 0.6, 600).astype(int) + 1
    rows = "".join(f"{t:.1f},{p},{o}\n" for t, p, o in zip(times, prompts, outputs, strict=True))
    path.write_text("ts_ms,input_len,output_len\n" + rows)
    return path


def time_fleet(fleet: Path, traffic, use_ray: bool, out: Path) -> dict:
    """Seconds of each stage of a first quick benchmark of ``traffic`` on ``fleet``."""
    from eval.bench import (
        BenchConfig,
        BenchResult,
        candidates_on_ray,
        execute,
        plan_runs,
        ray_session,
        resolve_controllers,
        user_trace_scenario,
    )
    from eval.bench_cli import (
        QUICK_BOOTSTRAP_REPS,
        QUICK_EPISODE_HOURS,
        QUICK_SEEDS,
        tuning_budget,
    )
    from eval.report import write_report

    stages, clock = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[stage] = round(now - clock, 1)
        clock = now

    scenario = user_trace_scenario(traffic, str(fleet))
    lap("trace_and_capacity")
    config = BenchConfig(
        controllers=resolve_controllers(None, scenarios=[scenario], fleet=str(fleet)),
        scenarios=(scenario,),
        seeds=tuple(range(QUICK_SEEDS)),
        episode_hours=QUICK_EPISODE_HOURS,
        tuned_dir=None,
        bootstrap_reps=QUICK_BOOTSTRAP_REPS,
        fleet=str(fleet),
        grid_fleets=(),
        trace=traffic,
        tuning=tuning_budget(True, None, 600.0),
    )
    with ray_session(use_ray):
        lap("ray_start")
        runs, params, warnings = plan_runs(
            config, map_candidates=candidates_on_ray(traffic) if use_ray else None
        )
        lap("quick_tuning")
        results = execute(runs, use_ray)
        lap("benchmark_runs")
    write_report(BenchResult(config, results, params, warnings), out)
    lap("report")
    return {
        "seconds": stages,
        "total_s": round(sum(stages.values()), 1),
        "runs": len(runs),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fleets", nargs="*", type=Path)
    parser.add_argument("--trace", type=Path)
    parser.add_argument("--trace-columns", default="ts_ms,input_len,output_len")
    parser.add_argument("--time-scale", type=float, default=0.001)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    from envs.scenarios import TraceTraffic

    work = Path(tempfile.mkdtemp(prefix="quick-bench-"))
    trace = args.trace or synthetic_trace(work / "trace.csv")
    columns = tuple(args.trace_columns.split(","))
    traffic = TraceTraffic(str(trace), columns, args.time_scale, None)
    figures = {}
    for fleet in args.fleets or sorted(EXAMPLE_FLEETS_DIR.glob("*.yaml")):
        os.environ[CACHE_ENV] = str(work / f"cache-{fleet.stem}")  # cold: nothing measured yet
        figures[fleet.stem] = time_fleet(fleet, traffic, not args.no_ray, work / fleet.stem)
    print(json.dumps({"ray": not args.no_ray, "fleets": figures}, indent=1))


if __name__ == "__main__":
    main()
