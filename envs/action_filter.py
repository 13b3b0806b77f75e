"""An action filter that belongs to the policy: a per-step rate limit on the knobs.

A policy trained with ``LLMFleetEnv(action_filter={"max_step": r})`` has its actions passed
through :class:`ActionRateLimit` before they act, so it learns with the filter as part of the
fleet's dynamics. The filter reads the knobs in force from the observation (the ``knob.<name>``
features every observation contract carries), so an exported policy applies it inside its ONNX
graph (:mod:`policies.action_filter`) and the sidecar, which feeds the knobs it published, runs
exactly what training ran. Numpy only: the reference the export's parity check compares with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from envs.contract import REPLICAS_KNOB_SUFFIX, ActionContract, KnobSpec, ObservationContract


@dataclass(frozen=True)
class ActionRateLimit:
    """Each setting knob moves at most ``max_step`` (in action units, [-1, 1]) per control
    interval from the value in force.

    An integer knob (``shed_priority_below``) moves at most one level per interval when
    ``max_step`` is smaller than a level: a step below half a level would round back to the
    level in force, so it could never move (the sidecar's ``max_step`` guardrail does the
    same). Replica knobs of elastic fleets are changes per interval, not settings, and pass
    unchanged.

    Parameters
    ----------
    max_step:
        Largest change of a knob per interval in action units (2 spans a knob's whole range).
    """

    max_step: float

    def __post_init__(self) -> None:
        if not 0.0 < self.max_step <= 2.0:
            raise ValueError(f"action_filter.max_step must be in (0, 2], got {self.max_step}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ActionRateLimit:
        """The filter of a preset's or ``run.json``'s ``action_filter`` mapping."""
        unknown = sorted(set(data) - {"max_step"})
        if unknown:
            raise ValueError(f"action_filter: unknown field(s) {unknown}; known: ['max_step']")
        if "max_step" not in data:
            raise ValueError("action_filter: max_step is missing")
        return cls(max_step=float(data["max_step"]))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def step_limits(self, contract: ActionContract) -> np.ndarray:
        """Per knob of ``contract``, the largest change per interval in action units (``inf``
        for a knob the filter leaves alone)."""
        return np.array([self._step_limit(k) for k in contract.knobs])

    def _step_limit(self, knob: KnobSpec) -> float:
        if knob.name.endswith(REPLICAS_KNOB_SUFFIX):
            return np.inf
        if knob.integer:
            return max(self.max_step, 2.0 / (knob.high - knob.low))  # one level
        return self.max_step

    @staticmethod
    def in_force_features(observation: ObservationContract, action: ActionContract) -> np.ndarray:
        """Indices of the observation features holding each knob in force, in action order."""
        names = observation.feature_names
        return np.array([names.index(f"knob.{k}") for k in action.names])

    @staticmethod
    def apply(action: np.ndarray, in_force: np.ndarray, limits: np.ndarray) -> np.ndarray:
        """``action`` (one vector or a batch) with every knob moved at most its limit
        (:meth:`step_limits`) from ``in_force`` (the knobs in force in action units), within
        [-1, 1]."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        in_force = np.asarray(in_force, dtype=np.float64)
        step = np.clip(action - in_force, -limits, limits)
        return np.where(np.isfinite(limits), np.clip(in_force + step, -1.0, 1.0), action)

    def apply_observed(
        self,
        action: np.ndarray,
        observation: np.ndarray,
        observation_contract: ObservationContract,
        action_contract: ActionContract,
    ) -> np.ndarray:
        """:meth:`apply` from the knobs in force that ``observation`` shows (one or a batch):
        what an exported policy's graph computes."""
        features = self.in_force_features(observation_contract, action_contract)
        in_force = np.asarray(observation)[..., features]
        return self.apply(action, in_force, self.step_limits(action_contract))
