"""One compact log line per decision, for an operator watching the sidecar: the mode, the knobs
and desired replicas that changed, and the worst burn rate the decision saw."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("budgetpilot.sidecar")


def changes(before: Mapping[str, float] | None, after: Mapping[str, float]) -> str:
    """``name old->new`` for every value that changed (all values, ``name new``, without a
    ``before``); ``unchanged`` when none did."""
    if before is None:
        return ", ".join(f"{name} {_number(value)}" for name, value in after.items())
    moved = [
        f"{name} {_number(before[name])}->{_number(value)}"
        for name, value in after.items()
        if name not in before or not math.isclose(before[name], value, abs_tol=1e-9)
    ]
    return ", ".join(moved) or "unchanged"


def worst_burn(snapshot: Any, window: str) -> str:
    """The SLO burning its budget fastest over ``window`` (``no data`` when no SLO has any)."""
    column = list(snapshot.windows).index(window)
    rates = zip(snapshot.burn_rates[:, column].tolist(), snapshot.slo_names, strict=True)
    known = [(rate, name) for rate, name in rates if math.isfinite(rate)]
    if not known:
        return f"worst burn over {window}: no data"
    rate, name = max(known)
    return f"worst burn {name} {rate:.3g}x over {window}"


def _number(value: float) -> str:
    return f"{value:.3g}"


class DecisionLog:
    """Logs every decision at INFO as one line, and counts them (for the line at shutdown).

    Parameters
    ----------
    window:
        The burn-rate window the line reports (the shortest the policy observes).
    """

    def __init__(self, window: str) -> None:
        self.window = window
        self.count = 0
        self._knobs: dict[str, float] | None = None
        self._desired: dict[str, int] | None = None

    def record(self, decision: Any) -> None:
        """Log ``decision`` (a :class:`policies.sidecar.loop.Decision`) against the previous."""
        parts = [f"knobs {changes(self._knobs, decision.knobs)}"]
        if decision.desired_replicas:
            replicas = changes(self._desired, decision.desired_replicas)
            parts.append(f"desired replicas {replicas}")
        parts.append(worst_burn(decision.observation.snapshot, self.window))
        shadow = " (shadow)" if decision.shadow else ""
        log.info("decision %s%s: %s", decision.mode, shadow, "; ".join(parts))
        self.count += 1
        self._knobs = dict(decision.knobs)
        self._desired = dict(decision.desired_replicas)
