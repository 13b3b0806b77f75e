"""Guardrails between a proposed action and the knobs the sidecar publishes.

In order: the proposal (from the policy or the fallback heuristic) is checked (finite, within
[-1, 1]), decoded without rounding, clamped to the configured bounds, held when it is within the
hysteresis band of the value in force, limited to ``max_step`` of the knob's range per interval,
clamped to the bounds again (safety wins over smoothness) and rounded (integer knobs). Whatever
the path, :meth:`Guardrails.final_clamp` keeps every published value finite and within the action
contract's ranges. Each change a guardrail makes is recorded as an :class:`Intervention`.

The replica knobs of an elastic policy (``<pool>_replicas_change``) are changes, not settings:
they skip those rules and :class:`ReplicaGuardrails` turns them into desired replicas per pool
(:func:`envs.contract.next_desired_replicas`), limited to ``max_step`` replicas per interval and
to ``[min_replicas, max_replicas]`` (the ``scaling`` settings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from envs.contract import (
    REPLICAS_KNOB_SUFFIX,
    ActionContract,
    KnobSpec,
    ObservationContract,
    next_desired_replicas,
    replica_change_toward,
    replicas_knob_name,
)
from policies.sidecar.config import GuardrailSettings, ScalingSettings

#: Slack on the [-1, 1] action range (float32 rounding of a tanh output).
ACTION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Intervention:
    """A guardrail changed a knob: from ``proposed`` to ``applied``."""

    knob: str
    # invalid_output, bounds, hysteresis, max_step, final_clamp, no_counterpart; for a replica knob,
    # replica_step or replica_bounds, whose proposed and applied values are desired replicas.
    guardrail: str
    proposed: float | None
    applied: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def action_problem(action: object, n_knobs: int) -> str | None:
    """Why an action vector cannot be used (``None`` when it can)."""
    try:
        array = np.asarray(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        return f"not a numeric vector: {exc}"
    if array.shape[0] != n_knobs:
        return f"{array.shape[0]} values for {n_knobs} knobs"
    if not np.all(np.isfinite(array)):
        return f"non-finite values at {np.flatnonzero(~np.isfinite(array)).tolist()}"
    if np.any(np.abs(array) > 1.0 + ACTION_TOLERANCE):
        return f"values outside [-1, 1]: max |a| = {float(np.abs(array).max()):.4g}"
    return None


class Guardrails:
    """Bounds, hysteresis and rate limits over the knobs of an action contract.

    Parameters
    ----------
    contract:
        The action contract (knob ranges, scales).
    settings:
        ``max_step``, ``hysteresis`` and per-knob ``bounds``.

    Raises
    ------
    ValueError
        A bound names an unknown knob or lies outside the knob's range (naming it).
    """

    def __init__(self, contract: ActionContract, settings: GuardrailSettings) -> None:
        self.contract = contract
        self.settings = settings
        self._continuous = {k.name: replace(k, integer=False) for k in contract.knobs}
        self.bounds = {k.name: (k.low, k.high) for k in contract.knobs}
        for name, (low, high) in settings.bounds.items():
            knob = self._knob(name, "guardrails.bounds")
            if is_replica_knob(name):
                raise ValueError(
                    f"guardrails.bounds.{name}: replica knobs are bounded by scaling.<pool> "
                    "(min_replicas, max_replicas, max_step)"
                )
            if low < knob.low or high > knob.high:
                raise ValueError(
                    f"guardrails.bounds.{name}: [{low}, {high}] leaves the knob's range "
                    f"[{knob.low}, {knob.high}]"
                )
            if knob.integer and not (float(low).is_integer() and float(high).is_integer()):
                # Rounding a value clipped to a fractional bound could leave the bounds.
                raise ValueError(
                    f"guardrails.bounds.{name}: [{low}, {high}] must be whole numbers (an "
                    "integer knob)"
                )
            self.bounds[name] = (float(low), float(high))

    def _knob(self, name: str, where: str) -> KnobSpec:
        for knob in self.contract.knobs:
            if knob.name == name:
                return knob
        raise ValueError(f"{where}.{name}: unknown knob (knobs: {list(self.contract.names)})")

    def check_values(self, values: Mapping[str, float], where: str) -> dict[str, float]:
        """Validate configured knob values (names known, values in range)."""
        for name, value in values.items():
            knob = self._knob(name, where)
            if not (math.isfinite(value) and knob.low <= value <= knob.high):
                raise ValueError(
                    f"{where}.{name}: {value} is outside the knob's range [{knob.low}, {knob.high}]"
                )
        return dict(values)

    def decode(self, action: np.ndarray) -> dict[str, float]:
        """Knob values of a valid action, integer knobs not yet rounded."""
        return {
            name: self._continuous[name].from_unit(float(u))
            for name, u in zip(self.contract.names, np.asarray(action).reshape(-1), strict=True)
        }

    def apply(
        self, proposed: Mapping[str, float], in_force: Mapping[str, float]
    ) -> tuple[dict[str, float], list[Intervention]]:
        """The values to publish for a proposal, given the values in force (replica knobs pass
        unchanged: :class:`ReplicaGuardrails` bounds them)."""
        rules = (
            ("bounds", self._clip),
            ("hysteresis", self._hold_within_band),
            ("max_step", self._limit_step),
            ("bounds", self._clip),  # a value in force outside the bounds may not stay there
        )
        values: dict[str, float] = {}
        interventions: list[Intervention] = []
        for knob in self.contract.knobs:
            value, current = float(proposed[knob.name]), float(in_force[knob.name])
            if is_replica_knob(knob.name):
                values[knob.name] = value
                continue
            for guardrail, rule in rules:
                guarded = rule(knob, value, current)
                if guarded != value:
                    interventions.append(Intervention(knob.name, guardrail, value, guarded))
                    value = guarded
            values[knob.name] = float(round(value)) if knob.integer else value
        return values, interventions

    def _clip(self, knob: KnobSpec, value: float, current: float) -> float:
        low, high = self.bounds[knob.name]
        return min(high, max(low, value))

    def _hold_within_band(self, knob: KnobSpec, value: float, current: float) -> float:
        band = self.settings.hysteresis
        if knob.integer:
            within = abs(value - current) < 0.5 + band * (knob.high - knob.low)
        else:
            within = abs(knob.to_unit(value) - knob.to_unit(current)) < 2.0 * band
        return current if within else value

    def _limit_step(self, knob: KnobSpec, value: float, current: float) -> float:
        step = self.settings.max_step
        if knob.integer:
            limit = max(1.0, step * (knob.high - knob.low))
            return current + max(-limit, min(limit, value - current))
        u_value, u_current = knob.to_unit(value), knob.to_unit(current)
        limit = 2.0 * step
        if abs(u_value - u_current) <= limit:
            return value
        u = u_current + math.copysign(limit, u_value - u_current)
        return self._continuous[knob.name].from_unit(u)

    def final_clamp(
        self, values: Mapping[str, float], default: Mapping[str, float]
    ) -> tuple[dict[str, float], list[Intervention]]:
        """Every knob finite, within the contract's range, integer where it must be; a missing
        or non-finite value becomes ``default``'s (itself clamped)."""
        out: dict[str, float] = {}
        interventions = []
        for knob in self.contract.knobs:
            raw = values.get(knob.name)
            value = float(raw) if raw is not None else math.nan
            if not math.isfinite(value):
                value = float(default[knob.name])
                value = value if math.isfinite(value) else knob.low
            value = min(knob.high, max(knob.low, value))
            value = float(round(value)) if knob.integer else value
            if raw is None or value != raw:
                interventions.append(Intervention(knob.name, "final_clamp", raw, value))
            out[knob.name] = value
        return out, interventions


