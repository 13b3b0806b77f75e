"""One PPO learner on the fleet environment: build or restore it, learn a chunk, checkpoint it.

A checkpoint directory holds ``model.zip`` (:meth:`PPO.save`), ``vecnormalize.pkl``
(:meth:`VecNormalize.save`) and ``run.json`` (preset, seed, scenarios, environment arguments,
timesteps, metrics, commit): everything ``policies/`` export and ``eval/`` need to rebuild the
environment with ``LLMFleetEnv(scenario=run["scenarios"], **run["env_kwargs"])``.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from envs.contract import ActionContract, neutral_knob_values
from envs.fleet_env import LLMFleetEnv
from training.callbacks import BudgetMetricsCallback, EpisodeBudgetStats, RolloutTimer
from training.config import PPOConfig, Preset
from training.reward_scale import VecFleetRewardScale
from training.vec_env import WorkerVecEnv

MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
RUN_FILE = "run.json"

#: Mixed into every environment seed, so that training draws never coincide with the small
#: integer seeds evaluation uses.
_TRAINING_ENTROPY = 0x6275_6467_6574


def make_training_env(scenarios: list[str], env_kwargs: dict[str, Any]) -> gym.Env:
    """A fleet environment drawing from ``scenarios`` at each reset, counting exhaustions."""
    return EpisodeBudgetStats(LLMFleetEnv(scenario=list(scenarios), **env_kwargs))


def own_cores(workers: int) -> list[int] | None:
    """The cores to pin ``workers`` rollout workers to: this process's cores when there are
    exactly that many (the trial has the machine, or its slice of it, to itself), else ``None``
    (other trials share the cores; pinning every trial's first worker to the same core would
    stack them)."""
    cores = sorted(os.sched_getaffinity(0))
    return cores if len(cores) == workers else None


def env_seed(seed: int, timesteps: int) -> int:
    """Seed of the vectorised environments of trial ``seed`` started at ``timesteps`` (a
    resumed trial draws new scenarios rather than replaying the first ones)."""
    return int(np.random.SeedSequence([_TRAINING_ENTROPY, seed, timesteps]).generate_state(1)[0])


def start_at_neutral(model: PPO, contract: ActionContract) -> None:
    """Centre the initial policy on the neutral knobs (an untouched vLLM fleet).

    The action net's weights start near zero (SB3's orthogonal init, gain 0.01), so its bias is
    the initial mean action. At zero bias the mean would be the middle of every knob range:
    shedding the batch tenant, a 4k context and a rate limit below capacity, a fleet far worse
    than vLLM's defaults that PPO would first have to unlearn. Starting from the defaults, it
    explores the trades around them instead.
    """
    import torch

    neutral = contract.encode(neutral_knob_values(contract.names))
    with torch.no_grad():
        model.policy.action_net.bias.copy_(torch.as_tensor(neutral, dtype=torch.float32))


class PPOLearner:
    """PPO (``MlpPolicy``) with observation and reward normalisation on ``n_envs`` environments.

    Build a new one with :meth:`create` or continue a checkpoint with :meth:`restore`.

    Parameters
    ----------
    preset:
        The run's preset (scenario mix, environment arguments, timesteps).
    ppo:
        The hyperparameters in force (the preset's, or a search sample).
    seed:
        The trial's seed (PPO's seed; environment seeds derive from it).
    model:
        The PPO model, whose ``env`` is the :class:`VecNormalize` wrapper.
    commit:
        Git commit of the code, recorded in ``run.json``.
    log_dir:
        TensorBoard directory, or ``None`` for no logging.
    """

    def __init__(
        self,
        preset: Preset,
        ppo: PPOConfig,
        seed: int,
        model: PPO,
        commit: str | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.preset = preset
        self.ppo = ppo
        self.seed = seed
        self.model = model
        self.commit = commit
        self.callback = BudgetMetricsCallback()
        formats = ["tensorboard"] if log_dir is not None else []
        model.set_logger(configure(str(log_dir) if log_dir else None, formats))

    @staticmethod
    def _vec_env(preset: Preset, ppo: PPOConfig, seed: int, timesteps: int) -> VecEnv:
        """The ``ppo.n_envs`` environments: in this process for one worker, else spread over
        ``preset.workers`` processes. Both seed environment ``i`` alike, so they step through
        the same episodes. Their rewards are scaled per fleet when the preset says so."""
        make = partial(make_training_env, preset.scenarios, preset.env_kwargs.as_kwargs())
        seed = env_seed(seed, timesteps)
        if preset.workers == 1:
            vec = make_vec_env(make, n_envs=ppo.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
        else:
            workers = {"workers": preset.workers, "cpus": own_cores(preset.workers)}
            vec = make_vec_env(
                make, ppo.n_envs, seed=seed, vec_env_cls=WorkerVecEnv, vec_env_kwargs=workers
            )
        return VecFleetRewardScale(vec, ppo.gamma) if preset.fleet_reward_scale else vec

    @classmethod
    def create(
        cls,
        preset: Preset,
        seed: int,
        ppo: PPOConfig | None = None,
        commit: str | None = None,
        log_dir: Path | None = None,
    ) -> PPOLearner:
        """A new learner; ``ppo`` overrides the preset's hyperparameters (a search sample)."""
        ppo = ppo or preset.ppo
        vec = cls._vec_env(preset, ppo, seed, 0)
        venv = VecNormalize(vec, **preset.vecnormalize.model_dump())
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **ppo.sb3_kwargs())
        start_at_neutral(model, vec.get_attr("action_contract", indices=0)[0])
        return cls(preset, ppo, seed, model, commit, log_dir)

    @classmethod
    def restore(
        cls,
        checkpoint: Path,
        preset: Preset,
        seed: int,
        commit: str | None = None,
        log_dir: Path | None = None,
    ) -> PPOLearner:
        """Continue from a checkpoint directory: weights, optimiser, normalisation statistics,
        timestep count and the running episode means."""
        run = json.loads((checkpoint / RUN_FILE).read_text())
        ppo = PPOConfig.model_validate(run["ppo"])
        vec = cls._vec_env(preset, ppo, seed, run["timesteps"])
        if isinstance(vec, VecFleetRewardScale):
            vec.load_state(run["fleet_reward_scale"])
        venv = VecNormalize.load(str(checkpoint / VECNORMALIZE_FILE), vec)
        model = PPO.load(checkpoint / MODEL_FILE, env=venv, device="cpu")
        learner = cls(preset, ppo, seed, model, commit, log_dir)
        learner.callback.load_state(run["episode_window"])
        return learner

    @property
    def timesteps(self) -> int:
        """Timesteps learned so far (continues across restores)."""
        return int(self.model.num_timesteps)

    def learn(self, timesteps: int) -> dict[str, float]:
        """Learn ``timesteps`` more and return the metrics after it: ``timesteps``,
        ``mean_episode_reward``, ``budget_exhaustions_per_episode``, ``episodes``,
        ``chunk_timesteps``, ``chunk_seconds``, ``chunk_cpu_seconds`` (CPU time of this process:
        above ``chunk_seconds`` means it used more than one core), ``chunk_rollout_seconds``
        (the part spent collecting rollouts, the rest is PPO's update) and ``steps_per_s``."""
        start_steps, start, start_cpu = self.timesteps, time.perf_counter(), time.process_time()
        timer = RolloutTimer()
        self.model.learn(
            timesteps, callback=[self.callback, timer], reset_num_timesteps=False, log_interval=1
        )
        seconds = time.perf_counter() - start
        done = self.timesteps - start_steps
        return {
            "timesteps": self.timesteps,
            **self.callback.metrics(),
            "chunk_timesteps": done,
            "chunk_seconds": seconds,
            "chunk_cpu_seconds": time.process_time() - start_cpu,
            "chunk_rollout_seconds": timer.seconds,
            "steps_per_s": done / seconds,
        }

    def save(self, directory: Path) -> None:
        """Write the checkpoint files (``model.zip``, ``vecnormalize.pkl``, ``run.json``)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_FILE)
        self.model.get_env().save(str(directory / VECNORMALIZE_FILE))
        metrics = self.callback.metrics()
        run = {
            "preset": self.preset.name,
            "seed": self.seed,
            "scenarios": list(self.preset.scenarios),
            "env_kwargs": self.preset.env_kwargs.as_kwargs(),
            "timesteps": self.timesteps,
            "metrics": {k: None if v != v else v for k, v in metrics.items()},  # NaN -> null
            "commit": self.commit,
            "ppo": self.ppo.model_dump(),
            "episode_window": self.callback.state(),
        }
        scale = self.model.get_env().venv
        if isinstance(scale, VecFleetRewardScale):
            run["fleet_reward_scale"] = scale.state()
        (directory / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")

    def close(self) -> None:
        """Close the environments."""
        self.model.get_env().close()
