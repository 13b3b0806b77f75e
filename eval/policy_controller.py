"""Exported policies behind the :class:`agents.base.Controller` interface, for the benchmark.

It lives in ``eval`` because ``agents`` must not depend on ``policies``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.base import ControlContext, Controller
from envs.contract import neutral_knob_values
from policies.runtime import load_policy
from policies.sidecar.config import GuardrailSettings
from policies.sidecar.guardrails import Guardrails, action_problem


class OnnxController(Controller):
    """Act with an exported ONNX policy (deterministic, stateless).

    Parameters
    ----------
    context:
        The contracts of the fleet governed; a policy trained for other contracts is refused
        (:class:`policies.runtime.PolicyMismatchError`).
    path:
        The policy's ``.onnx`` file (its manifest beside it).
    spec:
        Optionally the SLO spec served (ServiceSpec, its JSON or fingerprint), also checked.
    """

    def __init__(self, context: ControlContext, path: str | Path, spec: Any = None) -> None:
        super().__init__(context)
        self.policy = load_policy(
            path,
            observation_contract=context.observation,
            action_contract=context.action,
            spec=spec,
        )
        self.name = f"onnx:{Path(path).stem}"

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.policy.act(observation)


class SidecarGuardedController(Controller):
    """A controller as the sidecar deploys it: its actions pass the sidecar's guardrails.

    Every proposal goes through :class:`policies.sidecar.guardrails.Guardrails` exactly as the
    sidecar's policy mode does: an unusable action holds the knobs in force, a usable one is
    decoded, bounded, held within the hysteresis band, limited to ``max_step`` per interval and
    clamped to the contract's ranges; the knobs in force start neutral, as the sidecar's
    ``initial_knobs`` default. Replica knobs pass unchanged (their step and bounds are a
    deployment's ``scaling`` settings, which have no default).

    Parameters
    ----------
    inner:
        The proposing controller (an :class:`OnnxController`).
    settings:
        The guardrails (default: the sidecar's defaults, :class:`GuardrailSettings`).
    """

    def __init__(self, inner: Controller, settings: GuardrailSettings | None = None) -> None:
        super().__init__(inner.context)
        self.inner = inner
        self.guardrails = Guardrails(inner.context.action, settings or GuardrailSettings())
        self.name = f"{inner.name}@sidecar"
        self.reset()

    def reset(self) -> None:
        self.inner.reset()
        neutral = neutral_knob_values(self.context.action.names)
        self.in_force = self.guardrails.final_clamp(neutral, neutral)[0]

    def act(self, observation: np.ndarray) -> np.ndarray:
        raw = self.inner.act(observation)
        if action_problem(raw, len(self.context.action.names)) is None:
            proposed = self.guardrails.decode(np.asarray(raw, dtype=np.float64))
            values = self.guardrails.apply(proposed, self.in_force)[0]
            self.in_force = self.guardrails.final_clamp(values, self.in_force)[0]
        return self.knobs_to_action(self.in_force)
