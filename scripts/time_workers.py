"""PPO steps/s of one learner with one rollout worker, and with N workers pinned and unpinned.

Measures what ``training/vec_env.py`` states about pinning: the quick preset's learner, in this
process (no Ray), timed over ``--timesteps`` after one warm-up rollout, alternating the
variants ``--repeats`` times so that a machine whose speed drifts shows it in every variant.

    python scripts/time_workers.py --workers 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time

import training.learner as learner_module
from training.config import load_preset
from training.learner import PPOLearner
from training.trainable import pin_threads


def steps_per_s(workers: int, pinned: bool, timesteps: int, preset: str) -> float:
    """One learner's PPO steps per wall-second with ``workers`` rollout workers."""
    recipe = load_preset(preset).with_overrides(workers=workers)
    own_cores = learner_module.own_cores
    if not pinned:
        learner_module.own_cores = lambda _workers: None
    try:
        learner = PPOLearner.create(recipe, seed=0)
    finally:
        learner_module.own_cores = own_cores
    try:
        learner.learn(recipe.ppo.rollout_steps)
        start = time.perf_counter()
        learner.learn(timesteps)
        return timesteps / (time.perf_counter() - start)
    finally:
        learner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timesteps", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    pin_threads()
    variants = {"1_worker": (1, False), "pinned": (args.workers, True)}
    variants["unpinned"] = (args.workers, False)
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, (workers, pinned) in variants.items():
            figures[name].append(steps_per_s(workers, pinned, args.timesteps, args.preset))
            print(f"repeat {repeat}: {name} {figures[name][-1]:.0f} steps/s", flush=True)
    print(json.dumps({"workers": args.workers, "steps_per_s": figures}, indent=1))


if __name__ == "__main__":
    main()
