"""An out-of-distribution guard: the policy hands control to a heuristic on traffic it never saw.

``NAME+guard`` in the benchmark is the policy ``NAME`` behind :class:`OutOfDistributionGuard`,
with the sidecar's default fallback baseline (``reactive``) tuned as the fair baselines are,
over the policy's own training scenarios (``agents/tuned/reactive/fair.json``), so the guard
adds no information the policy did not have. It is its own controller, benchmarked beside the
raw policy and never in its place.
"""

from __future__ import annotations

import numpy as np

from agents.base import Controller
from agents.baselines import make_controller
from agents.tuning import load_tuned_params
from eval.policy_controller import OnnxController

#: The fallback baseline: the sidecar's default (:class:`policies.sidecar.config.FallbackSettings`).
FALLBACK_BASELINE = "reactive"
#: Observations within the bounds in a row before control returns to the policy (2 minutes).
CALM_STEPS = 4
#: Standard deviations from the training mean beyond which a feature is out of distribution,
#: when the policy's normalisation has no clip.
DEFAULT_Z_MAX = 10.0


class OutOfDistributionGuard(Controller):
    """The policy while its observation looks like its training; the fallback otherwise.

    An observation is out of distribution when a feature other than the knobs in force (those
    are the controllers' own doing) lies more than ``z_max`` standard deviations from its
    training mean, by the normalisation statistics in the policy's manifest (what the policy
    saw in training). By default ``z_max`` is the normalisation's clip: beyond it the policy's
    network sees every value alike. Control returns to the policy after ``calm_steps``
    observations in a row within the bounds.

    Parameters
    ----------
    policy:
        The guarded policy.
    fallback:
        The heuristic that acts out of distribution.
    z_max, calm_steps:
        See above.
    """

    def __init__(
        self,
        policy: OnnxController,
        fallback: Controller,
        z_max: float | None = None,
        calm_steps: int = CALM_STEPS,
    ) -> None:
        super().__init__(policy.context)
        self.policy, self.fallback = policy, fallback
        norm = policy.policy.manifest.normalisation
        self.mean = np.asarray(norm.mean, dtype=np.float64)
        self.std = np.sqrt(np.asarray(norm.var, dtype=np.float64) + norm.epsilon)
        self.z_max = z_max or norm.clip or DEFAULT_Z_MAX
        names = self.context.observation.feature_names
        self.watched = np.array([not n.startswith("knob.") for n in names])
        self.calm_steps = calm_steps
        self.name = f"{policy.name}+guard"
        self.reset()

    def reset(self) -> None:
        self.policy.reset()
        self.fallback.reset()
        self.calm = self.calm_steps  # an episode starts with the policy in control
        self.handovers = 0

    def out_of_distribution(self, observation: np.ndarray) -> bool:
        """Whether a watched feature lies beyond ``z_max`` standard deviations."""
        z = (np.asarray(observation, dtype=np.float64) - self.mean) / self.std
        return bool(np.any(np.abs(z[self.watched]) > self.z_max))

    @property
    def in_control(self) -> Controller:
        """The controller acting now."""
        return self.policy if self.calm >= self.calm_steps else self.fallback

    def act(self, observation: np.ndarray) -> np.ndarray:
        before = self.in_control
        self.calm = 0 if self.out_of_distribution(observation) else self.calm + 1
        self.handovers += self.in_control is not before
        # Both see every observation, so the one taking over knows the recent past.
        proposals = {c: c.act(observation) for c in (self.policy, self.fallback)}
        return proposals[self.in_control]


def guarded(policy: OnnxController) -> OutOfDistributionGuard:
    """``policy`` behind the guard, :data:`FALLBACK_BASELINE` with its fair parameters (tuned
    over the training scenarios of the shipped policies, on the reference fleet) behind it."""
    from eval.bench import FAIR, tuned_params_path

    path = tuned_params_path(FALLBACK_BASELINE, FAIR)
    _, _, params = load_tuned_params(path)  # the reference fleet only (unfit_reason)
    return OutOfDistributionGuard(
        policy, make_controller(FALLBACK_BASELINE, policy.context, params)
    )
