"""Rollout workers that each step a group of environments.

SB3's ``SubprocVecEnv`` gives every environment a process of its own and exchanges one message
pair per environment and step. :class:`WorkerVecEnv` starts one process per CPU instead, each
stepping its share of the environments in a ``DummyVecEnv``: a step costs one message pair
per worker, and a worker's environments run back to back on its core.

When the workers have the machine to themselves, each is pinned to a core of its own. Left to
the scheduler, a worker woken by the learner's message tends to run on the learner's core (the
kernel's wake-affine placement) and preempts it before it has sent the other workers theirs.
On this 2-core machine, one learner outside Ray (``scripts/time_workers.py``, quick preset, two
repeats): one worker 254-265 PPO steps/s, two workers 371-390 pinned, 286-319 unpinned. Inside
a Ray trial (``perf train``) two workers gained 1.08-1.17x, as ``SubprocVecEnv`` did
(1.14-1.25x): Ray's own processes share the two cores.

Each environment is built and seeded exactly as in a ``DummyVecEnv`` of all of them, so the
trajectories do not depend on the number of workers (tested).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    CloudpickleWrapper,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)


def _serve(remote: Any, parent_remote: Any, env_fns: CloudpickleWrapper, cpu: int | None) -> None:
    """A worker's loop: one ``DummyVecEnv`` over its environments, answering the commands of
    :class:`WorkerVecEnv` (local environment indices) until ``close`` or the pipe closes."""
    parent_remote.close()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    envs = DummyVecEnv(env_fns.var)
    commands: dict[str, Callable[..., Any]] = {
        "spaces": lambda: (envs.observation_space, envs.action_space),
        "step": lambda actions: (*envs.step(actions), envs.reset_infos),
        "reset": lambda seeds, options: _reset(envs, seeds, options),
        "get_attr": envs.get_attr,
        "set_attr": envs.set_attr,
        "env_method": lambda name, args, kwargs, indices: envs.env_method(
            name, *args, indices=indices, **kwargs
        ),
        "env_is_wrapped": envs.env_is_wrapped,
    }
    try:
        while True:
            command, args = remote.recv()
            if command == "close":
                envs.close()
                break
            remote.send(commands[command](*args))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        remote.close()


def _reset(envs: DummyVecEnv, seeds: list[int | None], options: list[dict]) -> tuple:
    envs._seeds = seeds  # the per-environment seeds the parent was given, as DummyVecEnv keeps them
    envs.set_options(options)
    return envs.reset(), envs.reset_infos


class WorkerVecEnv(VecEnv):
    """Environments stepped in ``workers`` processes, each holding a contiguous group of them.

    Parameters
    ----------
    env_fns:
        One constructor per environment; ``len(env_fns)`` must be a multiple of ``workers``.
    workers:
        Processes to step them in (one per CPU the run may use).
    cpus:
        A core per worker to pin it to, or ``None`` to leave placement to the scheduler (when
        the machine's cores are shared with other runs).
    start_method:
        ``multiprocessing`` start method; ``forkserver`` by default, as in SB3, since the parent
        holds torch's threads.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        workers: int,
        cpus: Sequence[int] | None = None,
        start_method: str = "forkserver",
    ) -> None:
        if workers < 1 or len(env_fns) % workers:
            raise ValueError(f"workers {workers} must divide the {len(env_fns)} environments")
        if cpus is not None and len(cpus) != workers:
            raise ValueError(f"{len(cpus)} cpus given to pin {workers} workers to")
        self.group = len(env_fns) // workers
        ctx = mp.get_context(start_method)
        self.remotes, self.processes = [], []
        for worker, start in enumerate(range(0, len(env_fns), self.group)):
            remote, work_remote = ctx.Pipe()
            fns = CloudpickleWrapper(list(env_fns[start : start + self.group]))
            cpu = None if cpus is None else cpus[worker]
            # daemon: a worker never outlives a learner that died
            process = ctx.Process(target=_serve, args=(work_remote, remote, fns, cpu), daemon=True)
            process.start()
            work_remote.close()
            self.remotes.append(remote)
            self.processes.append(process)
        self.closed = False
        self.waiting = False
        observation_space, action_space = self._ask_one(0, "spaces")
        super().__init__(len(env_fns), observation_space, action_space)

    def _ask_one(self, worker: int, command: str, *args: Any) -> Any:
        self.remotes[worker].send((command, args))
        return self.remotes[worker].recv()

    def _ask(self, commands: dict[int, tuple]) -> list[Any]:
        """Send each worker its command, then gather the answers (the workers run meanwhile)."""
        for worker, message in commands.items():
            self.remotes[worker].send(message)
        return [self.remotes[worker].recv() for worker in commands]

    def _slices(self) -> list[slice]:
        return [slice(start, start + self.group) for start in range(0, self.num_envs, self.group)]

    def step_async(self, actions: np.ndarray) -> None:
        for remote, part in zip(self.remotes, self._slices(), strict=True):
            remote.send(("step", (actions[part],)))
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        results = [remote.recv() for remote in self.remotes]
        self.waiting = False
        obs, rewards, dones, infos, reset_infos = zip(*results, strict=True)
        self.reset_infos = [info for group in reset_infos for info in group]
        flat_infos = [info for group in infos for info in group]
        return self._join(obs), np.concatenate(rewards), np.concatenate(dones), flat_infos

    def reset(self) -> VecEnvObs:
        commands = {
            worker: ("reset", (self._seeds[part], self._options[part]))
            for worker, part in enumerate(self._slices())
        }
        obs, reset_infos = zip(*self._ask(commands), strict=True)
        self.reset_infos = [info for group in reset_infos for info in group]
        self._reset_seeds()
        self._reset_options()
        return self._join(obs)

    def _join(self, groups: Sequence[VecEnvObs]) -> VecEnvObs:
        if isinstance(self.observation_space, spaces.Dict):
            return {key: np.concatenate([g[key] for g in groups]) for key in groups[0]}
        return np.concatenate(groups)

    def _by_worker(self, indices: VecEnvIndices) -> dict[int, list[int]]:
        """The environments ``indices`` names, as local indices per worker."""
        local: dict[int, list[int]] = {}
        for index in self._get_indices(indices):
            local.setdefault(index // self.group, []).append(index % self.group)
        return local

    def _ask_envs(self, indices: VecEnvIndices, command: str, *args: Any) -> list[Any]:
        by_worker = self._by_worker(indices)
        answers = self._ask({w: (command, (*args, local)) for w, local in by_worker.items()})
        return [value for group in answers for value in group]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._ask_envs(indices, "get_attr", attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        by_worker = self._by_worker(indices)
        self._ask({w: ("set_attr", (attr_name, value, local)) for w, local in by_worker.items()})

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        return self._ask_envs(indices, "env_method", method_name, method_args, method_kwargs)

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return self._ask_envs(indices, "env_is_wrapped", wrapper_class)

    def close(self) -> None:
        if self.closed:
            return
        if self.waiting:
            for remote in self.remotes:
                remote.recv()
        for remote in self.remotes:
            remote.send(("close", ()))
        for process in self.processes:
            process.join()
        for remote in self.remotes:
            remote.close()
        self.closed = True
