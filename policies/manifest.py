"""The manifest beside an exported policy: what it observes, what it controls, what it was for.

An exported policy is two files: ``NAME.onnx`` (the deterministic actor, observation
normalisation baked in) and ``NAME.json``, this manifest. The manifest carries everything a
server needs to decide whether the policy may govern its fleet, and to use it:

* the observation contract (feature names and order, version) and the action contract (knobs,
  ranges, scales, version), each with its digest;
* the SLO spec the policy was trained for, embedded, with the fingerprint
  :meth:`slo.engine.BudgetEngine.spec_fingerprint` gives it (a sidecar compares its engine's);
* the observation normalisation baked into the graph (mean, variance, clip, epsilon), for the
  record and for re-implementations;
* the ONNX file's SHA-256 and opset, and the provenance (training preset, seed, scenarios,
  timesteps, commit, final metrics, exporter versions);
* the envelope (:class:`Envelope`): the fleets the policy was trained on, as pool roles with
  their replica ranges, models, GPUs and SLO spec; a server refuses a fleet outside it. A
  manifest written before envelopes existed is taken to have the reference fleet's
  (:meth:`Envelope.reference`), with an :class:`EnvelopeAssumedWarning`.

This module depends on numpy and :mod:`envs.contract` only (no pydantic, no torch), so the sidecar
can read manifests. Every missing or invalid field is reported as a :class:`ManifestError` naming
the field.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from envs.contract import ROLES, ActionContract, ObservationContract

MANIFEST_FORMAT = "budgetpilot.policy/v1"
#: Lowest ONNX opset a policy may use (what ``budgetpilot export`` writes).
MIN_OPSET = 17
#: Names of the graph's input and output tensors: float32 ``[batch, n_features]`` and
#: ``[batch, n_knobs]``.
INPUT_NAME = "observation"
OUTPUT_NAME = "action"
#: How the graph's output becomes knob values (recorded in every manifest for readers).
ACTION_MAPPING = (
    "the graph outputs one value per knob of the action contract, in contract order, clipped to "
    "[-1, 1]; a knob's value is KnobSpec.from_unit(u): low + (u + 1) / 2 * (high - low) for "
    "linear knobs, the same in log space for log knobs, rounded for integer knobs"
)

_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest is malformed; the message names the field."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: JSON value checks by the description used in error messages.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "a string or null": lambda v: v is None or isinstance(v, str),
    "an integer": _is_int,
    "a number": _is_number,
    "a number or null": lambda v: v is None or _is_number(v),
    "a boolean": lambda v: isinstance(v, bool),
    "an object": lambda v: isinstance(v, Mapping),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of numbers": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    "a list of objects": lambda v: isinstance(v, list) and all(isinstance(x, Mapping) for x in v),
}


class _Fields:
    """Typed reads from one JSON object, with errors naming the dotted field path."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, Mapping):
            what = f"field {where!r}" if where else "the manifest"
            raise ManifestError(f"{what} must be a JSON object, got {type(data).__name__}")
        self.data, self.where = data, where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: str) -> Any:
        if key not in self.data:
            raise ManifestError(f"field {self.path(key)!r} is missing")
        value = self.data[key]
        if not _KINDS[kind](value):
            raise ManifestError(f"field {self.path(key)!r} must be {kind}, got {value!r:.80}")
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.get(key, "an object"), self.path(key))

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"field {self.path(key)!r}: {problem}")


