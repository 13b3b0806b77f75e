"""``budgetpilot perf env``: the environment's speed, its overhead over the raw simulator, and
PPO's throughput on it relative to CartPole."""

from __future__ import annotations

import time

from envs.fleet_env import LLMFleetEnv

DEFAULT_SCENARIO = "steady"


def _env_seconds(scenario: str, steps: int, seed: int) -> tuple[float, LLMFleetEnv]:
    """Wall time of ``steps`` environment steps with neutral knobs (reset excluded)."""
    env = LLMFleetEnv(scenario, episode_hours=steps * 30.0 / 3600.0 + 1.0)
    env.reset(seed=seed)
    action = env.action_contract.encode(env.knob_values)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return time.perf_counter() - start, env


def _sim_seconds(env: LLMFleetEnv, steps: int, seed: int) -> float:
    """Wall time of the same simulation driven directly: the same draw, knobs and intervals."""
    env.reset(seed=seed)  # rebuilds the same scenario draw and simulator
    sim, knobs = env.sim, env.sim.knobs
    start = time.perf_counter()
    for _ in range(steps):
        sim.set_knobs(knobs)
        sim.advance(sim.now + env.control_interval_s)
        sim.fleet_stats()
    return time.perf_counter() - start


def _ppo_steps_per_s(make_env, timesteps: int, n_envs: int) -> float:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env(make_env, n_envs=n_envs, seed=0)
    model = PPO("MlpPolicy", vec, n_steps=128, batch_size=256, n_epochs=4, seed=0, device="cpu")
    model.learn(256)  # warm-up: torch and numba first calls
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    vec.close()
    return timesteps / elapsed


def _ratio_ceiling(cartpole_ppo_steps_per_s: float, sim_steps_per_s: float) -> float:
    """PPO's steps/s on an environment exactly as fast as the simulator (PPO's own time per step
    taken from CartPole, whose environment is nearly free), over CartPole's."""
    seconds_per_step = 1.0 / cartpole_ppo_steps_per_s + 1.0 / sim_steps_per_s
    return 1.0 / seconds_per_step / cartpole_ppo_steps_per_s


def run(scenario: str = DEFAULT_SCENARIO, steps: int = 400, ppo_timesteps: int = 8192) -> dict:
    """Measure the figures of ``budgetpilot perf env`` (one thread for torch, numba, BLAS)."""
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    _env_seconds(scenario, 20, seed=0)  # compile and warm caches
    env_s, env = _env_seconds(scenario, steps, seed=1)
    sim_s = _sim_seconds(env, steps, seed=1)
    ours = _ppo_steps_per_s(lambda: LLMFleetEnv(scenario), ppo_timesteps, n_envs=8)
    cartpole = _ppo_steps_per_s(lambda: gym.make("CartPole-v1"), ppo_timesteps, n_envs=8)
    return {
        "scenario": scenario,
        "env_steps_per_s": steps / env_s,
        "sim_steps_per_s": steps / sim_s,
        "overhead_vs_sim": env_s / sim_s - 1.0,
        "ppo_steps_per_s": ours,
        "cartpole_ppo_steps_per_s": cartpole,
        "ppo_steps_per_s_ratio": ours / cartpole,
        # The ratio if the environment cost nothing beyond the raw simulator: the bound the
        # simulation itself sets on ppo_steps_per_s_ratio.
        "ppo_ratio_ceiling_at_sim_speed": _ratio_ceiling(cartpole, steps / sim_s),
        "requests_per_env_step": env.setup.workload.mean_rate * env.control_interval_s,
    }
