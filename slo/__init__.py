"""budgetpilot: slo — SLO specs and the multi-dimensional error-budget engine.

The public names below are imported lazily (on first use), so that ``budgetpilot`` commands of
other packages do not pay for numpy, pydantic or prometheus_client when they import ``slo.cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BudgetEngine": "slo.engine",
    "BudgetSnapshot": "slo.engine",
    "AlertLevel": "slo.engine",
    "PolicyState": "slo.engine",
    "PhaseRecord": "slo.engine",
    "MetricsFeed": "slo.metrics",
    "MetricMapping": "slo.metrics",
    "ScrapeReport": "slo.metrics",
    "load_mapping": "slo.metrics",
    "ExpositionRenderer": "slo.exposition",
    "render_exposition": "slo.exposition",
    "ServiceSpec": "slo.spec",
    "SpecError": "slo.spec",
    "load_spec": "slo.spec",
    "parse_spec": "slo.spec",
    "default_spec": "slo.spec",
    "generate_rules": "slo.rules",
    "render_rules": "slo.rules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slo' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
