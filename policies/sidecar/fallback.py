"""The fallback heuristic: a named baseline of :mod:`agents.baselines` with its parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.base import ControlContext, Controller
from agents.baselines import make_controller


def build_baseline(name: str, params: Mapping[str, Any], context: ControlContext) -> Controller:
    """The baseline ``name`` over ``context``, with ``params`` given to its params dataclass
    (or as knob values for ``static``).

    Raises
    ------
    ValueError
        Unknown baseline or parameter (naming ``fallback.baseline`` / ``fallback.params``).
    """
    try:
        return make_controller(name, context, dict(params) or None)
    except (TypeError, ValueError) as exc:
        field = "fallback.params" if "parameter" in str(exc) else "fallback.baseline"
        raise ValueError(f"{field}: {exc}") from None
