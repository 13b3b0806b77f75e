"""Export a trained checkpoint to ONNX plus manifest (torch side; the runtime needs neither).

A checkpoint directory holds ``model.zip`` (``PPO.save``), ``vecnormalize.pkl``
(``VecNormalize.save``) and ``run.json`` (see :class:`policies.manifest.Provenance`). The export
keeps the deterministic actor only::

    raw observation -> VecNormalize's normalisation (in float64, as VecNormalize computes it)
                    -> mlp_extractor.policy_net -> action_net -> clip to [-1, 1]

which is what ``model.predict(vecnorm.normalize_obs(obs), deterministic=True)`` returns, then,
for a checkpoint trained with ``env_kwargs.action_filter``, the same rate limit the environment
applied (:mod:`policies.action_filter`). The graph is checked with ``onnx.checker``, and
onnxruntime's actions are compared with stable-baselines3's (filtered by the environment's numpy
filter) on random observations before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import stable_baselines3
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from envs.contract import ROLES
from envs.fleet_env import LLMFleetEnv
from policies.action_filter import append_rate_limit
from policies.manifest import (
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    Envelope,
    ManifestError,
    Normalisation,
    PolicyManifest,
    Provenance,
    spec_to_json,
)
from policies.runtime import load_policy, manifest_path
from slo.engine import BudgetEngine

#: Largest |onnxruntime - stable-baselines3| action difference an export accepts.
PARITY_TOLERANCE = 1e-5
#: Share of parity observations drawn beyond the observation bounds (to exercise clipping).
OUTSIDE_SHARE = 0.2


class ExportError(ValueError):
    """A checkpoint cannot be exported; the message says which file or field and why."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    onnx_path: Path
    manifest_path: Path
    manifest: PolicyManifest
    onnx_bytes: int
    parity_max_abs_error: float
    seconds: float

    def summary(self) -> str:
        """One line: preset, shapes, spec, parity, size."""
        m = self.manifest
        return (
            f"{m.provenance.preset} (seed {m.provenance.seed}, {m.provenance.timesteps} steps): "
            f"{m.observation_contract.size} features -> {len(m.action_contract.knobs)} knobs, "
            f"spec {m.service}@{m.spec_hash}, opset {m.opset}, {self.onnx_bytes / 1024:.1f} KiB, "
            f"parity max |diff| {self.parity_max_abs_error:.1e}, {self.seconds:.1f} s; "
            f"envelope: {m.envelope.summary()}"
        )


class DeterministicActor(torch.nn.Module):
    """Raw observation -> normalisation -> the actor's mean action -> clip to [-1, 1].

    Parameters
    ----------
    policy:
        A stable-baselines3 actor-critic policy with a diagonal Gaussian over a Box action space
        bounded by [-1, 1] (the action contract's).
    normalisation:
        VecNormalize's observation statistics.
    """

    def __init__(self, policy: ActorCriticPolicy, normalisation: Normalisation) -> None:
        super().__init__()
        self.features = policy.pi_features_extractor
        self.policy_net = policy.mlp_extractor.policy_net
        self.action_net = policy.action_net
        mean = np.asarray(normalisation.mean, dtype=np.float64)
        std = np.sqrt(np.asarray(normalisation.var, dtype=np.float64) + normalisation.epsilon)
        # float64, as VecNormalize normalises: the network then sees bit-identical inputs.
        self.register_buffer("obs_mean", torch.from_numpy(mean))
        self.register_buffer("obs_std", torch.from_numpy(std))
        self.clip = normalisation.clip

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x = (observation.to(torch.float64) - self.obs_mean) / self.obs_std
        if self.clip is not None:
            x = torch.clamp(x, -self.clip, self.clip)
        latent = self.policy_net(self.features(x.to(torch.float32)))
        return torch.clamp(self.action_net(latent), -1.0, 1.0)


