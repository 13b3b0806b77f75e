"""Run an exported policy with numpy and onnxruntime only (what the sidecar imports).

A policy is ``NAME.onnx`` plus its manifest ``NAME.json`` (:mod:`policies.manifest`).
:func:`load_policy` reads both, refuses a file whose SHA-256 differs from the manifest's, and
refuses a policy trained for another observation contract, action contract or SLO spec than the
caller serves, naming which::

    policy = load_policy("policies/zoo/NAME.onnx", observation_contract=contract,
                         action_contract=actions, spec=service_spec)
    knob_values = policy.knobs(observation)

The graph takes raw observations (the normalisation is baked in) and returns actions in [-1, 1].
It computes whatever its input gives it: guarding against NaN or stale observations is the
caller's job (the sidecar falls back to a heuristic), not this module's.

This module must never import torch, stable-baselines3, ray, numba or the simulator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from envs.contract import ActionContract, ObservationContract
from policies.manifest import INPUT_NAME, OUTPUT_NAME, ManifestError, PolicyManifest, spec_to_json
from slo.files import TextFileError, read_text


class PolicyFileError(ValueError):
    """A policy's ONNX file or manifest is missing, unreadable, corrupt or inconsistent."""


class PolicyMismatchError(ValueError):
    """A policy was trained for another contract or SLO spec than the caller serves.

    Attributes
    ----------
    mismatches:
        What differs: keys among ``"spec"``, ``"observation_contract"``, ``"action_contract"``,
        each with a description of the difference.
    """

    def __init__(self, path: Path, mismatches: Mapping[str, str]) -> None:
        self.mismatches = dict(mismatches)
        details = "; ".join(f"{key.replace('_', ' ')}: {text}" for key, text in mismatches.items())
        super().__init__(f"{path}: policy does not match what it is asked to serve: {details}")


def manifest_path(onnx_path: str | Path) -> Path:
    """The manifest beside an ONNX policy: the same path with suffix ``.json``."""
    return Path(onnx_path).with_suffix(".json")


def read_manifest(onnx_path: str | Path) -> PolicyManifest:
    """Read and validate the manifest of the policy at ``onnx_path``.

    Raises
    ------
    PolicyFileError
        The ONNX file or its manifest is missing, or the manifest is unreadable or invalid
        (the message names the field).
    """
    if not Path(onnx_path).is_file():  # named first: the manifest is looked for beside it
        raise PolicyFileError(f"{onnx_path}: ONNX file not found")
    path = manifest_path(onnx_path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise PolicyFileError(
            f"{path}: manifest not found (an exported policy is NAME.onnx plus NAME.json)"
        ) from None
    except (OSError, TextFileError) as exc:
        raise PolicyFileError(f"cannot read the manifest: {exc}") from None
    try:
        return PolicyManifest.from_json(text)
    except ManifestError as exc:
        raise PolicyFileError(f"{path}: invalid manifest: {exc}") from None


def _read_model(onnx_path: Path, manifest: PolicyManifest) -> bytes:
    """The ONNX file's bytes, refused unless they hash to the manifest's SHA-256."""
    try:
        model = onnx_path.read_bytes()
    except FileNotFoundError:
        raise PolicyFileError(f"{onnx_path}: ONNX file not found") from None
    except OSError as exc:
        raise PolicyFileError(f"{onnx_path}: cannot read the ONNX file: {exc}") from None
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.onnx_sha256:
        raise PolicyFileError(
            f"{onnx_path}: SHA-256 {digest[:12]}... differs from the manifest's "
            f"{manifest.onnx_sha256[:12]}...: the file is corrupt or belongs to another manifest"
        )
    return model


def _brief(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, Mapping) and "name" in x for x in value)


_ABSENT = object()
#: Fields derived from others (listed last, as they differ whenever their sources do).
_DERIVED = ("feature_names",)


