"""Rewards scaled per fleet: each fleet's rewards divided by its own return scale."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from training.config import load_preset
from training.learner import PPOLearner
from training.reward_scale import VecFleetRewardScale


class TwoFleets(gym.Env):
    """Episodes of 5 steps on fleet ``a`` (reward -1) or ``b`` (reward -100), alternating."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self) -> None:
        self.episodes = 0

    def reset(self, *, seed=None, options=None):
        self.t, self.fleet = 0, "ab"[self.episodes % 2]
        self.episodes += 1
        return np.zeros(1, np.float32), {"fleet": self.fleet}

    def step(self, action):
        self.t += 1
        reward = -1.0 if self.fleet == "a" else -100.0
        return np.zeros(1, np.float32), reward, False, self.t == 5, {"fleet": self.fleet}


def _scaled_rewards(steps: int) -> dict[str, list[float]]:
    venv = VecFleetRewardScale(DummyVecEnv([TwoFleets]), gamma=0.99)
    venv.reset()
    by_fleet: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(steps):
        _, rewards, _, infos = venv.step(np.zeros((1, 1), np.float32))
        by_fleet[infos[0]["fleet"]].append(float(rewards[0]))
    return by_fleet


def test_every_fleet_weighs_alike_after_its_own_scale() -> None:
    rewards = _scaled_rewards(400)
    a, b = np.mean(rewards["a"][-50:]), np.mean(rewards["b"][-50:])
    # Raw rewards differ 100-fold; scaled per fleet, both are the same returns in their own units.
    assert a < 0 and b < 0
    assert a == pytest.approx(b, rel=1e-3)


def test_the_scales_survive_a_state_round_trip() -> None:
    venv = VecFleetRewardScale(DummyVecEnv([TwoFleets]), gamma=0.99)
    venv.reset()
    for _ in range(20):
        venv.step(np.zeros((1, 1), np.float32))
    restored = VecFleetRewardScale(DummyVecEnv([TwoFleets]), gamma=0.99)
    restored.load_state(venv.state())
    assert restored.state() == venv.state()
    assert set(venv.state()) == {"a", "b"}


def test_a_restored_learner_keeps_its_fleets_scales(tmp_path: Path) -> None:
    preset = load_preset("quick").model_copy(update={"fleet_reward_scale": True})
    learner = PPOLearner.create(preset, seed=0)
    learner.learn(preset.ppo.rollout_steps)
    learner.save(tmp_path)
    scales = learner.model.get_env().venv.state()
    assert scales and all(s["var"] > 0 for s in scales.values())
    restored = PPOLearner.restore(tmp_path, preset, seed=0)
    assert restored.model.get_env().venv.state() == scales
    # The recorded episode returns stay the environment's own, not the scaled ones.
    assert learner.callback.metrics()["mean_episode_reward"] < -10
