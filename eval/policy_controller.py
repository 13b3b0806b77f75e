"""Exported policies behind the :class:`agents.base.Controller` interface, for the benchmark.

It lives in ``eval`` because ``agents`` must not depend on ``policies``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.base import ControlContext, Controller
from policies.runtime import load_policy


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
