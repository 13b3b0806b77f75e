"""Faults the engine twin injects into its replicas' metrics pages.

Real ``/metrics`` pages are messier than rendered ones; these faults reproduce, on chosen
replicas, what real deployments serve (see :meth:`envs.twin.EngineTwin.inject_fault`):

====================  ============================================================================
``missing_series``    the lines of ``metric`` (a family or sample name) are not on the page: an
                      engine version that exports another histogram, or none
``missing_bucket``    the bucket ``le`` of histogram ``metric`` is not on the page
``nan``               the values of ``metric``'s lines are NaN, spelt ``spelling`` (default
                      ``-nan(ind)``, as a C runtime prints it)
``inconsistent``      histogram ``metric``'s ``_count`` is below its buckets
``counter_reset``     the engine restarts: its counters count from zero again (once)
``stale``             the page stops changing: the one served when the fault was injected
====================  ============================================================================

Faults are validated when injected (a :class:`FaultError` names the field) and stay until
cleared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Fault kinds and the fields each requires.
FAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "missing_series": ("metric",),
    "missing_bucket": ("metric", "le"),
    "nan": ("metric",),
    "inconsistent": ("metric",),
    "counter_reset": (),
    "stale": (),
}
_OPTIONAL = {"spelling"}


class FaultError(ValueError):
    """A fault description that cannot be injected (the message names the field)."""


@dataclass(frozen=True)
class PageFault:
    """One fault of one replica's page (see the module docstring)."""

    kind: str
    metric: str = ""
    le: str = ""
    spelling: str = "-nan(ind)"

    @classmethod
    def of(cls, body: Any) -> PageFault:
        """A fault from its JSON description ``{"kind": ..., "metric": ..., ...}``."""
        if not isinstance(body, Mapping):
            raise FaultError(f"a fault is a JSON object, got {type(body).__name__}")
        kind = body.get("kind")
        if kind not in FAULT_FIELDS:
            raise FaultError(f"kind: {kind!r} is not one of {', '.join(FAULT_FIELDS)}")
        allowed = {"kind", "replica", *FAULT_FIELDS[kind], *_OPTIONAL}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise FaultError(f"{unknown[0]}: not a field of a {kind} fault")
        for name in (*FAULT_FIELDS[kind], *(_OPTIONAL & set(body))):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                raise FaultError(f"{name}: a {kind} fault needs a non-empty string")
        fields = {k: str(v) for k, v in body.items() if k not in ("kind", "replica")}
        return cls(kind=kind, **fields)

    def to_dict(self) -> dict[str, str]:
        """The JSON description (what :meth:`of` reads)."""
        fields = (*FAULT_FIELDS[self.kind], *(("spelling",) if self.kind == "nan" else ()))
        return {"kind": self.kind, **{name: getattr(self, name) for name in fields}}

    def apply(self, page: str) -> str:
        """``page`` with the fault (faults of the engine itself, reset and stale, leave the
        text alone: the twin applies them)."""
        lines = page.splitlines()
        if self.kind == "missing_series":
            lines = [line for line in lines if not _of(line, self.metric)]
        elif self.kind == "missing_bucket":
            lines = [line for line in lines if not self._is_bucket(line)]
        elif self.kind == "nan":
            spelling = self.spelling
            lines = [_valued(line, spelling) if _of(line, self.metric) else line for line in lines]
        elif self.kind == "inconsistent":
            count = f"{self.metric}_count"
            lines = [_valued(line, "0.0") if _of(line, count) else line for line in lines]
        return "\n".join(lines) + "\n"

    def _is_bucket(self, line: str) -> bool:
        return _of(line, f"{self.metric}_bucket") and bool(
            re.search(rf'le="{re.escape(self.le)}"', line)
        )


def _of(line: str, metric: str) -> bool:
    """Whether ``line`` is a sample (or HELP/TYPE line) of ``metric`` or of its samples."""
    if line.startswith("#"):
        parts = line.split()
        return len(parts) > 2 and parts[2].startswith(metric)
    name = line.split("{", 1)[0].split(" ", 1)[0]
    return name == metric or (name.startswith(metric) and name[len(metric) :] in _SUFFIXES)


_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _valued(line: str, value: str) -> str:
    return line if line.startswith("#") else f"{line.rsplit(' ', 1)[0]} {value}"