def _differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Each leaf field in which the policy's JSON differs from the served one, as ``path
    (policy ..., served ...)``; lists of named objects (SLOs, knobs) are compared by name."""
    if ours == theirs:
        return []
    if ours is _ABSENT or theirs is _ABSENT:
        return [f"{path} ({'only the served' if ours is _ABSENT else 'only the policy'} has it)"]
    if _is_named_list(ours) and _is_named_list(theirs):
        ours, theirs = ({x["name"]: x for x in v} for v in (ours, theirs))
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        keys = sorted(
            ours.keys() | theirs.keys(), key=lambda k: (k != "version", k in _DERIVED, str(k))
        )
        nested = (
            _differences(ours.get(k, _ABSENT), theirs.get(k, _ABSENT), f"{path}.{k}".lstrip("."))
            for k in keys
        )
        return [d for found in nested for d in found]
    if isinstance(ours, list) and isinstance(theirs, list):
        only_ours = [x for x in ours if x not in theirs]
        only_theirs = [x for x in theirs if x not in ours]
        if not only_ours and not only_theirs:
            return [f"{path} (same entries in another order)"]
        return [f"{path} (only policy {_brief(only_ours)}, only served {_brief(only_theirs)})"]
    return [f"{path} (policy {_brief(ours)}, served {_brief(theirs)})"]


def _describe(differences: list[str], shown: int = 4) -> str | None:
    if not differences:
        return None
    more = len(differences) - shown
    return ", ".join(differences[:shown]) + (f" and {more} more" if more > 0 else "")


def _spec_mismatch(manifest: PolicyManifest, spec: Any) -> str | None:
    """How the served spec (a ServiceSpec, its JSON, or its fingerprint) differs, if it does."""
    trained = f"trained for spec {manifest.spec_hash} (service {manifest.service!r})"
    if isinstance(spec, str):
        return None if spec == manifest.spec_hash else f"{trained}, asked to serve spec {spec}"
    served = dict(spec) if isinstance(spec, Mapping) else spec_to_json(spec)
    differences = _describe(_differences(dict(manifest.spec), served))
    return None if differences is None else f"{trained}; the served spec differs in {differences}"


def find_mismatches(
    manifest: PolicyManifest,
    *,
    observation_contract: ObservationContract | None = None,
    action_contract: ActionContract | None = None,
    spec: Any = None,
) -> dict[str, str]:
    """What differs between a policy's manifest and what the caller serves (empty: nothing).

    Parameters are as for :func:`load_policy`; ``None`` skips a check.
    """
    found: dict[str, str | None] = {}
    if spec is not None:
        found["spec"] = _spec_mismatch(manifest, spec)
    for key, served in (
        ("observation_contract", observation_contract),
        ("action_contract", action_contract),
    ):
        if served is not None:
            trained = manifest[key].to_dict()
            found[key] = _describe(_differences(trained, served.to_dict()))
    return {key: text for key, text in found.items() if text}


class OnnxPolicy:
    """An exported policy in an onnxruntime session (one thread: the sidecar acts every few
    seconds and must not compete with the engines it governs). Build it with :func:`load_policy`.

    Parameters
    ----------
    model:
        The ONNX file's bytes.
    manifest:
        Its manifest.
    path:
        Where the policy was loaded from (for messages).
    """

    def __init__(self, model: bytes, manifest: PolicyManifest, path: Path) -> None:
        self.manifest = manifest
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception type per failure
            raise PolicyFileError(f"{path}: onnxruntime cannot load the graph: {exc}") from None
        self._check_signature()

    def _check_signature(self) -> None:
        """The graph must map ``observation [batch, n_features]`` to ``action [batch, n_knobs]``."""
        expected = {
            INPUT_NAME: (self._session.get_inputs(), self.n_features),
            OUTPUT_NAME: (self._session.get_outputs(), self.n_knobs),
        }
        for name, (tensors, width) in expected.items():
            if len(tensors) != 1 or tensors[0].name != name or tensors[0].shape[-1] != width:
                found = [(t.name, t.shape) for t in tensors]
                raise PolicyFileError(
                    f"{self.path}: the graph must have one tensor {name!r} of shape "
                    f"[batch, {width}] as the manifest's contracts say, it has {found}"
                )

    @property
    def n_features(self) -> int:
        """Length of an observation (the observation contract's size)."""
        return self.manifest.observation_contract.size

    @property
    def n_knobs(self) -> int:
        """Length of an action (one entry per knob of the action contract)."""
        return len(self.manifest.action_contract.knobs)

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The deterministic action for one observation or a batch.

        Parameters
        ----------
        observation:
            Raw (unnormalised) observation of shape ``(n_features,)`` or ``(batch, n_features)``,
            built by the manifest's observation contract. NaN or Inf are not replaced: the caller
            guards against them.

        Returns
        -------
        np.ndarray
            float32 actions in [-1, 1], shape ``(n_knobs,)`` or ``(batch, n_knobs)``.
        """
        obs = np.asarray(observation, dtype=np.float32)
        batch = obs[np.newaxis] if obs.ndim == 1 else obs
        if batch.ndim != 2 or batch.shape[1] != self.n_features:
            raise ValueError(
                f"observation has shape {obs.shape}, the policy takes ({self.n_features},) or "
                f"(batch, {self.n_features}) (observation contract "
                f"{self.manifest.observation_contract.version})"
            )
        (action,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch)})
        return action[0] if obs.ndim == 1 else action

    def knobs(self, observation: np.ndarray) -> dict[str, float]:
        """The knob values for one observation, decoded by the action contract (in range)."""
        obs = np.asarray(observation)
        if obs.ndim != 1:
            raise ValueError(f"knobs() takes one observation of shape ({self.n_features},)")
        return self.manifest.action_contract.decode(self.act(obs))


def load_policy(
    path: str | Path,
    *,
    observation_contract: ObservationContract | None = None,
    action_contract: ActionContract | None = None,
    spec: Any = None,
) -> OnnxPolicy:
    """Load an exported policy, refusing it unless it fits what the caller serves.

    Parameters
    ----------
    path:
        The ``.onnx`` file; its manifest is the same path with suffix ``.json``.
    observation_contract, action_contract:
        The contracts the caller builds observations and reads actions with (``None``: not
        checked). Any difference, version or field, refuses the policy.
    spec:
        The SLO spec served: a :class:`slo.spec.ServiceSpec`, its JSON (``spec_to_json``) or its
        fingerprint (``BudgetEngine.spec_fingerprint()``); ``None``: not checked.

    Raises
    ------
    PolicyFileError
        The ONNX file or manifest is missing, unreadable, invalid, or their hashes disagree.
    PolicyMismatchError
        The policy was trained for another contract or spec; ``.mismatches`` says which.
    """
    onnx_path = Path(path)
    manifest = read_manifest(onnx_path)
    model = _read_model(onnx_path, manifest)
    mismatches = find_mismatches(
        manifest,
        observation_contract=observation_contract,
        action_contract=action_contract,
        spec=spec,
    )
    if mismatches:
        raise PolicyMismatchError(onnx_path, mismatches)
    return OnnxPolicy(model, manifest, onnx_path)
