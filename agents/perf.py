"""``budgetpilot perf env``: the environment's speed, its overhead over the raw simulator, and
the cost of a step against fleet size.

Every figure is in steps per CPU-second of this process (one thread for torch, numba and BLAS),
the fastest of a few rounds, with the environment's and the simulator's rounds interleaved: on a
machine shared with other work, wall-clock rates also count the time spent waiting for a core,
and change from one second to the next. PPO's throughput on the environment over the raw
simulator's (``learn_over_sim``) is measured on real training trials by ``perf train``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from envs.fleet_env import LLMFleetEnv
from envs.scenarios import GovernedFleet, Scenario, ScenarioSetup, get_scenario

DEFAULT_SCENARIO = "steady"
#: Replicas of the reference fleet (2 strong, 1 cheap) and the fleet sizes whose steps/s
#: ``perf env`` prints.
REFERENCE_REPLICAS = 3
FLEET_SIZES = (3, 16, 64)
#: Rounds of each measurement; each figure is the fastest round.
ROUNDS = 5


def _env_seconds(env: LLMFleetEnv, steps: int, seed: int) -> float:
    """CPU time of ``steps`` environment steps with neutral knobs (reset excluded)."""
    env.reset(seed=seed)
    action = env.action_contract.encode(env.knob_values)
    start = time.process_time()
    for _ in range(steps):
        env.step(action)
    return time.process_time() - start


def _timed_env(scenario: str, steps: int, **env_kwargs) -> LLMFleetEnv:
    """An environment whose episodes outlast ``steps`` steps."""
    return LLMFleetEnv(scenario, episode_hours=steps * 30.0 / 3600.0 + 1.0, **env_kwargs)


def _sim_seconds(env: LLMFleetEnv, steps: int, seed: int) -> float:
    """CPU time of the same simulation driven directly: the same draw, knobs and intervals."""
    env.reset(seed=seed)  # rebuilds the same scenario draw and simulator
    sim, knobs = env.sim, env.sim.knobs
    start = time.process_time()
    for _ in range(steps):
        sim.set_knobs(knobs)
        sim.advance(sim.now + env.control_interval_s)
        sim.fleet_stats()
    return time.process_time() - start


def sim_steps_per_cpu_s(
    scenarios: Sequence[str], steps: int = 100, rounds: int = 3, **env_kwargs
) -> float:
    """Raw simulator steps per CPU-second over a mix of scenarios drawn equally often (the
    mean CPU time of a step over the scenarios, each the fastest of ``rounds``)."""
    seconds = [
        min(
            _sim_seconds(_timed_env(name, steps, **env_kwargs), steps, seed)
            for seed in range(rounds)
        )
        / steps
        for name in scenarios
    ]
    return 1.0 / float(np.mean(seconds))


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


def fleet_seconds(
    replicas: int, steps: int, rounds: int = ROUNDS, seed: int = 1
) -> tuple[float, float]:
    """CPU seconds per step of ``steady`` on a fleet of ``replicas`` replicas: the
    environment's and the raw simulator's on the same draw (each the fastest of ``rounds``)."""
    env = _timed_env(DEFAULT_SCENARIO, steps)
    env.scenario = scaled_fleet(get_scenario(DEFAULT_SCENARIO), replicas)
    env.scenarios = (env.scenario,)
    env_s, sim_s = _interleaved_seconds(env, steps, rounds, seed)
    return env_s / steps, sim_s / steps


def _interleaved_seconds(
    env: LLMFleetEnv, steps: int, rounds: int, seed: int
) -> tuple[float, float]:
    """The fastest of ``rounds`` CPU times of ``steps`` steps of the environment and of the raw
    simulator, their rounds interleaved so that both see the same machine."""
    env_s = sim_s = float("inf")
    for _ in range(rounds):
        env_s = min(env_s, _env_seconds(env, steps, seed))
        sim_s = min(sim_s, _sim_seconds(env, steps, seed))
    return env_s, sim_s


def reset_seconds(scenario: str, resets: int = 10) -> tuple[float, int]:
    """CPU seconds of one reset (the scenario's draw, its fleet and the warm-up before the
    first step), the mean over ``resets`` seeds; and the steps of the scenario's episodes."""
    env = LLMFleetEnv(scenario)
    env.reset(seed=0)
    start = time.process_time()
    for seed in range(1, resets + 1):
        env.reset(seed=seed)
    return (time.process_time() - start) / resets, env.max_steps


def run(scenario: str = DEFAULT_SCENARIO, steps: int = 200, rounds: int = ROUNDS) -> dict:
    """Measure the figures of ``budgetpilot perf env``.

    ``overhead_vs_sim`` is the environment's CPU time per step over the raw simulator's on the
    same draw, minus 1: what the budget engine, the observation, the reward and the knobs add.
    The fleet-size figures (``env_steps_per_s_<N>_replicas``, ``overhead_vs_sim_<N>_replicas``)
    step ``steady`` on the reference fleet scaled to 3, 16 and 64 replicas
    (:func:`scaled_fleet`), with fewer steps the larger the fleet. ``reset_ms`` is a reset's
    CPU time (the draw and the warm-up before the first step), ``reset_share`` its share of an
    episode's (reset plus steps): work every episode costs learning, none of it a step.

    Parameters
    ----------
    scenario:
        The scenario stepped.
    steps:
        Steps per round.
    rounds:
        Rounds of each measurement, the environment's and the simulator's interleaved.
    """
    import torch

    torch.set_num_threads(1)
    _env_seconds(_timed_env(scenario, 20), 20, seed=0)  # compile and warm caches
    env = _timed_env(scenario, steps)
    env_s, sim_s = _interleaved_seconds(env, steps, rounds, seed=1)
    figures = {
        "scenario": scenario,
        "clock": "process CPU time, fastest round",
        "env_steps_per_s": steps / env_s,
        "sim_steps_per_s": steps / sim_s,
        "overhead_vs_sim": env_s / sim_s - 1.0,
        "requests_per_env_step": env.setup.workload.mean_rate * env.control_interval_s,
    }
    for replicas in FLEET_SIZES:
        fleet_steps = max(10, steps * REFERENCE_REPLICAS // replicas)
        env_step, sim_step = fleet_seconds(replicas, fleet_steps, rounds)
        figures[f"env_steps_per_s_{replicas}_replicas"] = 1.0 / env_step
        figures[f"overhead_vs_sim_{replicas}_replicas"] = env_step / sim_step - 1.0
    reset, episode_steps = reset_seconds(scenario)
    figures["reset_ms"] = reset * 1e3
    figures["reset_share"] = reset / (reset + episode_steps * env_s / steps)
    return figures
