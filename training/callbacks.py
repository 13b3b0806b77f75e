"""What a training run measures: budget exhaustions per episode, reward components and burn
rates per SLO, logged to TensorBoard through the stable-baselines3 logger."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

#: Episodes the running metrics (mean episode reward, exhaustions per episode) average over.
EPISODE_WINDOW = 20


class EpisodeBudgetStats(gym.Wrapper):
    """Count, per episode, the SLO budgets that become exhausted.

    An exhaustion is an SLO whose ``info["budget_remaining"]`` crosses from above 0 to 0 or
    below during the episode (a budget already exhausted at reset does not count). At the end of
    an episode, ``info["budget_exhaustions"]`` holds the episode's count.
    """

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._exhausted = self._exhausted_slos(info)
        self._exhaustions = 0
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        exhausted = self._exhausted_slos(info)
        self._exhaustions += len(exhausted - self._exhausted)
        self._exhausted = exhausted
        if terminated or truncated:
            info["budget_exhaustions"] = self._exhaustions
        return obs, reward, terminated, truncated, info

    @staticmethod
    def _exhausted_slos(info: dict[str, Any]) -> set[str]:
        return {name for name, left in info["budget_remaining"].items() if left <= 0.0}


class BudgetMetricsCallback(BaseCallback):
    """Log reward components and step burn rates per SLO, and keep episode statistics.

    Per rollout, the mean over its steps of every ``info["reward_components"]`` entry and of
    every ``info["step_burn_rates"]`` entry is recorded as ``reward_components/<name>`` and
    ``burn_rate/<slo>``; finished episodes update ``rollout/budget_exhaustions_per_episode``.
    Episode returns come from the :class:`stable_baselines3.common.monitor.Monitor` wrapper, so
    they are the environment's rewards, not the normalised ones PPO learns from.

    Parameters
    ----------
    window:
        Finished episodes the running means average over.
    """

    def __init__(self, window: int = EPISODE_WINDOW) -> None:
        super().__init__(verbose=0)
        self.episode_rewards: deque[float] = deque(maxlen=window)
        self.episode_exhaustions: deque[int] = deque(maxlen=window)
        self.episodes = 0
        self._sums: defaultdict[str, float] = defaultdict(float)
        self._steps = 0

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            for name, value in info["reward_components"].items():
                self._sums[f"reward_components/{name}"] += value
            for slo, burn in info["step_burn_rates"].items():
                self._sums[f"burn_rate/{slo}"] += burn
            self._steps += 1
            if "budget_exhaustions" in info:
                self.episodes += 1
                self.episode_rewards.append(float(info["episode"]["r"]))
                self.episode_exhaustions.append(int(info["budget_exhaustions"]))
        return True

    def _on_rollout_end(self) -> None:
        for key, total in self._sums.items():
            self.logger.record(key, total / max(self._steps, 1))
        self._sums.clear()
        self._steps = 0
        if self.episode_exhaustions:
            self.logger.record(
                "rollout/budget_exhaustions_per_episode", float(np.mean(self.episode_exhaustions))
            )

    def metrics(self) -> dict[str, float]:
        """Mean episode reward and budget exhaustions per episode over the window (NaN before
        the first finished episode), and the number of finished episodes."""
        return {
            "mean_episode_reward": _mean(self.episode_rewards),
            "budget_exhaustions_per_episode": _mean(self.episode_exhaustions),
            "episodes": self.episodes,
        }

    def state(self) -> dict[str, Any]:
        """The episode window, for a checkpoint (a resumed trial keeps its running means)."""
        return {
            "rewards": list(self.episode_rewards),
            "exhaustions": list(self.episode_exhaustions),
            "episodes": self.episodes,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.episode_rewards.extend(state["rewards"])
        self.episode_exhaustions.extend(state["exhaustions"])
        self.episodes = int(state["episodes"])


class RolloutTimer(BaseCallback):
    """Wall time PPO spends collecting rollouts (stepping the environments, the policy's
    forward passes, the rollout buffer); the rest of ``learn`` is the update."""

    def __init__(self) -> None:
        super().__init__(verbose=0)
        self.seconds = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.seconds += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def _mean(values: deque) -> float:
    return float(np.mean(values)) if values else float("nan")