class _FieldMapping(Mapping[str, Any]):
    """Read-only dict access to a dataclass's fields (``manifest["spec"]`` = ``manifest.spec``)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Normalisation(_FieldMapping):
    """VecNormalize's observation normalisation: ``clip((obs - mean) / sqrt(var + epsilon))``.

    The exported graph applies it (``baked_in``); the manifest records it for readers.

    Parameters
    ----------
    mean, var:
        Running mean and variance of each observation feature, in contract order.
    clip:
        Normalised observations are clipped to ``[-clip, clip]`` (``None``: not normalised).
    epsilon:
        Added to the variance before the square root.
    baked_in:
        Whether the ONNX graph applies the normalisation itself (raw observations go in).
    """

    mean: tuple[float, ...]
    var: tuple[float, ...]
    clip: float | None
    epsilon: float
    baked_in: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "var": list(self.var),
            "clip": self.clip,
            "epsilon": self.epsilon,
            "baked_in": self.baked_in,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "normalisation") -> Normalisation:
        f = _Fields(data, where)
        mean = tuple(float(x) for x in f.get("mean", "a list of numbers"))
        var = tuple(float(x) for x in f.get("var", "a list of numbers"))
        if len(var) != len(mean):
            raise f.fail("var", f"has {len(var)} entries, mean has {len(mean)}")
        if any(v < 0 for v in var):
            raise f.fail("var", "variances must be >= 0")
        clip = f.get("clip", "a number or null")
        if clip is not None and clip <= 0:
            raise f.fail("clip", f"must be > 0, got {clip}")
        epsilon = float(f.get("epsilon", "a number"))
        if epsilon < 0:
            raise f.fail("epsilon", f"must be >= 0, got {epsilon}")
        baked_in = f.get("baked_in", "a boolean")
        return cls(mean, var, None if clip is None else float(clip), epsilon, baked_in)


@dataclass(frozen=True)
class Provenance(_FieldMapping):
    """Where a policy comes from: the training run (``run.json``) and the export.

    Parameters
    ----------
    preset:
        Training preset name.
    seed:
        Training seed.
    scenarios:
        Scenarios trained on (each episode drew one).
    env_kwargs:
        The other :class:`envs.fleet_env.LLMFleetEnv` arguments of training.
    timesteps:
        Environment steps trained.
    commit:
        Git commit of the training code (``None`` when unknown).
    metrics:
        Final training metrics (``mean_episode_reward``, ``budget_exhaustions_per_episode``, ...).
    export:
        Facts of the export: checkpoint path, library versions, parity error.
    """

    preset: str
    seed: int
    scenarios: tuple[str, ...]
    env_kwargs: Mapping[str, Any]
    timesteps: int
    commit: str | None
    metrics: Mapping[str, Any]
    export: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self, "scenarios": list(self.scenarios)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "provenance") -> Provenance:
        """Read a provenance, or a training run's ``run.json`` (``export`` defaults to empty)."""
        f = _Fields(data, where)
        scenarios = tuple(f.get("scenarios", "a list of strings"))
        if not scenarios:
            raise f.fail("scenarios", "names no scenario")
        return cls(
            preset=f.get("preset", "a string"),
            seed=f.get("seed", "an integer"),
            scenarios=scenarios,
            env_kwargs=dict(f.get("env_kwargs", "an object")),
            timesteps=f.get("timesteps", "an integer"),
            commit=f.get("commit", "a string or null"),
            metrics=dict(f.get("metrics", "an object")),
            export=dict(f.get("export", "an object")) if "export" in f.data else {},
        )


class EnvelopeAssumedWarning(UserWarning):
    """A manifest without an envelope is taken to have the reference fleet's."""


#: The reference fleet (``examples/fleets/reference.yaml``) as an envelope sees it: replicas per
#: role when fixed, and up to ``envs.scenarios.MAX_REPLICAS`` when elastic (tests check both
#: against the environment's fleet).
REFERENCE_REPLICAS: dict[str, int] = {"strong": 2, "cheap": 1}
REFERENCE_MODELS = ("llama-3-8b", "llama-3.2-1b")
REFERENCE_GPUS = ("a100-80gb",)


@dataclass(frozen=True)
class FleetFacts:
    """What a server knows of the fleet it governs, to compare with an :class:`Envelope`.

    Parameters
    ----------
    replicas:
        Replicas per role (:data:`envs.contract.ROLES`; a role without replicas may be absent).
    models, gpus:
        The models and GPU kinds its replicas run (``None``: not known, not compared).
    spec_digest:
        Fingerprint of the SLO spec governed (``None``: not compared).
    """

    replicas: Mapping[str, int]
    models: frozenset[str] | None = None
    gpus: frozenset[str] | None = None
    spec_digest: str | None = None


