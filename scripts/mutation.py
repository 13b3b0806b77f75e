"""Mutation testing of the safety-critical modules with mutmut (not part of CI: it is slow).

Each module is mutated on its own, against the test files that exercise it, in a scratch copy
of the working tree (``.mutation/<module>/``, git-ignored) whose ``pyproject.toml`` carries that
module's ``[tool.mutmut]`` section: mutmut reads its configuration from the current directory,
and one module at a time keeps a run affordable on 2 cores. The score is the share of mutants
the tests kill (timeouts count as killed: the mutant broke the code); survivors are listed by
name for ``mutmut show`` in the scratch copy, and justified in ``scripts/mutation_survivors.md``
when they are equivalent mutants.

mutmut runs each mutant in a worker forked from a process that has already run the tests once
(to learn which tests call which function). Two consequences are handled here: work done in a
module-scoped fixture is credited to the first test that uses it only, so a module whose tests
share such a fixture runs every test on every mutant (``whole_selection``); and a worker inherits
state from that first run (imported modules, numba's compiled functions), so ``--verify`` re-runs
mutants in fresh processes with a cold numba cache to confirm the verdicts.

Run one module at a time, in the background and niced::

    nice python scripts/mutation.py guardrails            # prints the score, writes JSON
    nice python scripts/mutation.py engine --survivors    # survivors again, after new tests
    nice python scripts/mutation.py engine --verify --sample 5  # verdicts in fresh processes
    nice python scripts/mutation.py contract --since 2d6ac2f  # functions changed since a run
    python scripts/mutation.py --list                     # the modules and their tests
    cd .mutation/guardrails && mutmut show <mutant name>  # what a survivor changed
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mutmut.utils.format_utils import mangled_name_from_mutant_name

REPO = Path(__file__).resolve().parent.parent
#: The project's packages (copied whole: the mutated module imports its neighbours).
PACKAGES = ("slo", "envs", "agents", "training", "policies", "eval")
#: Files the tests read beside the packages (the example fleet files).
DATA = ("examples",)
#: mutmut's exit codes per mutant that count as killed (a failing test, a pytest internal
#: error, a timeout of the mutant).
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass(frozen=True)
class Target:
    """One module to mutate and the test files that exercise it.

    ``whole_selection``: every mutant runs all the tests (until one fails), not only those
    that called the mutated function. mutmut credits a function to the test during which it
    ran, so a module-scoped fixture's work is credited to the first test using it alone: the
    tests that check that fixture's result would never see the mutant.
    """

    path: str
    tests: tuple[str, ...]
    whole_selection: bool = False


TARGETS: dict[str, Target] = {
    "guardrails": Target(
        "policies/sidecar/guardrails.py",
        ("tests/test_guardrails.py", "tests/test_sidecar.py"),
    ),
    "contract": Target(
        "envs/contract.py",
        (
            "tests/test_contract.py",
            "tests/test_contract_v3.py",
            "tests/test_guardrails.py",
            # The contract's unit tests of test_elastic.py (the rest runs the simulator).
            *(
                f"tests/test_elastic.py::{name}"
                for name in (
                    "test_fixed_contracts_are_unchanged",
                    "test_elastic_contracts_have_the_replica_knobs_and_features",
                    "test_replica_knob_dead_band_and_step",
                    "test_replica_change_toward_moves_as_far_as_one_interval_allows",
                    "test_stopped_and_provisioning_slots_do_not_count_in_the_load_features",
                )
            ),
        ),
    ),
    "stats": Target("eval/stats.py", ("tests/test_stats.py", "tests/test_stats_rliable.py")),
    # The exported policy is a module fixture of test_export.py.
    "export": Target(
        "policies/export.py",
        ("tests/test_export.py", "tests/test_envelope.py"),
        whole_selection=True,
    ),
    "engine": Target(
        "slo/engine.py",
        (
            "tests/test_slo_engine.py",
            "tests/test_budget_coverage.py",
            "tests/test_slo_memory.py",
            "tests/test_slo_metrics.py",
        ),
    ),
    "metrics": Target(
        "slo/metrics.py", ("tests/test_slo_metrics.py", "tests/test_metrics_truth.py")
    ),
}


def mutmut_section(target: Target) -> str:
    """The ``[tool.mutmut]`` section for one module."""
    tests = [t for t in target.tests if (REPO / t.partition("::")[0]).exists()]
    return (
        "\n[tool.mutmut]\n"
        f"source_paths = {json.dumps(list(PACKAGES))}\n"
        f"only_mutate = {json.dumps([target.path])}\n"
        f"also_copy = {json.dumps(list(DATA))}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]\n'
    )


def prepare(name: str, target: Target, fresh: bool) -> Path:
    """The scratch copy for ``name`` (``fresh``: without an earlier run's mutants)."""
    work = REPO / ".mutation" / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "reports", "*.png")
    for package in (*PACKAGES, *DATA, "tests"):
        shutil.copytree(REPO / package, work / package, ignore=ignore, dirs_exist_ok=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(pyproject + mutmut_section(target))
    return work


def _environment() -> dict[str, str]:
    """The tests' environment: the reference data stays where the checkout finds it."""
    env = dict(os.environ)
    env.setdefault("BUDGETPILOT_DATA", str(REPO.parent / "shared" / "data"))
    env.pop("PYTHONPATH", None)
    return env


def run_mutmut(
    work: Path,
    max_children: int,
    minutes: float | None,
    mutants: list[str] | None = None,
    until: Callable[[], bool] | None = None,
) -> None:
    """``mutmut run`` in ``work``, stopped after ``minutes`` if given (mutmut records each
    verdict as it comes, so the score covers the mutants checked by then) or once ``until()``
    holds."""
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    command = [mutmut, "run", "--max-children", str(max_children), *(mutants or [])]
    # mutmut puts the mutated copy first on sys.path itself.
    process = subprocess.Popen(command, cwd=work, env=_environment(), start_new_session=True)
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    try:
        while process.poll() is None and not (until is not None and until()):
            if deadline is not None and time.monotonic() > deadline:
                print(f"time budget of {minutes} min spent: stopping mutmut", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to mutmut and its workers, SIGKILL if they are still there after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _read_json(path: Path) -> dict | None:
    """The JSON in ``path``, or None while it is absent or half written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def collect_stats(work: Path, target: Target, max_children: int, whole: bool) -> dict:
    """Generate the mutants in ``work`` and mutmut's record of which tests called which
    function (a first ``mutmut run``, stopped as soon as that record is saved); ``whole``:
    credit every function with every test of the selection. Returns the mutants' metadata,
    verdicts forgotten, for the next ``mutmut run``."""
    stats_path = work / "mutants" / "mutmut-stats.json"
    run_mutmut(work, max_children, None, until=lambda: _read_json(stats_path) is not None)
    stats = _read_json(stats_path)
    if stats is None:
        raise SystemExit(f"mutmut stopped before it saved {stats_path}")
    meta_path = work / "mutants" / f"{target.path}.meta"
    meta = json.loads(meta_path.read_text())
    if whole:
        every_test = sorted(stats["duration_by_test"])
        for mutant in meta["exit_code_by_key"]:
            function = mangled_name_from_mutant_name(mutant)
            stats["tests_by_mangled_function_name"][function] = every_test
        stats_path.write_text(json.dumps(stats, indent=4))
    meta["exit_code_by_key"] = dict.fromkeys(meta["exit_code_by_key"])
    meta_path.write_text(json.dumps(meta))
    return meta


def score(work: Path, target: Target) -> dict[str, object]:
    """Mutants per status, the killed share and the survivors, from mutmut's metadata."""
    meta = json.loads((work / "mutants" / f"{target.path}.meta").read_text())
    return score_of(target, meta["exit_code_by_key"])


def score_of(target: Target, exit_codes: dict[str, int | None]) -> dict[str, object]:
    """Mutants per status, the killed share and the survivors, from mutmut's exit codes."""
    from mutmut.stats import status_by_exit_code

    statuses = {name: status_by_exit_code[code] for name, code in exit_codes.items()}
    counts = Counter(statuses.values())
    judged = sum(n for status, n in counts.items() if status not in {"skipped", "not checked"})
    killed = sum(counts[s] for s in KILLED)
    return {
        "module": target.path,
        "mutants": len(statuses),
        "checked": judged,
        "statuses": dict(counts),
        "killed_share": killed / judged if judged else None,
        "survivors": sorted(
            n for n, s in statuses.items() if s not in KILLED and s != "not checked"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate: {', '.join(TARGETS)}")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--resume", action="store_true", help="keep an earlier run's results")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test processes")
    parser.add_argument("--score-only", action="store_true", help="report the last run's score")
    parser.add_argument("--minutes", type=float, help="stop after this long (partial score)")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run the last run's survivors and unchecked mutants again",
    )
    parser.add_argument(
        "--since",
        metavar="REV",
        help="run only the mutants of functions changed since the git revision REV (the earlier "
        "run's verdicts of the others stand: same mutants, the same tests or more)",
    )
    parser.add_argument(
        "--whole-selection",
        action="store_true",
        help="run every test on every mutant, not only those that called the mutated function",
    )
    parser.add_argument(
        "--verify",
        nargs="*",
        metavar="MUTANT",
        help="run these mutants (default: the last run's survivors) again, each in a fresh "
        "process with a cold numba cache, and compare with mutmut's verdicts",
    )
    parser.add_argument(
        "--sample", type=int, default=0, help="with --verify: also this many killed mutants"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {list(TARGETS)}")
    if args.list or not args.modules:
        for name, target in TARGETS.items():
            print(f"{name:12s}{target.path:34s}{' '.join(target.tests)}")
        return 0
    for name in args.modules:
        target = TARGETS[name]
        work = REPO / ".mutation" / name
        whole = target.whole_selection or args.whole_selection
        if args.verify is not None:
            verify(work, target, args.verify, args.sample)
            continue
        if args.since:
            result = run_changed(target, name, args.since, args.max_children, args.minutes, whole)
        elif args.survivors:
            result = recheck_survivors(name, target, args.max_children, args.minutes, whole)
        else:
            if not args.score_only:
                work = prepare(name, target, fresh=not args.resume)
                if whole and not args.resume:
                    collect_stats(work, target, args.max_children, whole)
                run_mutmut(work, args.max_children, args.minutes)
            result = score(work, target)
        (work / "score.json").write_text(json.dumps(result, indent=2))
        report(result)
    return 0


def recheck_survivors(
    name: str, target: Target, max_children: int, minutes: float | None, whole: bool
) -> dict[str, object]:
    """Run the last run's survivors again on a fresh copy (after tests were added), the mutants
    it left unchecked (stopped by ``--minutes``), and every mutant of a function edited since
    (its mutants are not those of the last run); the other verdicts stand. ``whole``: against
    every test of the selection."""
    work = REPO / ".mutation" / name
    previous = json.loads((work / "mutants" / f"{target.path}.meta").read_text())
    work = prepare(name, target, fresh=True)
    meta = collect_stats(work, target, max_children, whole)
    edited = {
        function
        for function, digest in meta["hash_by_function_name"].items()
        if previous["hash_by_function_name"].get(function) != digest
    }
    survivors = set(score_of(target, previous["exit_code_by_key"])["survivors"])
    unchecked = {m for m, code in previous["exit_code_by_key"].items() if code is None}
    verdicts = {
        mutant: previous["exit_code_by_key"].get(mutant)
        for mutant in meta["exit_code_by_key"]
        if _function(mutant) not in edited
    }
    again = [
        m
        for m in meta["exit_code_by_key"]
        if _function(m) in edited or m in survivors or m in unchecked
    ]
    run_mutmut(work, max_children, minutes, again)
    rechecked = json.loads((work / "mutants" / f"{target.path}.meta").read_text())
    for mutant in again:  # a survivor not reached within ``minutes`` stays a survivor
        code = rechecked["exit_code_by_key"][mutant]
        if code is not None or mutant not in verdicts:
            verdicts[mutant] = code
    meta_path = work / "mutants" / f"{target.path}.meta"
    meta_path.write_text(json.dumps(rechecked | {"exit_code_by_key": verdicts}))
    return score_of(target, verdicts) | {"rechecked": len(again), "edited": sorted(edited)}


def run_changed(
    target: Target, name: str, since: str, max_children: int, minutes: float | None, whole: bool
) -> dict[str, object]:
    """Run the mutants of the functions of ``target`` whose code differs from revision
    ``since`` (mutmut's own hash of each function), on a fresh copy; the score covers those."""
    work = prepare(name, target, fresh=True)
    meta = collect_stats(work, target, max_children, whole)
    before = subprocess.run(
        ["git", "show", f"{since}:{target.path}"], cwd=REPO, capture_output=True, text=True
    )
    if before.returncode != 0:
        raise SystemExit(f"{target.path} at {since}: {before.stderr.strip()}")
    previous = _function_hashes(work, target.path, before.stdout)
    changed = {f for f, h in meta["hash_by_function_name"].items() if previous.get(f) != h}
    again = [m for m in meta["exit_code_by_key"] if _function(m) in changed]
    if again:
        run_mutmut(work, max_children, minutes, again)
    verdicts = json.loads((work / "mutants" / f"{target.path}.meta").read_text())
    codes = {m: verdicts["exit_code_by_key"][m] for m in again}
    return score_of(target, codes) | {"since": since, "changed": sorted(changed)}


def _function_hashes(work: Path, path: str, source: str) -> dict[str, str]:
    """mutmut's hash of each function of ``source`` (mutmut reads its settings from ``work``)."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    here = Path.cwd()
    os.chdir(work)
    try:
        return dict(mutate_file_contents(path, source).hash_by_function_name)
    finally:
        os.chdir(here)


def _function(mutant: str) -> str:
    """The mangled name of a mutant's function, without its module (as in the metadata)."""
    return mangled_name_from_mutant_name(mutant).rpartition(".")[2]


def verify(work: Path, target: Target, mutants: list[str], sample: int) -> None:
    """Run mutants again outside mutmut's forked workers, and print both verdicts.

    Each mutant gets a fresh pytest process on the tests mutmut ran for it, with a cold numba
    cache (``NUMBA_CACHE_DIR`` in a new temporary directory): a verdict that differs would come
    from the fork (state the workers inherit, numba's compiled functions among it), not from
    the mutant. ``mutants`` empty: the last run's survivors; ``sample``: also that many killed
    mutants, drawn with a fixed seed.
    """
    from mutmut.stats import status_by_exit_code

    meta = json.loads((work / "mutants" / f"{target.path}.meta").read_text())
    verdicts = {m: status_by_exit_code[code] for m, code in meta["exit_code_by_key"].items()}
    stats = json.loads((work / "mutants" / "mutmut-stats.json").read_text())
    mutants = list(mutants) or [m for m, v in verdicts.items() if v not in KILLED | {"not checked"}]
    killed = sorted(m for m, v in verdicts.items() if v in KILLED)
    mutants += random.Random(0).sample(killed, min(sample, len(killed)))
    differ = 0
    for mutant in mutants:
        tests = sorted(
            stats["tests_by_mangled_function_name"].get(mangled_name_from_mutant_name(mutant), []),
            key=lambda test: stats["duration_by_test"].get(test, 0.0),
        )
        fresh = (
            status_by_exit_code[_fresh_run(work / "mutants", mutant, tests)]
            if tests
            else "no tests"
        )
        same = (fresh in KILLED) == (verdicts[mutant] in KILLED)
        differ += not same
        print(f"{'same' if same else 'DIFFERS':8s}{verdicts[mutant]:10s}{fresh:10s}{mutant}")
    print(f"{len(mutants) - differ} of {len(mutants)} verdicts confirmed in fresh processes")


def _fresh_run(mutated: Path, mutant: str, tests: list[str]) -> int:
    """pytest's exit code on ``tests`` with ``mutant`` active, in a new process."""
    with tempfile.TemporaryDirectory() as numba_cache:
        env = _environment() | {
            "MUTANT_UNDER_TEST": mutant,
            "NUMBA_CACHE_DIR": numba_cache,
            "PYTHONPATH": str(mutated),
        }
        command = [sys.executable, "-m", "pytest", "--rootdir=.", "-p", "no:cacheprovider"]
        return subprocess.run(
            [*command, "-x", "-q", *tests],
            cwd=mutated,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode


def report(result: dict[str, object]) -> None:
    """The score on one line, then each survivor."""
    share = result["killed_share"]
    print(json.dumps({k: v for k, v in result.items() if k != "survivors"}))
    killed = "no data" if share is None else f"{share:.1%}"
    print(f"{result['module']}: {killed} of {result['checked']} checked mutants killed")
    for survivor in result["survivors"]:
        print(f"  survived: {survivor}")


if __name__ == "__main__":
    raise SystemExit(main())