def parity_observations(
    low: np.ndarray, high: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` random float32 observations: most within ``[low, high]``, :data:`OUTSIDE_SHARE`
    up to one range-width beyond it on either side (to exercise the clipping)."""
    width = high - low
    inside = rng.uniform(low, high, size=(n, low.shape[0]))
    outside = rng.uniform(low - width, high + width, size=(n, low.shape[0]))
    beyond = rng.random(n) < OUTSIDE_SHARE
    return np.where(beyond[:, None], outside, inside).astype(np.float32)


def _read_run(checkpoint: Path) -> Provenance:
    path = checkpoint / "run.json"
    try:
        data = json.loads(path.read_text())
        return Provenance.from_dict(data, where="")
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {checkpoint} a training checkpoint?)") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON: {exc}") from None
    except ManifestError as exc:
        raise ExportError(f"{path}: {exc}") from None


def _build_env(checkpoint: Path, run: Provenance) -> LLMFleetEnv:
    """The training environment, built only for its contracts and SLO spec."""
    try:
        return LLMFleetEnv(scenario=list(run.scenarios), **run.env_kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ExportError(
            f"{checkpoint / 'run.json'}: cannot build the environment from 'scenarios' and "
            f"'env_kwargs': {exc}"
        ) from None


def _load_model(checkpoint: Path, env: LLMFleetEnv) -> tuple[PPO, VecNormalize]:
    for name in ("model.zip", "vecnormalize.pkl"):
        if not (checkpoint / name).is_file():
            raise ExportError(f"{checkpoint / name}: not found")
    model = PPO.load(checkpoint / "model.zip", device="cpu")
    policy = model.policy
    if not isinstance(policy.action_dist, DiagGaussianDistribution) or policy.squash_output:
        raise ExportError(
            f"{checkpoint}: only a diagonal-Gaussian policy without squashing is exported, got "
            f"{type(policy.action_dist).__name__}"
        )
    for what, space, expected in (
        ("observation", model.observation_space, env.observation_space),
        ("action", model.action_space, env.action_space),
    ):
        if space.shape != expected.shape:
            raise ExportError(
                f"{checkpoint}: the model's {what} space {space.shape} differs from the "
                f"environment's {expected.shape}: the contract changed since training"
            )
    vecnorm = VecNormalize.load(str(checkpoint / "vecnormalize.pkl"), DummyVecEnv([lambda: env]))
    return model, vecnorm


def _normalisation(vecnorm: VecNormalize, size: int) -> Normalisation:
    if not vecnorm.norm_obs:
        return Normalisation((0.0,) * size, (1.0,) * size, clip=None, epsilon=0.0)
    return Normalisation(
        mean=tuple(float(x) for x in vecnorm.obs_rms.mean),
        var=tuple(float(x) for x in vecnorm.obs_rms.var),
        clip=float(vecnorm.clip_obs),
        epsilon=float(vecnorm.epsilon),
    )


def _to_onnx(actor: DeterministicActor, n_features: int, opset: int) -> bytes:
    """Export with the TorchScript-based exporter (the dynamo one needs onnxscript)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            actor.eval(),
            (torch.zeros(1, n_features, dtype=torch.float32),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    model = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    return model


#: ``(actions, observations) -> actions``: what the environment does to a policy's actions.
ActionFilter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def parity_error(
    model: bytes,
    ppo: PPO,
    vecnorm: VecNormalize,
    observations: np.ndarray,
    action_filter: ActionFilter | None = None,
) -> float:
    """Largest |onnxruntime action - ``ppo.predict(normalised, deterministic=True)``|, the
    latter passed through ``action_filter`` when given."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (ours,) = session.run([OUTPUT_NAME], {INPUT_NAME: observations})
    theirs, _ = ppo.predict(vecnorm.normalize_obs(observations), deterministic=True)
    if action_filter is not None:
        theirs = action_filter(theirs, observations)
    return float(np.max(np.abs(ours - theirs)))


def _environment_filter(env: LLMFleetEnv) -> ActionFilter | None:
    """The environment's action filter as a function of the observation, ``None`` without."""
    rate_limit = env.action_filter
    if rate_limit is None:
        return None
    return lambda actions, observations: rate_limit.apply_observed(
        actions, observations, env.observation_contract, env.action_contract
    )


def _with_filter(model: bytes, env: LLMFleetEnv) -> bytes:
    """The graph with the environment's action filter appended (unchanged without one)."""
    if env.action_filter is None:
        return model
    graph = onnx.load_from_string(model)
    filtered = append_rate_limit(
        graph, env.action_filter, env.observation_contract, env.action_contract
    )
    return filtered.SerializeToString()


def _export_actor(
    checkpoint: Path, env: LLMFleetEnv, opset: int, samples: int, seed: int
) -> tuple[bytes, Normalisation, float]:
    """The checkpoint's actor as checked ONNX bytes, its normalisation and its parity error."""
    ppo, vecnorm = _load_model(checkpoint, env)
    normalisation = _normalisation(vecnorm, env.observation_contract.size)
    actor = DeterministicActor(ppo.policy, normalisation)
    model = _with_filter(_to_onnx(actor, env.observation_contract.size, opset), env)
    low, high = env.observation_contract.bounds()
    observations = parity_observations(low, high, samples, np.random.default_rng(seed))
    error = parity_error(model, ppo, vecnorm, observations, _environment_filter(env))
    if not error <= PARITY_TOLERANCE:
        raise ExportError(
            f"{checkpoint}: onnxruntime differs from stable-baselines3 by {error:.2e} "
            f"(tolerance {PARITY_TOLERANCE:.0e}); nothing written"
        )
    return model, normalisation, error


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    opset: int = MIN_OPSET,
    parity_samples: int = 1000,
    seed: int = 0,
) -> ExportResult:
    """Export a training checkpoint to ``out`` (``.onnx``) and its manifest (``.json``).

    Parameters
    ----------
    checkpoint:
        Checkpoint directory (``model.zip``, ``vecnormalize.pkl``, ``run.json``).
    out:
        Path of the ONNX file; the manifest goes beside it with suffix ``.json``.
    opset:
        ONNX opset (at least :data:`MIN_OPSET`).
    parity_samples:
        Random observations on which onnxruntime must match stable-baselines3 within
        :data:`PARITY_TOLERANCE` (nothing is written otherwise).
    seed:
        Seed of those observations.

    Raises
    ------
    ExportError
        The checkpoint is incomplete or inconsistent, or the exported graph fails its checks.
    """
    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the minimum {MIN_OPSET}")
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output must end in .onnx (the manifest goes beside it)")
    run = _read_run(checkpoint)
    env = _build_env(checkpoint, run)
    model, normalisation, error = _export_actor(checkpoint, env, opset, parity_samples, seed)
    manifest = PolicyManifest(
        observation_contract=env.observation_contract,
        action_contract=env.action_contract,
        spec=spec_to_json(env.slo_spec),
        spec_hash=BudgetEngine(env.slo_spec).spec_fingerprint(),
        normalisation=normalisation,
        onnx_sha256=hashlib.sha256(model).hexdigest(),
        opset=opset,
        provenance=_provenance(run, checkpoint, error, parity_samples, env),
        envelope=training_envelope(env, training_fleet_names(run.env_kwargs)),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model)
    manifest_path(out).write_text(manifest.to_json())
    # Read back through the runtime, as a server would: the pair must load for this env.
    load_policy(
        out,
        observation_contract=env.observation_contract,
        action_contract=env.action_contract,
        spec=env.slo_spec,
    )
    return ExportResult(
        onnx_path=out,
        manifest_path=manifest_path(out),
        manifest=manifest,
        onnx_bytes=len(model),
        parity_max_abs_error=error,
        seconds=time.perf_counter() - start,
    )


def training_envelope(env: LLMFleetEnv, fleet_names: tuple[str, ...]) -> Envelope:
    """The envelope of a policy trained in ``env``: over every fleet it draws from, each pool
    role's replica range (0 fewest where a fleet lacks the role), the models, GPUs and the SLO
    spec."""
    per_fleet = [f.role_replicas(env.elastic) for f in env.fleets]
    roles = {}
    for role in ROLES:
        ranges = [replicas.get(role, (0, 0)) for replicas in per_fleet]
        if any(high > 0 for _, high in ranges):
            roles[role] = (min(low for low, _ in ranges), max(high for _, high in ranges))
    return Envelope(
        roles=roles,
        models=tuple(sorted({m for f in env.fleets for m in f.model_names})),
        gpus=tuple(sorted({g for f in env.fleets for g in f.gpu_names})),
        spec_service=env.slo_spec.service,
        spec_digest=BudgetEngine(env.slo_spec).spec_fingerprint(),
        fleets=fleet_names,
    )


def training_fleet_names(env_kwargs: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the fleets a run's environments drew from (``fleets``, or ``fleet``; file
    stems, each once: a fleet listed twice is drawn twice as often), ``reference`` for the
    environments' own."""
    kwargs = env_kwargs
    paths = kwargs.get("fleets") or ([kwargs["fleet"]] if kwargs.get("fleet") else [])
    return tuple(dict.fromkeys(Path(p).stem for p in paths)) or ("reference",)


def _provenance(
    run: Provenance, checkpoint: Path, error: float, samples: int, env: LLMFleetEnv
) -> Provenance:
    export: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "parity_max_abs_error": error,
        "parity_samples": samples,
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    if env.action_filter is not None:
        export["action_filter"] = env.action_filter.to_dict()
    return replace(run, export=export)