@dataclass(frozen=True)
class Envelope(_FieldMapping):
    """The fleets a policy was trained on: a server refuses to let it govern another.

    Parameters
    ----------
    roles:
        Per pool role, the fewest and most replicas it had in training (0 fewest: some training
        fleet lacked the role).
    models, gpus:
        Model and GPU names of the training fleets (catalog names, or a ``config.json``'s
        model name).
    spec_service, spec_digest:
        The SLO spec's service name and fingerprint.
    fleets:
        The training fleets (``reference`` for the environments' own).
    assumed:
        The manifest had no envelope: this is the reference fleet's (not written back).
    """

    roles: Mapping[str, tuple[int, int]]
    models: tuple[str, ...]
    gpus: tuple[str, ...]
    spec_service: str
    spec_digest: str
    fleets: tuple[str, ...] = ()
    assumed: bool = field(default=False, compare=False)

    @classmethod
    def reference(
        cls, contract: ObservationContract, service: str, digest: str, *, assumed: bool = True
    ) -> Envelope:
        """The reference fleet's envelope for a policy of ``contract`` (elastic: from one
        replica up to its caps), with the given SLO spec; ``assumed``: standing in for a
        missing one."""
        if contract.max_replicas:
            roles = {p: (1, n) for p, n in zip(contract.pools, contract.max_replicas, strict=True)}
        else:
            roles = {p: (n, n) for p, n in REFERENCE_REPLICAS.items()}
        fleets = ("reference",)
        return cls(roles, REFERENCE_MODELS, REFERENCE_GPUS, service, digest, fleets, assumed)

    def summary(self) -> str:
        """One line: the replicas of each role, the models, GPUs and fleets."""
        roles = ", ".join(f"{r} {_range(low, high)}" for r, (low, high) in self.roles.items())
        return (
            f"replicas {roles}; models {', '.join(self.models)}; GPUs {', '.join(self.gpus)}; "
            f"fleets {', '.join(self.fleets)}"
        )

    def differences(self, fleet: FleetFacts) -> list[str]:
        """How ``fleet`` lies outside the envelope, one sentence each (empty: inside)."""
        found = []
        for role, (low, high) in self.roles.items():
            n = fleet.replicas.get(role, 0)
            if n == 0 and low > 0:
                found.append(f"role {role!r} missing (trained with {_range(low, high)} replicas)")
            elif not low <= n <= high:
                found.append(
                    f"role {role!r}: {n} replicas, outside the trained {_range(low, high)}"
                )
        for role, n in fleet.replicas.items():
            if n > 0 and role not in self.roles:
                found.append(f"role {role!r}: {n} replicas of a role the policy never saw")
        for what, live, known in (
            ("models", fleet.models, self.models),
            ("GPUs", fleet.gpus, self.gpus),
        ):
            unknown = sorted((live or frozenset()) - set(known))
            if unknown:
                found.append(f"{what} {unknown} unknown to the policy (trained on {list(known)})")
        if fleet.spec_digest is not None and fleet.spec_digest != self.spec_digest:
            found.append(
                f"SLO spec {fleet.spec_digest} is not the one trained on "
                f"({self.spec_service}@{self.spec_digest})"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": {
                r: {"min_replicas": low, "max_replicas": high}
                for r, (low, high) in self.roles.items()
            },
            "models": list(self.models),
            "gpus": list(self.gpus),
            "slo_spec": {"service": self.spec_service, "digest": self.spec_digest},
            "fleets": list(self.fleets),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "envelope") -> Envelope:
        f = _Fields(data, where)
        roles_field = f.sub("roles")
        roles = {}
        for role in roles_field.data:
            if role not in ROLES:
                raise roles_field.fail(role, f"is not a pool role ({', '.join(ROLES)})")
            entry = roles_field.sub(role)
            low, high = (
                entry.get("min_replicas", "an integer"),
                entry.get("max_replicas", "an integer"),
            )
            if not 0 <= low <= high:
                raise entry.fail(
                    "max_replicas", f"must satisfy 0 <= min_replicas <= it, got {low}, {high}"
                )
            roles[role] = (low, high)
        spec = f.sub("slo_spec")
        return cls(
            roles,
            tuple(f.get("models", "a list of strings")),
            tuple(f.get("gpus", "a list of strings")),
            spec.get("service", "a string"),
            spec.get("digest", "a string"),
            tuple(f.get("fleets", "a list of strings")),
        )


def _range(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _read_envelope(f: _Fields, contract: ObservationContract, spec_hash: str) -> Envelope:
    """The manifest's envelope, or the reference fleet's when it has none (with a warning)."""
    if "envelope" in f.data:
        envelope = Envelope.from_dict(f.get("envelope", "an object"))
        if envelope.spec_digest != spec_hash:
            raise f.fail(
                "envelope.slo_spec.digest",
                f"{envelope.spec_digest!r} is not the manifest's spec_hash {spec_hash!r}",
            )
        return envelope
    service = str(f.data["spec"].get("service", "?"))
    warnings.warn(
        EnvelopeAssumedWarning(
            "the manifest has no envelope (exported before envelopes existed): taken to be the "
            "reference fleet's (2 strong replicas of llama-3-8b and 1 cheap of llama-3.2-1b on "
            "a100-80gb, or up to 6 and 3 when elastic); re-export the policy to record its own"
        ),
        stacklevel=3,
    )
    return Envelope.reference(contract, service, spec_hash)


def _read_contract(f: _Fields, key: str, contract_cls: type) -> Any:
    """A contract from its ``to_dict()`` form plus ``digest``, checked against the digest."""
    section = f.sub(key)
    digest = section.get("digest", "a string")
    body = {k: v for k, v in section.data.items() if k != "digest"}
    try:
        contract = contract_cls.from_dict(body)
    except KeyError as exc:
        raise ManifestError(f"field {section.path(str(exc.args[0]))!r} is missing") from None
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"field {f.path(key)!r}: {exc}") from None
    if contract.digest != digest:
        raise section.fail(
            "digest",
            f"{digest!r} does not match the contract's fields ({contract.digest!r}): the manifest "
            "was edited or written for another contract definition; re-export the policy",
        )
    return contract