def is_replica_knob(name: str) -> bool:
    """Whether knob ``name`` changes a pool's desired replicas (``strong_replicas_change``)."""
    return name.endswith(REPLICAS_KNOB_SUFFIX)


@dataclass(frozen=True)
class ReplicaBounds:
    """The limits of one pool's desired replicas: ``cap`` from the policy's contract, the
    others from its ``scaling`` settings."""

    cap: int
    min_replicas: int
    max_replicas: int
    max_step: int


class ReplicaGuardrails:
    """Desired replicas per pool from the replica knobs, within the ``scaling`` bounds.

    Under observation contract v2 each contract pool is a pool of the fleet with its own
    replica knob and the contract's cap. Under v3 the contract's pools are roles: every pool of
    the fleet (each ``scaling`` entry) moves by its role's knob, as the environment scales each
    simulated pool, capped by its own ``max_replicas``; the observation sees each role's sums
    (:meth:`by_contract_pool`).

    Parameters
    ----------
    contract:
        The policy's observation contract (its pools and, v2, their ``max_replicas`` caps); an
        elastic one.
    scaling:
        Per pool, ``min_replicas``, ``max_replicas`` (at most the cap) and ``max_step``.
    roles:
        Under v3, the role of each pool of the fleet (from its engines' tiers).

    Raises
    ------
    ValueError
        A contract pool (v2) or a listed pool (v3) without scaling settings, a pool the contract
        or the listing does not know, a ``max_replicas`` above the cap (each named by its field).
    """

    def __init__(
        self,
        contract: ObservationContract,
        scaling: Mapping[str, ScalingSettings],
        roles: Mapping[str, str] | None = None,
    ) -> None:
        self.contract = contract
        if contract.by_role:
            self.roles = dict(roles or {})
            caps = {}  # a v3 policy's cap on a pool is the pool's own max_replicas
            where = "the listed engines' pools"
        else:
            self.roles = {pool: pool for pool in contract.pools}
            caps = dict(zip(contract.pools, contract.max_replicas, strict=True))
            where = "the policy's contract"
        problems = [
            f"scaling.{pool}: not a pool of {where} {list(self.roles)}"
            for pool in scaling
            if pool not in self.roles
        ]
        self.bounds: dict[str, ReplicaBounds] = {}
        for pool in self.roles:
            settings = scaling.get(pool)
            if settings is None:
                problems.append(
                    f"scaling.{pool}: the policy scales pool {pool!r}; give its deployment, "
                    "min_replicas, max_replicas and max_step"
                )
                continue
            cap = caps.get(pool, settings.max_replicas)
            if settings.max_replicas > cap:
                problems.append(
                    f"scaling.{pool}.max_replicas: {settings.max_replicas} exceeds the policy's "
                    f"max_replicas {cap} for the pool"
                )
            else:
                self.bounds[pool] = ReplicaBounds(
                    cap, settings.min_replicas, settings.max_replicas, settings.max_step
                )
        if problems:
            raise ValueError("\n  ".join(problems))

    def knob(self, pool: str) -> str:
        """The replica knob that moves ``pool``: its own (v2), its role's (v3)."""
        return replicas_knob_name(self.roles[pool])

    def by_contract_pool(self, desired: Mapping[str, int]) -> list[float]:
        """Desired replicas per pool of the contract, in its order: the pools' own (v2), each
        role's sum over its pools (v3; 0 for a role the fleet lacks)."""
        return [
            float(sum(n for pool, n in desired.items() if self.roles.get(pool) == contract_pool))
            for contract_pool in self.contract.pools
        ]

    def apply(
        self, desired: Mapping[str, int], knobs: Mapping[str, float]
    ) -> tuple[dict[str, int], dict[str, float], list[Intervention]]:
        """The desired replicas after ``knobs``' replica changes, from ``desired``.

        Each pool moves as :func:`~envs.contract.next_desired_replicas` says, then at most
        ``max_step`` replicas from ``desired``, then into ``[min_replicas, max_replicas]``
        (bounds win over the step limit, e.g. when the fleet starts outside them). The replica
        knob is recomputed from the bounded count when a guardrail changed it
        (:func:`~envs.contract.replica_change_toward`), so the published knob and desired
        replicas agree.

        Returns
        -------
        The desired replicas per pool, the knob values (replica knobs possibly recomputed) and
        the interventions (proposed and applied desired replicas).
        """
        values = dict(knobs)
        counts: dict[str, int] = {}
        interventions: list[Intervention] = []
        for pool, b in self.bounds.items():
            knob, current = self.knob(pool), int(desired[pool])
            count = proposed = next_desired_replicas(current, float(values[knob]), b.cap)
            limits = (
                ("replica_step", current - b.max_step, current + b.max_step),
                ("replica_bounds", b.min_replicas, b.max_replicas),
            )
            for guardrail, low, high in limits:
                guarded = min(high, max(low, count))
                if guarded != count:
                    interventions.append(Intervention(knob, guardrail, count, guarded))
                    count = guarded
            # A knob that moves several pools (v3) keeps the policy's value.
            if count != proposed and list(self.roles.values()).count(self.roles[pool]) == 1:
                values[knob] = replica_change_toward(current, count)
            counts[pool] = count
        return counts, values, interventions
