"""Orchestrate training with Ray Tune: trials over seeds (and optionally a hyperparameter search
with ASHA), resume, the summary table and the ``best`` pointer.

An experiment lives in ``<storage>/<name>``: by default ``--out`` itself (``runs/NAME`` holds the
Tune experiment, ``train.json``, ``summary.json`` and ``best``); with a shared ``storage`` on a
cluster, ``--out`` keeps ``train.json``, ``summary.json`` and ``best``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.config import Preset
from training.report import plot_learning_curves, trial_logs

REQUEST_FILE = "train.json"
SUMMARY_FILE = "summary.json"
LEARNING_CURVES_FILE = "learning_curves.png"
BEST_LINK = "best"
#: Metric the best trial and the ASHA scheduler maximise.
METRIC = "mean_episode_reward"
#: Seed of the hyperparameter configurations drawn for --search.
SEARCH_SEED = 0
#: Driver settings: Tune's compact CLIReporter table instead of a box per result, and no
#: warning about the experiment snapshot Tune takes after every chunk (keeping one checkpoint
#: per trial asks for it; chunks are minutes apart outside tests).
_DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


class TrainingError(RuntimeError):
    """A training run that cannot start or resume (the message says why)."""


@dataclass
class TrainRequest:
    """What ``budgetpilot train`` was asked for (saved to ``train.json`` so ``--resume`` can
    restore the run from ``--out`` alone).

    Parameters
    ----------
    preset:
        The preset (after command-line overrides).
    seeds:
        One trial per seed (per search sample).
    out:
        Directory of the run's summary and ``best`` pointer.
    storage:
        Tune storage root (a shared filesystem path or URI on a cluster); ``None`` = ``out``'s
        parent, so the experiment is ``out`` itself.
    search_samples:
        Hyperparameter samples drawn from the preset's ``search`` space (0 = no search).
    """

    preset: Preset
    seeds: list[int]
    out: Path
    storage: str | None = None
    search_samples: int = 0

    def __post_init__(self) -> None:
        if not self.seeds:
            raise TrainingError("give at least one seed")
        if self.search_samples < 0:
            raise TrainingError(f"--search must be >= 0, got {self.search_samples}")
        if self.search_samples and self.preset.search is None:
            raise TrainingError(f"preset {self.preset.name!r} has no search space for --search")

    @property
    def storage_root(self) -> str:
        """Tune's storage path: a URI as given, a local path made absolute."""
        if self.storage is None:
            return str(self.out.resolve().parent)
        return self.storage if "://" in self.storage else str(Path(self.storage).resolve())

    @property
    def experiment_path(self) -> str:
        """Where Tune keeps the experiment (named after ``out``)."""
        return f"{self.storage_root.rstrip('/')}/{self.out.resolve().name}"

    def save(self) -> None:
        """Write ``out/train.json``."""
        data = {
            "preset": self.preset.model_dump(mode="json"),
            "seeds": self.seeds,
            "storage": self.storage,
            "search_samples": self.search_samples,
        }
        (self.out / REQUEST_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, out: Path) -> TrainRequest:
        """The request saved in ``out/train.json`` (for ``--resume``)."""
        path = out / REQUEST_FILE
        if not path.is_file():
            raise TrainingError(f"nothing to resume in {out}: no {REQUEST_FILE}")
        data = json.loads(path.read_text())
        return cls(
            preset=Preset.model_validate(data["preset"]),
            seeds=list(data["seeds"]),
            out=out,
            storage=data["storage"],
            search_samples=int(data["search_samples"]),
        )


@dataclass
class TrialSummary:
    """One trial's outcome, as ``summary.json`` records it."""

    trial: str
    seed: int
    config: dict[str, Any]
    steps: int
    mean_episode_reward: float | None
    budget_exhaustions_per_episode: float | None
    checkpoint: str | None
    error: str | None = None


