"""One controller interface for heuristic baselines and learned policies alike.

A controller maps an observation (built by :class:`envs.contract.ObservationContract`) to an
action vector in [-1, 1] (read by :class:`envs.contract.ActionContract`). Heuristics reason in knob
values and burn rates, so :class:`ObservationView` reads features by name and
:meth:`Controller.knobs_to_action` encodes knob values.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import numpy as np

from envs.contract import ActionContract, ObservationContract, neutral_knob_values

#: SLI kinds whose budgets are spent by slowness: the ones routing, offload and shedding trade.
LATENCY_KINDS = frozenset({"ttft", "itl", "e2e", "normalized_latency", "streaming"})


@dataclass(frozen=True)
class ControlContext:
    """What a controller knows about the fleet it governs.

    Parameters
    ----------
    observation:
        The observation contract (feature names and order).
    action:
        The action contract (knobs, ranges).
    slo_kinds:
        SLO name -> SLI kind (``"ttft"``, ``"availability"``, ``"quality"``, ...), so a heuristic
        knows which budgets are latency budgets.
    interval_s:
        Seconds between two decisions (``act`` calls), so that controllers with windows in
        seconds (Knative's) count them in decisions.
    """

    observation: ObservationContract
    action: ActionContract
    slo_kinds: Mapping[str, str]
    interval_s: float = 30.0

    def slos_of_kind(self, kinds: frozenset[str] | set[str]) -> tuple[str, ...]:
        return tuple(name for name, kind in self.slo_kinds.items() if kind in kinds)


def params_grid(params_cls: type, **candidates: tuple) -> Iterator:
    """Every combination of ``candidates`` over the defaults of ``params_cls`` (a frozen
    dataclass), for a baseline's ``param_grid()``."""
    keys = list(candidates)
    for combo in itertools.product(*(candidates[k] for k in keys)):
        yield replace(params_cls(), **dict(zip(keys, combo, strict=True)))


class ObservationView:
    """Named, unscaled access to one observation vector."""

    def __init__(self, contract: ObservationContract, observation: np.ndarray) -> None:
        self._index = {name: i for i, name in enumerate(contract.feature_names)}
        self._obs = np.asarray(observation, dtype=np.float64).reshape(-1)
        self._max_replicas = dict(zip(contract.pools, contract.max_replicas, strict=False))

    def feature(self, name: str) -> float:
        return float(self._obs[self._index[name]])

    def burn_rate(self, slo: str, window: str) -> float:
        """The burn rate itself (the observation holds log2(1 + burn rate))."""
        return float(2.0 ** self.feature(f"slo.{slo}.log_burn_rate.{window}") - 1.0)

    def max_burn_rate(self, slos: tuple[str, ...], window: str) -> float:
        return max((self.burn_rate(s, window) for s in slos), default=0.0)

    def budget_remaining(self, slo: str) -> float:
        return self.feature(f"slo.{slo}.budget_remaining")

    def alert(self, slo: str) -> float:
        return self.feature(f"slo.{slo}.alert")

    def pool(self, pool: str, feature: str) -> float:
        return self.feature(f"pool.{pool}.{feature}")

    def replicas(self, pool: str, state: str) -> int:
        """Replicas of ``pool`` that are ``state`` (``"serving"``, ``"provisioning"``,
        ``"draining"`` or ``"desired"``); elastic contracts only."""
        fraction = self.pool(pool, f"replicas_{state}")
        return int(round(fraction * self._max_replicas[pool]))


class Controller(ABC):
    """Observation in, action in [-1, 1]^n_knobs out.

    Parameters
    ----------
    context:
        The contracts and SLO kinds of the fleet being governed.
    """

    #: Short name used in benchmark tables.
    name: str = "controller"
    #: Whether the controller scales pools: it needs the replica knobs of an elastic
    #: environment (``LLMFleetEnv(elastic=True)``).
    needs_elastic: bool = False

    def __init__(self, context: ControlContext) -> None:
        self.context = context

    def reset(self) -> None:  # noqa: B027 - stateless controllers need no reset
        """Forget any state from a previous episode (integrators, hysteresis)."""

    @abstractmethod
    def act(self, observation: np.ndarray) -> np.ndarray:
        """Return the action for ``observation``."""

    def view(self, observation: np.ndarray) -> ObservationView:
        return ObservationView(self.context.observation, observation)

    def knobs_to_action(self, values: Mapping[str, float]) -> np.ndarray:
        """The action setting ``values``; knobs not given are neutral (e.g. the replica knobs of
        an elastic environment for a controller that does not scale)."""
        return self.context.action.encode(neutral_knob_values(self.context.action.names) | values)
