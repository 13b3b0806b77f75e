"""Training: presets, episode statistics, checkpoints, and a Tune run killed and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import kill_session
from typer.testing import CliRunner

from envs.scenarios import ELASTIC_SCENARIOS, TRAINING_SCENARIOS
from eval.cli import app
from slo.prometheus_server import free_port
from training.config import PresetError, load_preset
from training.learner import make_training_env
from training.perf import TrialSpeed
from training.run import point_best, resolve_best

TINY = {
    "name": "tiny",
    "timesteps": 2048,
    "chunk_timesteps": 512,
    "scenarios": ["steady", "flash-crowd"],
    "env_kwargs": {"episode_hours": 0.25, "warmup_s": 120.0},
    "ppo": {"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 2, "net_arch": [32, 32]},
}


def write_preset(directory: Path, **changes) -> Path:
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY | changes))
    return path


@pytest.mark.parametrize(
    ("name", "scenarios", "elastic"),
    [
        ("quick", TRAINING_SCENARIOS, None),
        ("standard", TRAINING_SCENARIOS, None),
        ("standard-v3", TRAINING_SCENARIOS, None),
        ("elastic", ELASTIC_SCENARIOS, True),
    ],
)
def test_bundled_presets_train_on_every_scenario_of_their_fleet_kind(
    name: str, scenarios: tuple[str, ...], elastic: bool | None
) -> None:
    preset = load_preset(name)
    assert set(preset.scenarios) == set(scenarios)
    assert preset.env_kwargs.elastic is elastic
    assert preset.timesteps % preset.chunk_timesteps == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scenarios": ["steady", "tsunami"]}, "scenarios: Value error, unknown scenario"),
        ({"scenarios": ["steady", "mixed"]}, "scenario 'mixed' is held out"),
        (
            {"scenarios": ["steady", "slow-ramp"]},
            "scenarios ['slow-ramp'] are elastic scenarios, the preset's environment is fixed "
            "(set env_kwargs.elastic: true",
        ),
        (
            {"scenarios": ["steady", "slow-ramp"], "env_kwargs": {"elastic": True}},
            "scenarios ['steady'] are fixed-fleet scenarios, the preset's environment is elastic",
        ),
        ({"ppo": {"learning_rate": -1.0}}, "ppo.learning_rate: Input should be greater than 0"),
        ({"ppo": {"n_envs": 2, "n_steps": 128, "batch_size": 100}}, "batch_size 100 must divide"),
        ({"timesteps": 1000}, "timesteps 1000 must be a multiple of one rollout"),
        ({"ppo": {"gama": 0.9}}, "ppo.gama: Extra inputs are not permitted"),
        ({"workers": 3}, "workers 3 must divide ppo.n_envs 2"),
        ({"workers": 0}, "workers: Input should be greater than or equal to 1"),
        ({"env_kwargs": {"episode_hours": 0}}, "env_kwargs.episode_hours: Input should be greater"),
        (
            {"env_kwargs": {"randomisation": {"load_scale": [1.5, 0.4]}}},
            "env_kwargs.randomisation: Value error, load_scale: Value error, must satisfy",
        ),
        (
            {"env_kwargs": {"action_filter": {"max_step": 5}}},
            "env_kwargs.action_filter: Value error, action_filter.max_step must be in (0, 2]",
        ),
        (
            {"env_kwargs": {"reward": {"overload_weights": {"latency": 2}}}},
            "env_kwargs.reward: Value error, reward.overload_weights: unknown SLI kind(s)",
        ),
        (
            {"search": {"grace_timesteps": 512, "space": {"n_envs": {"choice": [1, 2]}}}},
            "cannot search n_envs",
        ),
        (
            {"search": {"grace_timesteps": 512, "space": {"gamma": {"uniform": [0.99, 0.9]}}}},
            "uniform bounds must satisfy low < high",
        ),
    ],
)
def test_bad_preset_names_the_field(tmp_path: Path, changes: dict, message: str) -> None:
    path = write_preset(tmp_path, **changes)
    with pytest.raises(PresetError, match="tiny.yaml") as error:
        load_preset(path)
    assert message in str(error.value)


def test_the_retrain_preset_hands_its_ingredients_to_the_environment() -> None:
    preset = load_preset("standard-v3")
    env = make_training_env(preset.scenarios, preset.env_kwargs.as_kwargs()).unwrapped
    assert env.action_filter.max_step == 0.1
    assert env.reward_config.smoothness > 0 and env.reward_config.overload_weights["ttft"] > 1
    assert env.randomisation.load_scale == (0.7, 1.6)
    assert env.randomisation.prompt_scale == env.randomisation.output_scale == (0.5, 3.0)


def test_unreadable_presets_are_reported(tmp_path: Path) -> None:
    with pytest.raises(
        PresetError, match="no preset 'nonesuch'.*bundled: elastic, quick, standard"
    ):
        load_preset("nonesuch")
    broken = tmp_path / "broken.yaml"
    broken.write_text("timesteps: [1, 2\n")
    with pytest.raises(PresetError, match="not valid YAML"):
        load_preset(broken)


def test_cli_rejects_bad_preset_and_missing_run(tmp_path: Path) -> None:
    bad = write_preset(tmp_path, scenarios=["trace-conv"])
    result = CliRunner().invoke(app, ["train", "--preset", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "held out" in result.output
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "nothing to resume" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "2", "--num-cpus", "1"], "the largest node of the Ray cluster has 1 CPUs"),
        (["--address", "127.0.0.1:{port}"], "no Ray head answers there"),
        (["--address", "nowhere"], "expected HOST:PORT of the Ray head"),
    ],
)
def test_cli_refuses_a_run_it_cannot_place_before_writing_anything(
    tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "runs" / "r"
    options = [option.format(port=free_port()) for option in options]
    command = ["train", "--preset", str(write_preset(tmp_path)), "--out", str(out), *options]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.parent.exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_trial_reserves_one_bundle_of_a_cpu_per_worker(tmp_path: Path, workers: int) -> None:
    from training.run import TrainRequest, _trainable

    preset = load_preset("quick").with_overrides(workers=workers)
    trainable = _trainable(TrainRequest(preset, [0], tmp_path / "r"))
    # One bundle: Tune places it on a single node, where the environment processes start.
    assert trainable._resources.bundles == [{"CPU": float(workers)}]


def _learned(workers: int) -> tuple[dict, np.ndarray, str]:
    """Metrics, policy parameters and rollout class after one tiny rollout of seed 3."""
    import torch

    from training.learner import PPOLearner

    # The recorded figures observed contract v2 (presets now default to v3).
    env_kwargs = TINY["env_kwargs"] | {"contract": 2}
    path = write_preset(Path(tempfile.mkdtemp()), env_kwargs=env_kwargs)
    preset = load_preset(path).with_overrides(workers=workers)
    learner = PPOLearner.create(preset, seed=3)
    try:
        metrics = learner.learn(256)
        parameters = torch.cat([p.detach().flatten() for p in learner.model.policy.parameters()])
        return metrics, parameters.double().numpy(), type(learner.model.get_env().venv).__name__
    finally:
        learner.close()


def test_one_worker_trains_as_before_workers_existed() -> None:
    metrics, parameters, rollouts = _learned(workers=1)
    assert rollouts == "DummyVecEnv"
    # Recorded with the code before the workers field (commit b0146b7), seed 3.
    assert metrics["episodes"] == 8
    assert metrics["mean_episode_reward"] == pytest.approx(-132.57867625, rel=1e-9)
    assert parameters.sum() == pytest.approx(-14.530184993947842, rel=1e-6)


def test_a_chunk_reports_the_time_spent_collecting_rollouts() -> None:
    metrics, _, _ = _learned(workers=1)
    # Collection (environments, policy forward, buffer) and the update both take time.
    assert 0.0 < metrics["chunk_rollout_seconds"] < metrics["chunk_seconds"]


@pytest.mark.slow
def test_rollout_workers_repeat_their_run_and_its_episodes() -> None:
    first, second = _learned(workers=2), _learned(workers=2)
    assert first[2] == second[2] == "WorkerVecEnv"
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0]["episodes"] == second[0]["episodes"] == 8
    # The environments step through the episodes one worker would see.
    assert first[0]["mean_episode_reward"] == pytest.approx(-132.57867625, rel=1e-9)


def test_ppo_cost_is_measured_on_the_preset_environments_spaces_and_episodes() -> None:
    from training.learner import make_training_env
    from training.perf import _NullFleetEnv, ppo_seconds_per_step

    preset = load_preset("quick")
    fleet = make_training_env(preset.scenarios, preset.env_kwargs.as_kwargs())
    null = _NullFleetEnv(fleet.observation_space, fleet.action_space, fleet.unwrapped.max_steps)
    null.reset(seed=0)
    ends = [null.step(null.action_space.sample())[3] for _ in range(fleet.unwrapped.max_steps)]
    assert ends.count(True) == 1 and ends[-1]
    assert ppo_seconds_per_step(preset, rollouts=1) > 0


class ScriptedBudgets(gym.Env):
    """Emits a fixed sequence of ``budget_remaining`` values (reset first, then one per step)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self, budgets: list[list[float]]) -> None:
        self.budgets = budgets

    def _info(self) -> dict:
        return {"budget_remaining": dict(enumerate(self.budgets[self.t]))}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), self._info()

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, False, self.t == len(self.budgets) - 1, self._info()


