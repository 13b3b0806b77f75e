"""ONNX export of a trained checkpoint, the manifest, the numpy/onnxruntime loader, OnnxController.

The tests build their own tiny checkpoint once per module and export it: an untrained PPO policy
of the environment's shapes (its action head scaled up so that actions reach the [-1, 1] clip)
and a VecNormalize whose statistics come from observations within the contract's bounds. Parity
needs the shapes and a non-trivial normalisation, not a good policy, and skipping training keeps
a run (and each mutant of ``scripts/mutation.py export``) to seconds.
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import gymnasium
import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="export needs the train extra (torch, sb3)")
pytest.importorskip("onnx", reason="export needs the train extra (onnx)")

import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import stable_baselines3  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from agents.base import ControlContext, Controller  # noqa: E402
from envs.contract import ActionContract, ObservationContract  # noqa: E402
from envs.fleet_env import LLMFleetEnv  # noqa: E402
from eval.cli import app  # noqa: E402
from eval.policy_controller import OnnxController  # noqa: E402
from policies.export import (  # noqa: E402
    PARITY_TOLERANCE,
    DeterministicActor,
    ExportError,
    export_checkpoint,
    parity_observations,
)
from policies.manifest import (  # noqa: E402
    MIN_OPSET,
    Normalisation,
    PolicyManifest,
    spec_to_json,
)
from policies.runtime import (  # noqa: E402
    PolicyFileError,
    PolicyMismatchError,
    load_policy,
    manifest_path,
    read_manifest,
)
from slo.engine import BudgetEngine  # noqa: E402
from slo.spec import ServiceSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV_KWARGS = {"episode_hours": 0.1, "warmup_s": 60.0}
RUN = {
    "preset": "tiny-test",
    "seed": 7,
    "scenarios": ["steady"],
    "env_kwargs": ENV_KWARGS,
    "timesteps": 0,
    "metrics": {"mean_episode_reward": -1.5, "budget_exhaustions_per_episode": 0.0},
    "commit": None,
}


def _env() -> LLMFleetEnv:
    return LLMFleetEnv(scenario=RUN["scenarios"], **ENV_KWARGS)


@pytest.fixture(scope="module")
def env() -> LLMFleetEnv:
    return _env()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, env) -> Path:
    """A checkpoint in the training format: model.zip, vecnormalize.pkl, run.json."""
    path = tmp_path_factory.mktemp("checkpoint")
    venv = VecNormalize(DummyVecEnv([_env]))
    low, high = env.observation_contract.bounds()
    # Training sees a narrow part of the bounds: observations far from it normalise beyond
    # VecNormalize's clip, which the exported graph must apply too.
    middle, spread = (low + high) / 2, (high - low) / 20
    rng = np.random.default_rng(RUN["seed"])
    venv.obs_rms.update(rng.uniform(middle - spread, middle + spread, size=(256, low.shape[0])))
    model = PPO(
        "MlpPolicy", venv, seed=RUN["seed"], policy_kwargs={"net_arch": [16, 16]}, device="cpu"
    )
    with torch.no_grad():  # a fresh action head outputs ~0; scaled, actions reach the clip
        model.policy.action_net.weight.mul_(100.0)
    model.save(path / "model.zip")
    venv.save(str(path / "vecnormalize.pkl"))
    (path / "run.json").write_text(json.dumps(RUN))
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("zoo") / "tiny.onnx")


@pytest.fixture
def policy_copy(exported, tmp_path) -> Path:
    """A copy of the exported pair that a test may damage."""
    shutil.copy(exported.onnx_path, tmp_path / "tiny.onnx")
    shutil.copy(exported.manifest_path, tmp_path / "tiny.json")
    return tmp_path / "tiny.onnx"


@pytest.fixture(scope="module")
def policy(exported):
    return load_policy(exported.onnx_path)


def _observations(env: LLMFleetEnv, n: int, seed: int) -> np.ndarray:
    low, high = env.observation_contract.bounds()
    return parity_observations(low, high, n, np.random.default_rng(seed))


def test_onnxruntime_matches_sb3_predict_on_1000_observations(checkpoint, exported, env) -> None:
    model = PPO.load(checkpoint / "model.zip", device="cpu")
    vecnorm = VecNormalize.load(str(checkpoint / "vecnormalize.pkl"), DummyVecEnv([_env]))
    policy = load_policy(
        exported.onnx_path,
        observation_contract=env.observation_contract,
        action_contract=env.action_contract,
        spec=env.slo_spec,
    )
    obs = _observations(env, 1000, seed=1)
    expected, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    actions = policy.act(obs)
    assert actions.dtype == np.float32 and actions.shape == (1000, len(env.action_contract.knobs))
    np.testing.assert_allclose(actions, expected, rtol=0, atol=PARITY_TOLERANCE)
    # The comparison exercises what the graph adds: non-trivial normalisation, observations
    # beyond the bounds, and actions both inside and at the clip.
    low, high = env.observation_contract.bounds()
    assert np.any((obs < low) | (obs > high))
    assert not np.allclose(vecnorm.obs_rms.var, 1.0)
    normalised = np.abs(vecnorm.normalize_obs(obs))
    assert np.any(normalised == vecnorm.clip_obs) and np.any(normalised < vecnorm.clip_obs)
    assert 0.05 < np.mean(np.abs(actions) == 1.0) < 0.95
    assert exported.parity_max_abs_error <= PARITY_TOLERANCE


def test_parity_observations_reach_one_width_beyond_the_bounds_on_both_sides(env) -> None:
    low, high = env.observation_contract.bounds()
    width = high - low
    obs = _observations(env, 4000, seed=5)
    assert obs.dtype == np.float32 and obs.shape == (4000, low.shape[0])
    assert len(np.unique(obs, axis=0)) == len(obs)  # every observation drawn afresh
    assert np.all((obs >= low - width) & (obs <= high + width))
    beyond = np.any((obs < low) | (obs > high), axis=1)
    assert 0.17 < beyond.mean() < 0.23  # OUTSIDE_SHARE of them, the rest within the bounds
    # Each feature reaches well beyond both of its bounds, and fills its range inside them.
    assert np.all(obs.min(axis=0) < low - width / 2) and np.all(obs.max(axis=0) > high + width / 2)
    inside = obs[~beyond]
    assert np.all(inside.max(axis=0) > high - width / 10)


def test_manifest_records_contracts_spec_normalisation_and_provenance(
    checkpoint, exported, env
) -> None:
    manifest = read_manifest(exported.onnx_path)
    assert manifest == exported.manifest
    assert PolicyManifest.from_json(manifest.to_json()) == manifest
    assert manifest.observation_contract == env.observation_contract
    assert manifest.action_contract == env.action_contract
    assert ServiceSpec.model_validate(manifest["spec"]) == env.slo_spec
    fingerprint = BudgetEngine(env.slo_spec).spec_fingerprint()
    assert manifest.spec_hash == fingerprint == env.observation_contract.spec_digest
    vecnorm = VecNormalize.load(str(checkpoint / "vecnormalize.pkl"), DummyVecEnv([_env]))
    np.testing.assert_array_equal(manifest.normalisation.mean, vecnorm.obs_rms.mean)
    np.testing.assert_array_equal(manifest.normalisation.var, vecnorm.obs_rms.var)
    assert manifest.normalisation.clip == vecnorm.clip_obs
    data = exported.onnx_path.read_bytes()
    assert manifest.onnx_sha256 == hashlib.sha256(data).hexdigest()
    graph = onnx.load_from_string(data)
    assert manifest.opset == graph.opset_import[0].version >= MIN_OPSET
    provenance = manifest.provenance.to_dict()
    assert {k: provenance[k] for k in RUN} == RUN
    export = manifest["provenance"]["export"]
    assert export["parity_samples"] == 1000
    assert export["checkpoint"] == str(checkpoint)
    assert export["parity_max_abs_error"] == exported.parity_max_abs_error
    versions = {"torch": torch, "stable_baselines3": stable_baselines3, "onnx": onnx}
    versions["onnxruntime"] = onnxruntime
    for name, module in versions.items():
        assert export[name] == module.__version__


def _replaced_knob(contract: ActionContract) -> ActionContract:
    first, *rest = contract.knobs
    return ActionContract(knobs=(dataclasses.replace(first, high=0.5), *rest))


def _stricter_spec(env: LLMFleetEnv) -> ServiceSpec:
    payload = spec_to_json(env.slo_spec)
    payload["slos"][0]["objective"] = 0.995
    return ServiceSpec.model_validate(payload)


MISMATCHES = {
    "observation version": (
        "observation_contract",
        lambda env: dataclasses.replace(env.observation_contract, version="x/v99"),
        "version",
    ),
    "observation windows": (
        "observation_contract",
        lambda env: dataclasses.replace(env.observation_contract, windows=("5m", "1h")),
        "windows",
    ),
    "action version": (
        "action_contract",
        lambda env: dataclasses.replace(env.action_contract, version="x/v99"),
        "version",
    ),
    "action knob range": (
        "action_contract",
        lambda env: _replaced_knob(env.action_contract),
        "knobs.cheap_tier_share.high",
    ),
    "spec objective": ("spec", _stricter_spec, "objective"),
    "spec fingerprint": ("spec", lambda env: "0" * 16, "asked to serve spec 0000"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_policy_for_another_contract_or_spec_is_refused_naming_which(case, exported, env) -> None:
    argument, build, detail = MISMATCHES[case]
    with pytest.raises(PolicyMismatchError) as err:
        load_policy(exported.onnx_path, **{argument: build(env)})
    assert set(err.value.mismatches) == {argument}
    assert argument.replace("_", " ") in str(err.value)
    assert detail in err.value.mismatches[argument]


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads(manifest_path(path).read_text())
    edit(data)
    manifest_path(path).write_text(json.dumps(data))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage_with_matching_hash(path: Path) -> None:
    path.write_bytes(b"not an onnx graph")
    digest = hashlib.sha256(b"not an onnx graph").hexdigest()
    _edit_manifest(path, lambda m: m["onnx"].update(sha256=digest))


def _retarget_contract_keep_digest(data: dict) -> None:
    data["observation_contract"]["spec_digest"] = "0" * 16


def _truncate_normalisation(data: dict) -> None:
    for key in ("mean", "var"):
        data["normalisation"][key] = data["normalisation"][key][:3]


BROKEN = {
    "corrupt onnx": (_flip_byte, "SHA-256"),
    "missing onnx": (lambda p: p.unlink(), "ONNX file not found"),
    "graph not onnx": (_garbage_with_matching_hash, "onnxruntime cannot load"),
    "missing manifest": (lambda p: manifest_path(p).unlink(), "manifest not found"),
    "manifest not json": (lambda p: manifest_path(p).write_text("{"), "not valid JSON"),
    "old opset": (
        lambda p: _edit_manifest(p, lambda m: m["onnx"].update(opset=12)),
        "'onnx.opset': 12 is below the minimum 17",
    ),
    "missing spec hash": (
        lambda p: _edit_manifest(p, lambda m: m.pop("spec_hash")),
        "'spec_hash' is missing",
    ),
    "edited contract": (
        lambda p: _edit_manifest(p, _retarget_contract_keep_digest),
        "'observation_contract.digest'",
    ),
    "short normalisation": (
        lambda p: _edit_manifest(p, _truncate_normalisation),
        "'normalisation.mean': has 3 entries",
    ),
    "seed not an integer": (
        lambda p: _edit_manifest(p, lambda m: m["provenance"].update(seed="seven")),
        "'provenance.seed' must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_policy_files_are_refused_clearly(case, policy_copy) -> None:
    damage, message = BROKEN[case]
    damage(policy_copy)
    with pytest.raises(PolicyFileError, match="tiny") as err:
        load_policy(policy_copy)
    assert message in str(err.value)


def test_act_takes_one_observation_or_a_batch(policy, env) -> None:
    obs = _observations(env, 16, seed=2)
    batched = policy.act(obs)
    single = np.stack([policy.act(o) for o in obs])
    assert single.shape == batched.shape == (16, len(env.action_contract.knobs))
    np.testing.assert_array_equal(single, batched)
    assert np.all(np.abs(batched) <= 1.0)
    n = env.observation_contract.size
    for shape in [(n - 1,), (2, n + 1), (2, 2, n)]:
        with pytest.raises(ValueError, match=rf"\(batch, {n}\)"):
            policy.act(np.zeros(shape, dtype=np.float32))


def test_knobs_decode_within_the_knob_ranges(policy, env) -> None:
    for obs in _observations(env, 100, seed=3):
        knobs = policy.knobs(obs)
        assert knobs == env.action_contract.decode(policy.act(obs))
        assert list(knobs) == list(env.action_contract.names)
        for spec in env.action_contract.knobs:
            assert spec.low <= knobs[spec.name] <= spec.high
            assert not spec.integer or knobs[spec.name] == round(knobs[spec.name])
    with pytest.raises(ValueError, match="one observation"):
        policy.knobs(_observations(env, 2, seed=4))


def test_the_runtime_imports_neither_torch_nor_the_simulator(exported, env) -> None:
    script = f"""
