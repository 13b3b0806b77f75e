"""Rewards scaled per fleet, for presets that draw several fleets (``fleet_reward_scale``).

Fleets differ in how much budget any controller can save: at neutral knobs, an episode of the
training scenarios returns about -1,490 on the reference fleet, -2,160 on ``single-tier`` and
-4,960 on ``tiered-h100-a100`` (its 70B strong tier burns the latency budgets of the default
spec whatever the knobs). ``VecNormalize`` divides every reward by one running scale, so the
episodes of the dearest fleet dominate the advantages and the reference fleet's are learned
from less. :class:`VecFleetRewardScale` first divides each reward by the running standard
deviation of the discounted return on its own fleet (the scale ``VecNormalize`` keeps, kept per
fleet, as in multi-task normalisation such as PopArt), so every fleet weighs alike; the episode
returns that ``Monitor`` records, and the metrics, stay the environment's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class VecFleetRewardScale(VecEnvWrapper):
    """Divide each environment's reward by the return scale of the fleet it runs on
    (``info["fleet"]``).

    Parameters
    ----------
    venv:
        The fleet environments (their infos name their fleet).
    gamma:
        Discount of the returns whose scale is kept (PPO's).
    epsilon:
        Added to the variance, as in ``VecNormalize``.
    """

    def __init__(self, venv: VecEnv, gamma: float, epsilon: float = 1e-8) -> None:
        super().__init__(venv)
        self.gamma, self.epsilon = gamma, epsilon
        self.scales: dict[str, RunningMeanStd] = {}
        self._returns = np.zeros(self.num_envs)

    def reset(self) -> VecEnvObs:
        self._returns[:] = 0.0
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        self._returns = self._returns * self.gamma + rewards
        scaled = np.empty_like(rewards)
        for i, info in enumerate(infos):
            scale = self.scales.setdefault(info["fleet"], RunningMeanStd(shape=()))
            scale.update(self._returns[i : i + 1])
            scaled[i] = rewards[i] / np.sqrt(scale.var + self.epsilon)
        self._returns[dones] = 0.0
        return obs, scaled, dones, infos

    def state(self) -> dict[str, dict[str, float]]:
        """The scales per fleet, for a checkpoint's ``run.json``."""
        return {
            fleet: {"mean": float(s.mean), "var": float(s.var), "count": float(s.count)}
            for fleet, s in self.scales.items()
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (a restored run keeps its scales)."""
        for fleet, saved in state.items():
            scale = RunningMeanStd(shape=())
            scale.mean, scale.var, scale.count = saved["mean"], saved["var"], saved["count"]
            self.scales[fleet] = scale
