"""The fallback heuristic: a named baseline of :mod:`agents.baselines` with its parameters."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from agents.base import ControlContext, Controller
from agents.baselines import BASELINES


def build_baseline(name: str, params: Mapping[str, Any], context: ControlContext) -> Controller:
    """The baseline ``name`` over ``context``, with ``params`` given to its params dataclass
    (or as knob values for ``static``).

    Raises
    ------
    ValueError
        Unknown baseline or parameter (naming ``fallback.baseline`` / ``fallback.params``).
    """
    if name not in BASELINES:
        raise ValueError(
            f"fallback.baseline: unknown baseline {name!r} (known: {sorted(BASELINES)})"
        )
    cls = BASELINES[name]
    if not params:
        return cls(context)
    hints = typing.get_type_hints(cls.__init__)
    hints.pop("return", None)
    hints.pop("context", None)
    if not hints:
        raise ValueError(f"fallback.params: baseline {name!r} takes no parameters")
    (hint,) = hints.values()
    params_cls = next((t for t in typing.get_args(hint) if dataclasses.is_dataclass(t)), None)
    try:
        value = dict(params) if params_cls is None else params_cls(**params)
        return cls(context, value)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"fallback.params: invalid for baseline {name!r}: {exc}") from None