import json, sys
import numpy as np
from policies.runtime import load_policy
policy = load_policy({str(exported.onnx_path)!r})
policy.knobs(np.zeros({env.observation_contract.size}, dtype=np.float32))
heavy = ("torch", "stable_baselines3", "ray", "numba", "envs.sim", "envs.fleet_env")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_onnx_controller_acts_like_the_policy(policy, exported, env) -> None:
    context = ControlContext(env.observation_contract, env.action_contract, env.slo_kinds)
    controller = OnnxController(context, exported.onnx_path, spec=env.slo_spec)
    assert isinstance(controller, Controller) and controller.name == "onnx:tiny"
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        action = controller.act(obs)
        np.testing.assert_array_equal(action, policy.act(obs))
        obs, *_ = env.step(action)
    other = ControlContext(ObservationContract(slo_names=("ttft",)), ActionContract(), {})
    with pytest.raises(PolicyMismatchError, match="observation contract"):
        OnnxController(other, exported.onnx_path)


def test_cli_export_writes_the_same_policy_and_a_summary(checkpoint, exported, tmp_path) -> None:
    out = tmp_path / "zoo" / "tiny" / "again.onnx"  # directories made as needed
    result = CliRunner().invoke(app, ["export", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "tiny-test" in result.output
    assert f"{out.stat().st_size / 1024:.1f} KiB" in result.output
    # Exporting is deterministic: the same checkpoint gives the same graph.
    assert out.read_bytes() == exported.onnx_path.read_bytes()
    assert read_manifest(out).spec_hash == exported.manifest.spec_hash
    # Same seed, same parity observations: the same error.
    error = read_manifest(out).provenance.export["parity_max_abs_error"]
    assert error == exported.parity_max_abs_error


def test_the_manifest_records_the_envelope_of_the_training_fleet(exported) -> None:
    envelope = exported.manifest.envelope
    assert not envelope.assumed and envelope.fleets == ("reference",)
    assert envelope.roles == {"strong": (2, 2), "cheap": (1, 1)}
    assert envelope.spec_digest == exported.manifest.spec_hash
    written = json.loads(exported.manifest_path.read_text())["envelope"]
    assert written["roles"]["strong"] == {"min_replicas": 2, "max_replicas": 2}
    assert "envelope: replicas strong 2, cheap 1; models llama-3-8b" in exported.summary()


def test_the_summary_gives_the_size_in_kib(exported) -> None:
    assert "1000.0 KiB" in replace(exported, onnx_bytes=1024 * 1000).summary()


def test_an_export_exactly_at_the_parity_tolerance_is_written(
    checkpoint, exported, tmp_path, monkeypatch
) -> None:
    """The same seed draws the same parity observations, so the error is the same: at a
    tolerance equal to it, the export is within it."""
    monkeypatch.setattr("policies.export.PARITY_TOLERANCE", exported.parity_max_abs_error)
    result = export_checkpoint(checkpoint, tmp_path / "at-tolerance.onnx")
    assert result.parity_max_abs_error == exported.parity_max_abs_error
    assert result.onnx_path.exists()


def _without(key: str):
    return lambda ckpt: _edit_run(ckpt, lambda run: run.pop(key))


def _edit_run(ckpt: Path, edit) -> None:
    run = json.loads((ckpt / "run.json").read_text())
    edit(run)
    (ckpt / "run.json").write_text(json.dumps(run))


class _OtherActions(gymnasium.Env):
    """The fleet's observations, but a single action: a policy trained for another contract."""

    def __init__(self) -> None:
        self.observation_space = _env().observation_space
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)


def _replace_model(ckpt: Path, env, **ppo_kwargs) -> None:
    """A model.zip of another kind of policy (``env``: an environment or a Gymnasium id)."""
    PPO("MlpPolicy", env, seed=0, device="cpu", **ppo_kwargs).save(ckpt / "model.zip")


BAD_CHECKPOINTS = {
    "no run.json": (lambda c: (c / "run.json").unlink(), "run.json: not found"),
    "run.json not JSON": (
        lambda c: (c / "run.json").write_text("{"),
        "run.json: not valid JSON",
    ),
    "unknown env kwarg": (
        lambda c: _edit_run(c, lambda run: run["env_kwargs"].update(nope=1)),
        "run.json: cannot build the environment from 'scenarios' and 'env_kwargs'",
    ),
    "state-dependent noise": (
        lambda c: _replace_model(c, DummyVecEnv([_env]), use_sde=True),
        "only a diagonal-Gaussian policy without squashing is exported, got "
        "StateDependentNoiseDistribution",
    ),
    "another observation space": (
        lambda c: _replace_model(c, "Pendulum-v1"),
        "the model's observation space (3,) differs from the environment's",
    ),
    "another action space": (
        lambda c: _replace_model(c, _OtherActions()),
        "the model's action space (1,) differs from the environment's",
    ),
    "run without timesteps": (_without("timesteps"), "'timesteps' is missing"),
    "unknown scenario": (
        lambda c: _edit_run(c, lambda run: run.update(scenarios=["nowhere"])),
        "unknown scenario 'nowhere'",
    ),
    "no vecnormalize": (
        lambda c: (c / "vecnormalize.pkl").unlink(),
        "vecnormalize.pkl: not found",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_clearly(case, checkpoint, tmp_path) -> None:
    damage, message = BAD_CHECKPOINTS[case]
    broken = shutil.copytree(checkpoint, tmp_path / "checkpoint")
    damage(broken)
    result = CliRunner().invoke(app, ["export", str(broken), "-o", str(tmp_path / "p.onnx")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "p.onnx").exists()


def test_a_policy_trained_without_observation_normalisation_exports_raw(
    checkpoint, tmp_path
) -> None:
    raw = shutil.copytree(checkpoint, tmp_path / "raw")
    vecnorm = VecNormalize.load(str(raw / "vecnormalize.pkl"), DummyVecEnv([_env]))
    vecnorm.norm_obs = False
    vecnorm.save(str(raw / "vecnormalize.pkl"))
    result = export_checkpoint(raw, tmp_path / "raw.onnx", parity_samples=200)
    size = len(result.manifest.normalisation.mean)
    assert result.manifest.normalisation == Normalisation(
        mean=(0.0,) * size, var=(1.0,) * size, clip=None, epsilon=0.0
    )
    assert result.parity_max_abs_error <= PARITY_TOLERANCE


def test_the_graph_takes_and_gives_batches(exported) -> None:
    graph = onnx.load(exported.onnx_path).graph
    for value in (*graph.input, *graph.output):
        first, *rest = value.type.tensor_type.shape.dim
        assert first.dim_param == "batch"
        assert all(d.dim_value > 0 for d in rest)


def test_export_refuses_an_output_without_onnx_suffix(checkpoint, tmp_path) -> None:
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_checkpoint(checkpoint, tmp_path / "policy.bin")


def test_export_refuses_an_opset_below_the_minimum(checkpoint, tmp_path) -> None:
    with pytest.raises(ExportError, match=f"^opset 12 is below the minimum {MIN_OPSET}$"):
        export_checkpoint(checkpoint, tmp_path / "policy.onnx", opset=12)
    assert not (tmp_path / "policy.onnx").exists()


class _DriftingActor(DeterministicActor):
    """An exporter bug: the graph's actions drift by ``DRIFT`` from the policy's."""

    DRIFT = 0.0

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return super().forward(observation) + self.DRIFT


@pytest.mark.parametrize("drift", [2 * PARITY_TOLERANCE, 1e-2])
def test_an_export_beyond_the_parity_tolerance_writes_nothing(
    drift, checkpoint, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(_DriftingActor, "DRIFT", drift)
    monkeypatch.setattr("policies.export.DeterministicActor", _DriftingActor)
    out = tmp_path / "zoo" / "drifted.onnx"
    with pytest.raises(ExportError, match=r"differs from stable-baselines3 by .*nothing written"):
        export_checkpoint(checkpoint, out, parity_samples=200)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_an_export_within_the_parity_tolerance_is_written(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(_DriftingActor, "DRIFT", PARITY_TOLERANCE / 4)
    monkeypatch.setattr("policies.export.DeterministicActor", _DriftingActor)
    start = time.perf_counter()
    result = export_checkpoint(checkpoint, tmp_path / "drifted.onnx", parity_samples=200)
    assert 0.0 < result.seconds <= time.perf_counter() - start
    assert PARITY_TOLERANCE / 8 < result.parity_max_abs_error <= PARITY_TOLERANCE
    assert result.onnx_path.exists() and result.manifest_path.exists()


# ----------------------------------------------------------------------------------------------
# The action filter inside the graph (issue 16)

RATE_LIMIT = {"max_step": 0.1}


@pytest.fixture(scope="module")
def filtered_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """The same checkpoint, its run.json saying it was trained with a rate limit."""
    path = tmp_path_factory.mktemp("filtered-checkpoint")
    for name in ("model.zip", "vecnormalize.pkl"):
        shutil.copy(checkpoint / name, path / name)
    run = RUN | {"env_kwargs": ENV_KWARGS | {"action_filter": RATE_LIMIT}}
    (path / "run.json").write_text(json.dumps(run))
    return path


def test_an_exported_rate_limit_is_the_environment_filter_after_sb3(
    filtered_checkpoint, tmp_path
) -> None:
    result = export_checkpoint(filtered_checkpoint, tmp_path / "filtered.onnx")
    env = LLMFleetEnv(scenario=RUN["scenarios"], action_filter=RATE_LIMIT, **ENV_KWARGS)
    model = PPO.load(filtered_checkpoint / "model.zip", device="cpu")
    vecnorm = VecNormalize.load(str(filtered_checkpoint / "vecnormalize.pkl"), DummyVecEnv([_env]))
    obs = _observations(env, 1000, seed=2)
    raw, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    features = env.action_filter.in_force_features(env.observation_contract, env.action_contract)
    limits = env.action_filter.step_limits(env.action_contract)
    actions = load_policy(result.onnx_path).act(obs)
    expected = env.action_filter.apply_observed(
        raw, obs, env.observation_contract, env.action_contract
    )
    np.testing.assert_allclose(actions, expected, rtol=0, atol=PARITY_TOLERANCE)
    in_force = np.clip(obs[:, features], -1.0, 1.0)
    assert np.all(np.abs(actions - in_force) <= limits + 1e-6)
    assert np.mean(np.abs(actions - raw) > 1e-3) > 0.3  # the filter acts on most of them
    assert result.manifest.provenance.export["action_filter"] == RATE_LIMIT
    assert result.manifest.provenance.env_kwargs["action_filter"] == RATE_LIMIT


def test_an_export_that_drops_the_trained_filter_fails_its_parity_check(
    filtered_checkpoint, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr("policies.export._with_filter", lambda model, env: model)
    out = tmp_path / "unfiltered.onnx"
    with pytest.raises(ExportError, match="differs from stable-baselines3"):
        export_checkpoint(filtered_checkpoint, out, parity_samples=200)
    assert not out.exists()


def test_a_filtered_policy_is_the_policy_moved_at_most_max_step(exported, tmp_path) -> None:
    from envs.action_filter import ActionRateLimit
    from policies.action_filter import filter_policy

    rate_limit = ActionRateLimit(0.05)
    out = filter_policy(exported.onnx_path, tmp_path / "slow.onnx", rate_limit)
    policy, slow = load_policy(exported.onnx_path), load_policy(out)
    manifest = slow.manifest
    assert manifest.onnx_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest.provenance.export["action_filter"] == {"max_step": 0.05}
    assert manifest.observation_contract == policy.manifest.observation_contract
    contract = manifest.observation_contract
    obs = parity_observations(*contract.bounds(), 500, np.random.default_rng(3))
    expected = rate_limit.apply_observed(policy.act(obs), obs, contract, manifest.action_contract)
    np.testing.assert_allclose(slow.act(obs), expected, rtol=0, atol=PARITY_TOLERANCE)
    with pytest.raises(ValueError, match="already carries an action filter"):
        filter_policy(out, tmp_path / "slower.onnx", rate_limit)
