"""The Ray Tune trainable: one PPO trial per (configuration, seed), checkpointed every chunk.

This module is imported by every Ray worker before a trial starts, so it imports neither torch
nor stable-baselines3 at module level: :func:`pin_threads` must run first, so that a trial keeps
to the CPUs Tune reserved for it (one per worker of the preset).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

#: Thread pools limited to one thread in every trial process (torch, OpenMP, BLAS, numba).
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def pin_threads() -> None:
    """Keep this process (and the environment processes it starts) to one thread for numba,
    OpenMP, BLAS and torch, through environment variables for libraries not yet loaded.

    The learner keeps one torch thread even when the trial has several rollout workers: its
    forward passes (4 observations) and updates (minibatches of 256 on a 128x128 network) are
    too small to share, and a second thread that spins while the workers hold the cores made
    one trial's learner cost 20x more CPU per step (``perf train``, issue 15)."""
    os.environ.update(THREAD_ENV)
    import torch

    torch.set_num_threads(1)


def train_trial(config: dict[str, Any], preset: dict[str, Any], commit: str | None) -> None:
    """Train one trial to the preset's timesteps, reporting metrics and a checkpoint per chunk.

    Parameters
    ----------
    config:
        The trial's Tune configuration: ``seed`` and ``ppo`` (searched hyperparameters, may be
        empty).
    preset:
        The preset, as :meth:`Preset.model_dump` (validated again here).
    commit:
        Git commit of the driver's code, recorded in every checkpoint.
    """
    from training.config import PPOConfig, Preset

    spec = Preset.model_validate(preset)
    pin_threads()
    from training.learner import PPOLearner

    seed = int(config["seed"])
    log_dir = Path(tune.get_context().get_trial_dir()) / "tensorboard"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            learner = PPOLearner.restore(Path(directory), spec, seed, commit, log_dir)
    else:
        ppo = PPOConfig.model_validate(spec.ppo.model_dump() | config.get("ppo", {}))
        learner = PPOLearner.create(spec, seed, ppo, commit, log_dir)
    try:
        while learner.timesteps < spec.timesteps:
            metrics = learner.learn(min(spec.chunk_timesteps, spec.timesteps - learner.timesteps))
            with tempfile.TemporaryDirectory(prefix="budgetpilot-ckpt-") as directory:
                learner.save(Path(directory))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    finally:
        learner.close()