def test_exhaustions_count_budgets_crossing_zero() -> None:
    from training.callbacks import EpisodeBudgetStats

    # SLO 0 exhausted at reset (not counted); 1 crosses once; 2 crosses, recovers, crosses again.
    budgets = [[-0.1, 0.5, 0.2], [-0.2, 0.1, -0.1], [-0.3, 0.0, 0.1], [-0.3, -0.1, 0.0]]
    env = EpisodeBudgetStats(ScriptedBudgets(budgets))
    for _ in range(2):
        env.reset()
        infos = [env.step(np.zeros(1))[4] for _ in range(len(budgets) - 1)]
        assert "budget_exhaustions" not in infos[0]
        assert infos[-1]["budget_exhaustions"] == 3


def test_checkpoint_restores_weights_normalisation_and_steps(tmp_path: Path) -> None:
    import torch

    from training.learner import PPOLearner

    preset = load_preset(write_preset(tmp_path))
    learner = PPOLearner.create(preset, seed=3, commit="abc", log_dir=tmp_path / "tb")
    metrics = learner.learn(256)
    assert metrics["timesteps"] == 256 and metrics["episodes"] > 0
    learner.save(tmp_path / "ckpt")
    run = json.loads((tmp_path / "ckpt" / "run.json").read_text())
    assert run["preset"] == "tiny" and run["seed"] == 3 and run["commit"] == "abc"
    assert run["scenarios"] == ["steady", "flash-crowd"] and run["timesteps"] == 256
    # The contract is recorded: export rebuilds the environment the policy observed.
    assert run["env_kwargs"] == {"episode_hours": 0.25, "warmup_s": 120.0, "contract": 3}
    assert run["metrics"]["mean_episode_reward"] == pytest.approx(metrics["mean_episode_reward"])
    assert run["metrics"]["budget_exhaustions_per_episode"] >= 0

    restored = PPOLearner.restore(tmp_path / "ckpt", preset, seed=3)
    assert restored.timesteps == 256
    before, after = learner.model.get_env(), restored.model.get_env()
    np.testing.assert_array_equal(before.obs_rms.mean, after.obs_rms.mean)
    for a, b in zip(
        learner.model.policy.parameters(), restored.model.policy.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert restored.learn(256)["timesteps"] == 512
    assert restored.callback.episodes > metrics["episodes"]


@pytest.mark.parametrize(
    ("scenarios", "env_kwargs"),
    [
        (TINY["scenarios"], TINY["env_kwargs"]),
        (["slow-ramp"], {"episode_hours": 0.25, "elastic": True}),
    ],
)
def test_a_new_policy_starts_at_the_neutral_knobs(
    tmp_path: Path, scenarios: list[str], env_kwargs: dict
) -> None:
    from envs.contract import neutral_knob_values
    from training.learner import PPOLearner

    ppo = TINY["ppo"] | {"log_std_init": -1.0}
    path = write_preset(tmp_path, ppo=ppo, scenarios=scenarios, env_kwargs=env_kwargs)
    learner = PPOLearner.create(load_preset(path), seed=0)
    observations = learner.model.get_env().reset()
    actions, _ = learner.model.predict(observations, deterministic=True)
    contract = learner.model.get_env().env_method("get_wrapper_attr", "action_contract")[0]
    assert len(contract.names) == (9 if env_kwargs.get("elastic") else 7)
    neutral = contract.encode(neutral_knob_values(contract.names))
    np.testing.assert_allclose(actions, np.broadcast_to(neutral, actions.shape), atol=0.05)
    assert float(learner.model.policy.log_std.mean()) == -1.0
    learner.close()


def test_learning_curves_are_drawn_from_the_trials_logs(tmp_path: Path) -> None:
    from stable_baselines3.common.logger import configure

    from training.report import plot_learning_curves

    for trial in ("seed0_a", "seed1_b"):
        logger = configure(str(tmp_path / trial / "tensorboard"), ["tensorboard"])
        for step in range(1, 6):
            logger.record("rollout/ep_rew_mean", -100.0 / step)
            logger.record("reward_components/burn/ttft-1s", 1.0 / step)
            logger.record("burn_rate/ttft-1s", 2.0 / step)
            logger.dump(step * 1000)
        logger.close()
    out = plot_learning_curves(tmp_path, tmp_path / "curves.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="no trial"):
        plot_learning_curves(tmp_path / "empty", tmp_path / "none.png")


def test_best_is_a_symlink_or_a_pointer_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "trial" / "checkpoint_000002"
    checkpoint.mkdir(parents=True)
    link = point_best(tmp_path, str(checkpoint))
    assert link.is_symlink() and resolve_best(tmp_path) == str(checkpoint.resolve())
    link = point_best(tmp_path, "s3://bucket/run/trial/checkpoint_000002")
    assert not link.is_symlink()
    assert resolve_best(tmp_path) == "s3://bucket/run/trial/checkpoint_000002"


def _results(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    preset, out = write_preset(tmp_path), tmp_path / "runs" / "tiny"
    command = [sys.executable, "-m", "eval.cli", "train", "--out", str(out), "--num-cpus", "1"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [*command, "--preset", str(preset)], stdout=log, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + 300  # Ray and numba start slowly on a loaded machine
    # Tune writes a checkpoint before the result row that reports it: wait for both.
    while not list(out.glob("seed0_*/checkpoint_*/run.json")) or not any(
        path.stat().st_size for path in out.glob("seed0_*/result.json")
    ):
        assert first.poll() is None and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.2)
    kill_session(first.pid)
    first.wait()
    (trial_dir,) = out.glob("seed0_*")
    steps_at_kill = max(r["timesteps"] for r in _results(trial_dir))
    assert steps_at_kill < TINY["timesteps"]

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Start-up lines are progress (stderr): stdout stays for what scripts read (perf --json).
    assert "starting Ray" in resumed.stderr and "starting Ray" not in resumed.stdout

    results = _results(trial_dir)
    restarts = [r for r in results if r["iterations_since_restore"] == 1]
    assert len(restarts) == 2, "the trial was not restored"
    # The restored trial continued from the checkpoint, one chunk on, instead of from zero.
    assert restarts[1]["timesteps"] >= results[0]["timesteps"] + TINY["chunk_timesteps"]
    assert restarts[1]["timesteps"] <= steps_at_kill + TINY["chunk_timesteps"]
    assert results[-1]["timesteps"] == TINY["timesteps"]
    # perf train's reading of these rows: collection is part of learning, the update the rest.
    speed = TrialSpeed.from_results(trial_dir)
    assert speed.collection_steps_per_s > speed.steps_per_s > 0
    assert 0.0 < speed.update_share < 1.0

    summary = json.loads((out / "summary.json").read_text())
    (trial,) = summary["trials"]
    assert trial["steps"] == TINY["timesteps"] and trial["error"] is None
    assert trial["budget_exhaustions_per_episode"] is not None
    best = Path(resolve_best(out))
    assert best == Path(trial["checkpoint"]).resolve()
    assert {"model.zip", "vecnormalize.pkl", "run.json"} <= {p.name for p in best.iterdir()}
    assert json.loads((best / "run.json").read_text())["timesteps"] == TINY["timesteps"]
    assert list((trial_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "learning_curves.png").stat().st_size > 10_000


def test_the_recorded_commit_marks_a_dirty_checkout(tmp_path: Path) -> None:
    from training.run import git_commit

    assert git_commit(tmp_path) is None  # not a checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    clean = git_commit(tmp_path)
    assert clean is not None and len(clean) == 40
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"
