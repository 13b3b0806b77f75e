"""WorkerVecEnv: environments grouped in worker processes step exactly as in one process."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from training.learner import make_training_env, own_cores
from training.vec_env import WorkerVecEnv

SCENARIOS = ["steady", "flash-crowd", "replica-failure"]
# Short episodes so that a few dozen steps cross several resets (scenario drawn anew).
ENV_KWARGS = {"episode_hours": 0.1, "control_interval_s": 30.0}


def _vec(workers: int | None, n_envs: int = 4, seed: int = 11):
    make = partial(make_training_env, SCENARIOS, ENV_KWARGS)
    if workers is None:
        return make_vec_env(make, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    kwargs = {"workers": workers}
    return make_vec_env(
        make, n_envs=n_envs, seed=seed, vec_env_cls=WorkerVecEnv, vec_env_kwargs=kwargs
    )


def _rollout(vec, steps: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    rng = np.random.default_rng(5)
    observations, rewards, dones, infos = [vec.reset()], [], [], []
    for _ in range(steps):
        actions = rng.uniform(-1.0, 1.0, (vec.num_envs, *vec.action_space.shape))
        obs, reward, done, info = vec.step(actions.astype(np.float32))
        observations.append(obs)
        rewards.append(reward)
        dones.append(done)
        infos.append(info)
    vec.close()
    return np.array(observations), np.array(rewards), np.array(dones), infos


@pytest.fixture(scope="module")
def one_process():
    return _rollout(_vec(None))


@pytest.mark.parametrize("workers", [1, 4])
def test_workers_step_through_the_episodes_of_one_process(one_process, workers: int) -> None:
    observations, rewards, dones, infos = _rollout(_vec(workers))
    np.testing.assert_array_equal(observations, one_process[0])
    np.testing.assert_array_equal(rewards, one_process[1])
    np.testing.assert_array_equal(dones, one_process[2])
    assert dones.sum() >= 4  # episodes ended and reset inside the workers
    for step, expected in zip(infos, one_process[3], strict=True):
        assert [i["scenario"] for i in step] == [i["scenario"] for i in expected]
        for info, other in zip(step, expected, strict=True):
            if "terminal_observation" in other:
                np.testing.assert_array_equal(
                    info["terminal_observation"], other["terminal_observation"]
                )
                # Monitor's episode statistics (its wall-clock time aside)
                assert info["episode"]["r"] == other["episode"]["r"]
                assert info["episode"]["l"] == other["episode"]["l"]


def test_indices_map_to_their_own_environment() -> None:
    vec = _vec(2)
    try:
        vec.reset()
        for index in range(4):
            vec.set_attr("marker", index, indices=[index])
        assert vec.get_attr("marker") == [0, 1, 2, 3]
        assert vec.get_attr("marker", indices=[3, 0]) == [3, 0]
        assert vec.env_method("get_wrapper_attr", "marker", indices=[2]) == [2]
        assert vec.env_is_wrapped(Monitor, indices=[0, 3]) == [True, True]
    finally:
        vec.close()


def test_seeds_given_after_construction_apply_at_the_next_reset() -> None:
    workers, one = _vec(2), _vec(None)
    try:
        for vec in (workers, one):
            vec.reset()
            vec.seed(123)
        np.testing.assert_array_equal(workers.reset(), one.reset())
    finally:
        workers.close()
        one.close()


def test_vecnormalize_wraps_the_workers() -> None:
    vec = VecNormalize(_vec(2))
    try:
        obs = vec.reset()
        obs, reward, _, _ = vec.step(np.zeros((4, *vec.action_space.shape), np.float32))
        assert obs.shape == (4, *vec.observation_space.shape)
        assert np.isfinite(obs).all() and np.isfinite(reward).all()
    finally:
        vec.close()


@pytest.mark.parametrize("workers", [0, 3, 5])
def test_workers_must_divide_the_environments(workers: int) -> None:
    make = partial(make_training_env, SCENARIOS, ENV_KWARGS)
    with pytest.raises(ValueError, match=f"workers {workers} must divide the 4 environments"):
        WorkerVecEnv([make] * 4, workers)


def test_close_ends_the_worker_processes_and_may_be_repeated() -> None:
    vec = _vec(2)
    vec.reset()
    vec.step_async(np.zeros((4, *vec.action_space.shape), np.float32))
    vec.close()  # while a step is in flight
    vec.close()
    assert [p.exitcode for p in vec.processes] == [0, 0]


def test_workers_are_pinned_to_the_cores_given() -> None:
    make = partial(make_training_env, SCENARIOS, ENV_KWARGS)
    vec = WorkerVecEnv([make] * 4, 2, cpus=[0, 0])
    try:
        assert [os.sched_getaffinity(p.pid) for p in vec.processes] == [{0}, {0}]
    finally:
        vec.close()
    unpinned = WorkerVecEnv([make] * 2, 2)
    try:
        cores = os.sched_getaffinity(0)
        assert [os.sched_getaffinity(p.pid) for p in unpinned.processes] == [cores, cores]
    finally:
        unpinned.close()


def test_a_core_is_named_for_every_worker() -> None:
    make = partial(make_training_env, SCENARIOS, ENV_KWARGS)
    with pytest.raises(ValueError, match="1 cpus given to pin 2 workers"):
        WorkerVecEnv([make] * 4, 2, cpus=[0])


def test_a_trial_pins_its_workers_only_when_it_has_the_cores_to_itself() -> None:
    cores = sorted(os.sched_getaffinity(0))
    assert own_cores(len(cores)) == cores
    assert own_cores(len(cores) + 1) is None
    if len(cores) > 1:
        assert own_cores(len(cores) - 1) is None
