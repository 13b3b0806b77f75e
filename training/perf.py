"""``budgetpilot perf train``: PPO throughput of one Ray trial alone, of two at once, and of
one trial collecting its rollouts in two workers, with where a trial's time goes.

Every measurement runs a preset (the quick one unless told) as real Tune trials (one thread per
process, one CPU per worker); a trial's throughput is its learning timesteps over its learning
time, leaving out its first chunk (process start, numba cache loading, torch warm-up). Each chunk
also reports the time spent collecting rollouts; the rest is PPO's update, which does not run in
the rollout workers, so it bounds what more workers can gain (Amdahl's law).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from training.config import Preset, load_preset
from training.run import TrainRequest, run_training

PRESET = "quick"


@dataclass(frozen=True)
class TrialSpeed:
    """Learning throughput of one trial, first chunk excluded: end to end (wall and CPU time
    of the trial's process) and of its rollout collection alone."""

    steps_per_s: float
    steps_per_cpu_s: float
    collection_steps_per_s: float
    update_share: float

    @classmethod
    def from_results(cls, trial_dir: Path) -> TrialSpeed:
        """Read a trial's Tune results (``result.json``)."""
        text = (trial_dir / "result.json").read_text()
        rows = [json.loads(line) for line in text.splitlines()][1:]
        steps = sum(r["chunk_timesteps"] for r in rows)
        wall = sum(r["chunk_seconds"] for r in rows)
        cpu = sum(r["chunk_cpu_seconds"] for r in rows)
        rollout = sum(r["chunk_rollout_seconds"] for r in rows)
        return cls(steps / wall, steps / cpu, steps / rollout, 1.0 - rollout / wall)


def _trial_speeds(
    trials: int, timesteps: int, root: Path, workers: int = 1, preset_name: str = PRESET
) -> list[TrialSpeed]:
    """Speeds of ``trials`` trials run side by side, each with ``workers`` rollout workers, on a
    local Ray with just the CPUs they need."""
    preset = load_preset(preset_name)
    chunk = preset.ppo.rollout_steps
    preset = preset.with_overrides(timesteps=timesteps, chunk_timesteps=chunk, workers=workers)
    out = root / f"trials{trials}-workers{workers}"
    request = TrainRequest(preset, list(range(trials)), out)
    run_training(request, num_cpus=trials * workers, verbose=0)
    return [TrialSpeed.from_results(d) for d in sorted(out.glob("seed*")) if d.is_dir()]


class _NullFleetEnv(gym.Env):
    """The spaces and episode length of a preset's environment, and no work: PPO on it costs
    what PPO itself costs per step (policy forward, normalisation, buffer, update)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, steps: int) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.steps = steps
        self._zeros = np.zeros(observation_space.shape, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self._zeros.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._t += 1
        return self._zeros.copy(), -1.0, False, self._t >= self.steps, {}


def ppo_seconds_per_step(preset: Preset, rollouts: int = 3) -> float:
    """PPO's own CPU seconds per step with the preset's hyperparameters: learning on
    :class:`_NullFleetEnv` (the fastest of ``rollouts`` rollout-and-update cycles, the first
    one left out as warm-up)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from training.learner import make_training_env

    torch.set_num_threads(1)
    env = make_training_env(preset.scenarios, preset.env_kwargs.as_kwargs())
    null = {
        "observation_space": env.observation_space,
        "action_space": env.action_space,
        "steps": env.unwrapped.max_steps,
    }
    ppo = preset.ppo
    vec = make_vec_env(_NullFleetEnv, ppo.n_envs, env_kwargs=null, vec_env_cls=DummyVecEnv)
    venv = VecNormalize(vec, **preset.vecnormalize.model_dump())
    model = PPO("MlpPolicy", venv, seed=0, device="cpu", **ppo.sb3_kwargs())
    model.learn(ppo.rollout_steps)
    seconds = []
    for _ in range(rollouts):
        start = time.process_time()
        model.learn(ppo.rollout_steps, reset_num_timesteps=False)
        seconds.append(time.process_time() - start)
    return min(seconds) / ppo.rollout_steps


def run(timesteps: int = 16384, preset: str = PRESET) -> dict[str, float | str]:
    """Measure the figures of ``budgetpilot perf train``.

    ``ppo_steps_per_s`` (one trial), ``ppo_steps_per_s_parallel`` (two trials at once, summed),
    ``parallel_efficiency`` (their ratio to twice one trial); ``rollout_scaling_2``: one trial's
    steps/s with two rollout workers over one worker's, end to end, and
    ``collection_scaling_2``, the same for the rollout collection alone;
    ``update_share_1_worker``, the share of one worker's learning time spent in PPO's update, and
    ``rollout_scaling_2_bound``, the end-to-end scaling two workers would reach if collection
    scaled perfectly and the update stayed as it is, ``1 / (u + (1 - u) / 2)``;
    ``learn_over_sim``, one trial's steps per CPU-second over the raw simulator's on the
    preset's scenarios (what share of the simulation's speed learning keeps);
    ``ppo_ms_per_step``, PPO's own CPU time per step (:func:`ppo_seconds_per_step`), and
    ``learn_over_sim_ceiling``, the ``learn_over_sim`` an environment costing nothing beyond its
    simulator (no budget engine, observation or resets) would give: ``sim / (sim + ppo)`` in
    time per step.

    Wall-clock efficiency also drops when other processes share the cores; ``cpu_efficiency``
    (steps per CPU-second of the two trials over one trial's) does not, and stays near 1 when
    each trial keeps to one thread and the trials do not slow each other down.

    Parameters
    ----------
    timesteps:
        Timesteps per trial; at least two rollouts of the preset (one is warm-up).
    preset:
        The preset run (``standard-v3``: what its randomised, filtered environment costs).
    """
    from agents.perf import sim_steps_per_cpu_s

    recipe = load_preset(preset)
    rollout = recipe.ppo.rollout_steps
    if timesteps < 2 * rollout or timesteps % rollout:
        raise ValueError(f"--timesteps must be a multiple of {rollout}, at least {2 * rollout}")
    with tempfile.TemporaryDirectory(prefix="budgetpilot-perf-") as root:
        (single,) = _trial_speeds(1, timesteps, Path(root), preset_name=preset)
        pair = _trial_speeds(2, timesteps, Path(root), preset_name=preset)
        (two_workers,) = _trial_speeds(1, timesteps, Path(root), 2, preset)
    sim = sim_steps_per_cpu_s(recipe.scenarios, **recipe.env_kwargs.as_kwargs())
    ppo = ppo_seconds_per_step(recipe)
    parallel = sum(t.steps_per_s for t in pair)
    update = single.update_share
    return {
        "preset": preset,
        "timesteps": timesteps,
        "ppo_steps_per_s": single.steps_per_s,
        "ppo_steps_per_s_parallel": parallel,
        "parallel_efficiency": parallel / (2 * single.steps_per_s),
        "ppo_steps_per_cpu_s": single.steps_per_cpu_s,
        "cpu_efficiency": sum(t.steps_per_cpu_s for t in pair) / (2 * single.steps_per_cpu_s),
        "ppo_steps_per_s_2_workers": two_workers.steps_per_s,
        "rollout_scaling_2": two_workers.steps_per_s / single.steps_per_s,
        "collection_steps_per_s_1_worker": single.collection_steps_per_s,
        "collection_steps_per_s_2_workers": two_workers.collection_steps_per_s,
        "collection_scaling_2": two_workers.collection_steps_per_s / single.collection_steps_per_s,
        "update_share_1_worker": update,
        "rollout_scaling_2_bound": 1.0 / (update + (1.0 - update) / 2.0),
        "sim_steps_per_cpu_s": sim,
        "learn_over_sim": single.steps_per_cpu_s / sim,
        "ppo_ms_per_step": ppo * 1e3,
        "learn_over_sim_ceiling": 1.0 / (1.0 + ppo * sim),
    }
