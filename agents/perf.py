"""``budgetpilot perf env``: the environment's speed, its overhead over the raw simulator, PPO's
throughput on it relative to the raw simulator, and the cost of a step against fleet size."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np

from envs.fleet_env import LLMFleetEnv
from envs.scenarios import GovernedFleet, Scenario, ScenarioSetup, get_scenario

DEFAULT_SCENARIO = "steady"
#: Replicas of the reference fleet (2 strong, 1 cheap) and the fleet sizes whose steps/s
#: ``perf env`` prints.
REFERENCE_REPLICAS = 3
FLEET_SIZES = (3, 16, 64)


def _env_seconds(env: LLMFleetEnv, steps: int, seed: int) -> float:
    """Wall time of ``steps`` environment steps with neutral knobs (reset excluded)."""
    env.reset(seed=seed)
    action = env.action_contract.encode(env.knob_values)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    return time.perf_counter() - start


def _timed_env(scenario: str, steps: int) -> LLMFleetEnv:
    """An environment whose episodes outlast ``steps`` steps."""
    return LLMFleetEnv(scenario, episode_hours=steps * 30.0 / 3600.0 + 1.0)


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


def scaled_fleet(scenario: Scenario, replicas: int) -> Scenario:
    """``scenario`` on a fleet of about ``replicas`` replicas: every pool of the reference fleet
    and the arrival rate scaled by ``replicas / 3``, so that each replica sees the reference
    load. Only for Poisson-driven scenarios (``steady``, ``diurnal``, ``flash-crowd``)."""
    factor = replicas / REFERENCE_REPLICAS

    def build(rng: np.random.Generator, warmup_s: float, fleet: GovernedFleet) -> ScenarioSetup:
        setup = scenario.build(rng, warmup_s, fleet)
        pools = [
            pool.model_copy(update={"replicas": max(1, round(pool.replicas * factor))})
            for pool in setup.config.pools
        ]
        workload = copy.deepcopy(setup.workload)
        workload.process.rate *= factor
        config = setup.config.model_copy(update={"pools": pools})
        return replace(setup, config=config, workload=workload)

    return replace(scenario, name=f"{scenario.name}-{replicas}-replicas", builder=build)


def fleet_steps_per_s(replicas: int, steps: int, seed: int = 1) -> float:
    """Environment steps/s of the ``steady`` scenario on a fleet of ``replicas`` replicas."""
    env = _timed_env(DEFAULT_SCENARIO, steps)
    env.scenario = scaled_fleet(get_scenario(DEFAULT_SCENARIO), replicas)
    env.scenarios = (env.scenario,)
    return steps / _env_seconds(env, steps, seed)


def run(scenario: str = DEFAULT_SCENARIO, steps: int = 400, ppo_timesteps: int = 8192) -> dict:
    """Measure the figures of ``budgetpilot perf env`` (one thread for torch, numba, BLAS).

    ``learn_over_sim`` is SB3 PPO's steps/s on the environment (eight environments in one
    process) over the raw simulator's steps/s on the same scenario: the share of the simulation's
    own speed that learning keeps. The fleet-size figures step ``steady`` on the reference fleet
    scaled to 3, 16 and 64 replicas (:func:`scaled_fleet`), with fewer steps the larger the fleet.
    """
    import torch

    torch.set_num_threads(1)
    _env_seconds(_timed_env(scenario, 20), 20, seed=0)  # compile and warm caches
    env = _timed_env(scenario, steps)
    env_s = _env_seconds(env, steps, seed=1)
    sim_s = _sim_seconds(env, steps, seed=1)
    ppo = _ppo_steps_per_s(lambda: LLMFleetEnv(scenario), ppo_timesteps, n_envs=8)
    figures = {
        "scenario": scenario,
        "env_steps_per_s": steps / env_s,
        "sim_steps_per_s": steps / sim_s,
        "overhead_vs_sim": env_s / sim_s - 1.0,
        "ppo_steps_per_s": ppo,
        "learn_over_sim": ppo * sim_s / steps,
        "requests_per_env_step": env.setup.workload.mean_rate * env.control_interval_s,
    }
    for replicas in FLEET_SIZES:
        fleet_steps = max(10, steps * REFERENCE_REPLICAS // replicas)
        figures[f"env_steps_per_s_{replicas}_replicas"] = fleet_steps_per_s(replicas, fleet_steps)
    return figures