@dataclass
class RunSummary:
    """The run's outcome: every trial, and the best one's checkpoint."""

    preset: str
    experiment: str
    trials: list[TrialSummary] = field(default_factory=list)
    best_trial: str | None = None
    best_checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def git_commit(directory: Path = Path(__file__).parent) -> str | None:
    """The commit of the checkout holding ``directory`` (by default, the code being run),
    suffixed ``-dirty`` when tracked files differ from it (``git describe --dirty``'s
    convention), or ``None`` outside a git checkout."""
    try:
        head = _git(directory, "rev-parse", "HEAD")
        dirty = bool(_git(directory, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if head and dirty else head or None


def _git(directory: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), or start a local one
    with ``num_cpus`` CPUs (default: all of them). Trial processes get one thread each.
    Returns whether it joined an existing cluster.

    Raises
    ------
    TrainingError
        ``address`` names a cluster whose head does not answer or refuses this driver.
    """
    import ray

    from training.trainable import THREAD_ENV

    address = address or os.environ.get("RAY_ADDRESS")
    local = address is None
    if not local:
        check_reachable(address)
    # Ray warns at every start that it enabled token authentication: nothing to act on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR
    )
    try:
        ray.init(
            address=address,
            num_cpus=(num_cpus or os.cpu_count()) if local else None,
            include_dashboard=False,
            runtime_env={"env_vars": THREAD_ENV},
            logging_level="warning",
            configure_logging=True,
        )
    except ConnectionError as exc:  # e.g. a head that refuses this driver's token
        raise TrainingError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return not local


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once when the head ``host:port`` of ``address`` does not accept connections
    (``ray.init`` would retry for a minute before its own error)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        if address in ("auto", "local"):
            return
        raise TrainingError(f"--address {address!r}: expected HOST:PORT of the Ray head")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise TrainingError(
            f"--address {address}: no Ray head answers there ({exc.strerror or exc}); "
            "start one with `ray start --head --port PORT` or fix the address"
        ) from None


def check_cluster(workers: int, probe_nodes: bool = True) -> None:
    """Check that the connected Ray cluster can run the trials: a node with ``workers`` CPUs
    (a trial's environment processes share its node), and, with ``probe_nodes``, the package
    importable on every node (a task on each; a local Ray runs this very installation).

    Raises
    ------
    TrainingError
        Naming the missing CPUs or the nodes that cannot import the package.
    """
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    largest = max(node["Resources"].get("CPU", 0.0) for node in nodes)
    if workers > largest:
        raise TrainingError(
            f"--workers {workers}: a trial's workers share one node, and the largest node of "
            f"the Ray cluster has {largest:g} CPUs"
        )
    if not probe_nodes:
        return
    missing = [
        f"{node['NodeManagerAddress']} ({node['NodeID'][:12]}): {problem}"
        for node, problem in zip(nodes, _import_problems(nodes), strict=True)
        if problem
    ]
    if missing:
        raise TrainingError(
            "Ray nodes that cannot import the budgetpilot package (install it with its "
            f"[train] extra on every node): {'; '.join(missing)}"
        )


def _import_problems(nodes: list[dict[str, Any]], timeout_s: float = 120.0) -> list[str | None]:
    """Per node, why a Ray worker there cannot import the trainable (``None`` if it can)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe() -> None:  # nested: sent by value, so a node without the package can run it
        import training.trainable  # noqa: F401

    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    pending = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote()
        for node in nodes
    ]
    problems: list[str | None] = []
    for ref in pending:
        try:
            ray.get(ref, timeout=timeout_s)
            problems.append(None)
        except Exception as exc:  # a task error, a worker that died, a node that timed out
            cause = getattr(exc, "cause", None) or exc
            problems.append(f"{type(cause).__name__}: {cause}".splitlines()[0])
    return problems


def _trainable(request: TrainRequest):
    from ray import tune

    from training.trainable import train_trial

    bound = tune.with_parameters(
        train_trial, preset=request.preset.model_dump(mode="json"), commit=git_commit()
    )
    return tune.with_resources(bound, {"cpu": request.preset.workers})


def _trial_name(trial) -> str:
    return f"seed{trial.config['seed']}_{trial.trial_id}"


def _search_space(request: TrainRequest) -> dict[str, Any]:
    """Tune's parameter space: every (configuration, seed) pair. The configurations are drawn
    here, from a fixed seed, so that every seed trains the same ones and a run is reproducible."""
    from ray import tune

    configurations: list[dict[str, float]] = [{}]
    if request.preset.search is not None and request.search_samples:
        rng = np.random.default_rng(SEARCH_SEED)
        configurations = request.preset.search.sample(request.search_samples, rng)
    return {"seed": tune.grid_search(request.seeds), "ppo": tune.grid_search(configurations)}


def _new_tuner(request: TrainRequest, verbose: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    preset = request.preset
    scheduler, searched = None, []
    if preset.search is not None and request.search_samples:
        scheduler = ASHAScheduler(
            time_attr="timesteps",
            metric=METRIC,
            mode="max",
            max_t=preset.timesteps,
            grace_period=preset.search.grace_timesteps,
        )
        searched = [f"ppo/{name}" for name in preset.search.space]
    reporter = _reporter(request.out)(
        metric_columns={
            "timesteps": "steps",
            METRIC: "mean ep reward",
            "budget_exhaustions_per_episode": "exhaustions/ep",
            "steps_per_s": "steps/s",
        },
        parameter_columns=["seed", *searched],
        max_report_frequency=30,
    )
    return tune.Tuner(
        _trainable(request),
        param_space=_search_space(request),
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=request.out.resolve().name,
            storage_path=request.storage_root,
            # Keeping one checkpoint makes Tune save the experiment state after every trial
            # checkpoint, so an interrupted run loses at most the chunk in progress.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            progress_reporter=reporter,
            verbose=verbose,
        ),
    )


def _reporter(out: Path):
    """Tune's status table, naming the run directory instead of Ray's temporary copy of it."""
    from ray import tune

    class RunReporter(tune.CLIReporter):
        def _print(self, msg: str) -> None:
            super()._print(re.sub(r"(?m)^Result logdir: .*$", f"Run directory: {out}", msg))

    return RunReporter


def _experiment_exists(path: str) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(path)


def run_training(
    request: TrainRequest,
    *,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> RunSummary:
    """Run (or resume) the trials of ``request`` and write ``summary.json``, ``best`` and
    ``learning_curves.png``.

    Parameters
    ----------
    request:
        The run; on ``resume`` only ``out`` is used and the rest is read from ``train.json``.
    resume:
        Continue an interrupted run: unfinished and errored trials continue from their last
        checkpoint.
    address:
        Ray cluster address (``None``: ``RAY_ADDRESS`` or a new local Ray).
    num_cpus:
        CPUs of a local Ray (default: all); one trial runs per ``preset.workers`` CPUs.
    verbose:
        Tune's progress output: 0 silent, 1 a status table per trial and metrics.
    """
    from ray import tune

    for key, value in _DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    if resume:
        request = TrainRequest.load(request.out)
    print(f"training into {request.out}: starting Ray", file=sys.stderr, flush=True)
    joined = init_ray(address, num_cpus)
    print(
        "training: Ray started, trials starting (a status table every 30 s)",
        file=sys.stderr,
        flush=True,
    )
    try:
        check_cluster(request.preset.workers, probe_nodes=joined)
        request.out.mkdir(parents=True, exist_ok=True)
        exists = _experiment_exists(request.experiment_path)
        if resume:
            if not exists:
                raise TrainingError(f"no Tune experiment to resume at {request.experiment_path}")
            tuner = tune.Tuner.restore(
                request.experiment_path,
                _trainable(request),
                resume_unfinished=True,
                resume_errored=True,
            )
        else:
            if exists:
                raise TrainingError(
                    f"{request.experiment_path} already holds a run: "
                    "pass --resume to continue it, or choose another --out"
                )
            request.save()
            tuner = _new_tuner(request, verbose)
        results = tuner.fit()
    finally:
        import ray

        ray.shutdown()
    summary = summarise(results, request)
    (request.out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    if summary.best_checkpoint is not None:
        point_best(request.out, summary.best_checkpoint)
    experiment = Path(request.experiment_path)
    if experiment.is_dir() and trial_logs(experiment):  # remote storage: plot it from there
        plot_learning_curves(experiment, request.out / LEARNING_CURVES_FILE)
    return summary


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def summarise(results, request: TrainRequest) -> RunSummary:
    """The per-trial summary of a Tune ``ResultGrid``. The best trial is, among those that
    trained longest (ASHA stops some early), the one with the highest final mean episode
    reward."""
    summary = RunSummary(preset=request.preset.name, experiment=request.experiment_path)
    for result in results:
        metrics = result.metrics or {}
        config = request.preset.ppo.model_dump() | result.config.get("ppo", {})
        trial = TrialSummary(
            trial=Path(result.path).name,
            seed=int(result.config["seed"]),
            config=config,
            steps=int(metrics.get("timesteps", 0)),
            mean_episode_reward=_finite(metrics.get(METRIC)),
            budget_exhaustions_per_episode=_finite(metrics.get("budget_exhaustions_per_episode")),
            checkpoint=result.checkpoint.path if result.checkpoint else None,
            error=str(result.error) if result.error else None,
        )
        summary.trials.append(trial)
    ranked = [t for t in summary.trials if t.checkpoint and t.mean_episode_reward is not None]
    if ranked:
        best = max(ranked, key=lambda t: (t.steps, t.mean_episode_reward))
        summary.best_trial, summary.best_checkpoint = best.trial, best.checkpoint
    return summary


def point_best(out: Path, checkpoint: str) -> Path:
    """Make ``out/best`` a relative symlink to ``checkpoint``, or a file holding its path when
    symlinks are unavailable or the checkpoint is not on the local filesystem."""
    link = out / BEST_LINK
    if link.is_symlink() or link.is_file():
        link.unlink()
    target = Path(checkpoint)
    try:
        if "://" in checkpoint or not target.is_dir():
            raise OSError("not a local directory")
        link.symlink_to(os.path.relpath(target.resolve(), out.resolve()), target_is_directory=True)
    except OSError:
        link.write_text(checkpoint + "\n")
    return link


def resolve_best(out: Path) -> str:
    """The checkpoint ``out/best`` points at (symlink or pointer file): a path or a URI."""
    link = out / BEST_LINK
    if link.is_symlink() or link.is_dir():
        return str(link.resolve())
    return link.read_text().strip()