def _read_onnx(f: _Fields) -> tuple[str, int]:
    """The ONNX file's SHA-256 and opset; the tensor names must be the fixed ones."""
    sha = f.get("sha256", "a string")
    if not _HEX64.match(sha):
        raise f.fail("sha256", f"must be 64 lowercase hex digits, got {sha!r}")
    opset = f.get("opset", "an integer")
    if opset < MIN_OPSET:
        raise f.fail("opset", f"{opset} is below the minimum {MIN_OPSET}")
    for key, expected in (("input", INPUT_NAME), ("output", OUTPUT_NAME)):
        if f.get(key, "a string") != expected:
            raise f.fail(key, f"must be {expected!r}")
    return sha, opset


@dataclass(frozen=True)
class PolicyManifest(_FieldMapping):
    """Everything about an exported policy but its weights (dict-like, as its parts).

    Parameters
    ----------
    observation_contract, action_contract:
        The contracts the policy was trained with.
    spec:
        The SLO spec it was trained for, as JSON (``ServiceSpec.model_dump(mode="json",
        by_alias=True)``, which ``ServiceSpec.model_validate`` reads back).
    spec_hash:
        :meth:`slo.engine.BudgetEngine.spec_fingerprint` of that spec.
    normalisation:
        The observation normalisation baked into the graph.
    onnx_sha256:
        SHA-256 of the ONNX file (a swapped or corrupt file is refused).
    opset:
        ONNX opset of the graph.
    provenance:
        Training run and export facts.
    envelope:
        The fleets it was trained on (see :class:`Envelope`).
    format:
        Manifest format version.
    """

    observation_contract: ObservationContract
    action_contract: ActionContract
    spec: Mapping[str, Any]
    spec_hash: str
    normalisation: Normalisation
    onnx_sha256: str
    opset: int
    provenance: Provenance
    envelope: Envelope
    format: str = MANIFEST_FORMAT

    @property
    def service(self) -> str:
        """The SLO spec's service name."""
        return str(self.spec.get("service", "?"))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-compatible data (the file's content)."""
        observation, action = self.observation_contract, self.action_contract
        return {
            "format": self.format,
            "onnx": {
                "sha256": self.onnx_sha256,
                "opset": self.opset,
                "input": INPUT_NAME,
                "output": OUTPUT_NAME,
            },
            "observation_contract": {**observation.to_dict(), "digest": observation.digest},
            "action_contract": {**action.to_dict(), "digest": action.digest},
            "action_mapping": ACTION_MAPPING,
            "spec_hash": self.spec_hash,
            "spec": dict(self.spec),
            "normalisation": self.normalisation.to_dict(),
            "provenance": self.provenance.to_dict(),
            **({} if self.envelope.assumed else {"envelope": self.envelope.to_dict()}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> PolicyManifest:
        """Read and validate a manifest; raises :class:`ManifestError` naming the bad field."""
        f = _Fields(data)
        fmt = f.get("format", "a string")
        if fmt != MANIFEST_FORMAT:
            raise f.fail("format", f"{fmt!r} is not supported (this reader: {MANIFEST_FORMAT!r})")
        sha, opset = _read_onnx(f.sub("onnx"))
        observation = _read_contract(f, "observation_contract", ObservationContract)
        spec_hash = f.get("spec_hash", "a string")
        if not _HEX16.match(spec_hash):
            raise f.fail("spec_hash", f"must be 16 lowercase hex digits, got {spec_hash!r}")
        spec = f.sub("spec")
        spec.get("service", "a string")
        spec.get("slos", "a list of objects")
        normalisation = Normalisation.from_dict(
            f.get("normalisation", "an object"), "normalisation"
        )
        if len(normalisation.mean) != observation.size:
            raise f.fail(
                "normalisation.mean",
                f"has {len(normalisation.mean)} entries, the observation contract "
                f"{observation.size} features",
            )
        return cls(
            observation_contract=observation,
            action_contract=_read_contract(f, "action_contract", ActionContract),
            spec=dict(spec.data),
            spec_hash=spec_hash,
            normalisation=normalisation,
            onnx_sha256=sha,
            opset=opset,
            provenance=Provenance.from_dict(f.get("provenance", "an object")),
            envelope=_read_envelope(f, observation, spec_hash),
            format=fmt,
        )

    @classmethod
    def from_json(cls, text: str) -> PolicyManifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


def spec_to_json(spec: Any) -> dict[str, Any]:
    """A :class:`slo.spec.ServiceSpec` as the JSON a manifest embeds (read back by
    ``ServiceSpec.model_validate``); duck-typed so that this module needs no pydantic."""
    return spec.model_dump(mode="json", by_alias=True)
