"""Import OpenSLO ``openslo/v1`` documents (``kind: SLO`` and ``kind: SLI``) into our spec model.

Each objective of an SLO becomes one SLO (named ``<metadata.name>`` when there is one objective,
``<metadata.name>-<objective displayName or index>`` otherwise). Indicators are inline
(``spec.indicator``) or references to ``kind: SLI`` documents (``spec.indicatorRef``, also
allowed per objective). Two indicator forms are understood:

* ``thresholdMetric`` whose ``metricSource`` has ``type: budgetpilot``: its ``spec`` is one of
  our LLM SLIs (``kind: ttft`` ...), optionally with ``selectors``; the objective's ``op: lt`` or
  ``lte`` and ``value`` give the SLI's threshold when the SLI does not set it;
* ``ratioMetric`` with PromQL ``good``/``bad``/``total`` (or ``raw``) queries: a Sloth ``events``
  (or ``raw``) SLI, kept for rule generation only.

Only rolling ``timeWindow`` and the ``Occurrences`` budgeting method are supported; other kinds
(``Service``, ``AlertPolicy``, ``AlertCondition``, ``AlertNotificationTarget``, ``DataSource``)
are accepted and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from slo.spec import SLOTH_VERSION, LineIndex, ServiceSpec, SpecError, validate_spec

OPENSLO_VERSION = "openslo/v1"
_IGNORED_KINDS = {
    "Service",
    "AlertPolicy",
    "AlertCondition",
    "AlertNotificationTarget",
    "DataSource",
}
_THRESHOLD_FIELD = {"streaming": "pace_s"}  # other thresholded kinds use threshold_s
_THRESHOLDED = {"ttft", "itl", "e2e", "normalized_latency", "streaming"}


def openslo_to_sloth(documents: Sequence[Any], lines: LineIndex, source_name: str) -> ServiceSpec:
    """Translate parsed OpenSLO documents into a :class:`~slo.spec.ServiceSpec`."""
    context = _Context(lines, source_name)
    indicators: dict[str, tuple[Mapping[str, Any], int]] = {}
    slo_docs: list[int] = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Mapping):
            raise context.error("an OpenSLO document must be a mapping", i, ())
        if doc.get("apiVersion") != OPENSLO_VERSION:
            raise context.error(
                f"unsupported apiVersion {doc.get('apiVersion')!r} (budgetpilot imports "
                f"{OPENSLO_VERSION})",
                i,
                ("apiVersion",),
            )
        kind = doc.get("kind")
        if kind == "SLI":
            indicators[_name(doc, i, context)] = (_mapping(doc, "spec", i, (), context), i)
        elif kind == "SLO":
            slo_docs.append(i)
        elif kind not in _IGNORED_KINDS:
            raise context.error(f"unsupported kind {kind!r}", i, ("kind",))
    if not slo_docs:
        raise context.error("no 'kind: SLO' document", 0, ())
    slos: list[dict[str, Any]] = []
    origins: list[tuple[LineIndex, tuple]] = []
    services = set()
    for i in slo_docs:
        doc = documents[i]
        spec = _mapping(doc, "spec", i, (), context)
        services.add(str(spec.get("service", "")))
        for j, slo in enumerate(_translate_slo(doc, spec, indicators, i, context)):
            slos.append(slo)
            origins.append((lines.document(i), ("spec", "objectives", j)))
    if len(services) != 1 or "" in services:
        raise context.error(
            f"all SLOs need the same spec.service, got {sorted(services)}",
            slo_docs[0],
            ("spec", "service"),
        )
    data = {"version": SLOTH_VERSION, "service": services.pop(), "slos": slos}
    return validate_spec(data, lines, source_name, origins=origins)


class _Context:
    """Builds errors that point at the OpenSLO document the user wrote."""

    def __init__(self, lines: LineIndex, source_name: str) -> None:
        self.lines, self.source_name = lines, source_name

    def error(self, message: str, doc: int, path: tuple, slo: str | None = None) -> SpecError:
        field = ".".join(str(p) for p in path) or None
        line = self.lines.document(doc).line(path)
        return SpecError(message, slo=slo, field=field, line=line, source=self.source_name)


def _name(doc: Mapping[str, Any], i: int, context: _Context) -> str:
    name = _mapping(doc, "metadata", i, (), context).get("name")
    if not isinstance(name, str) or not name:
        raise context.error("metadata.name is required", i, ("metadata", "name"))
    return name


def _mapping(
    parent: Mapping[str, Any], key: str, i: int, path: tuple, context: _Context
) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise context.error(f"'{key}' must be a mapping", i, (*path, key))
    return value


def _translate_slo(
    doc: Mapping[str, Any],
    spec: Mapping[str, Any],
    indicators: Mapping[str, tuple[Mapping[str, Any], int]],
    i: int,
    context: _Context,
) -> list[dict[str, Any]]:
    name = _name(doc, i, context)
    method = spec.get("budgetingMethod", "Occurrences")
    if method != "Occurrences":
        raise context.error(
            f"budgetingMethod {method!r} is not supported (only Occurrences)",
            i,
            ("spec", "budgetingMethod"),
            name,
        )
    period = _period(spec, i, name, context)
    objectives = spec.get("objectives")
    if not isinstance(objectives, list) or not objectives:
        raise context.error(
            "spec.objectives must be a non-empty list", i, ("spec", "objectives"), name
        )
    description = str(spec.get("description") or doc["metadata"].get("displayName") or "")
    slos = []
    for j, objective in enumerate(objectives):
        path = ("spec", "objectives", j)
        if not isinstance(objective, Mapping):
            raise context.error("an objective must be a mapping", i, path, name)
        slo_name = (
            name if len(objectives) == 1 else f"{name}-{_slug(objective.get('displayName'), j)}"
        )
        indicator = _indicator(objective, spec, indicators, i, path, slo_name, context)
        slo: dict[str, Any] = {
            "name": slo_name,
            "objective": _target(objective, i, path, slo_name, context),
            "description": description,
            "sli": _sli(indicator, objective, i, path, slo_name, context),
        }
        selectors = indicator.get("_selectors")
        if selectors is not None:
            slo["selectors"] = selectors
        if period is not None:
            slo["period"] = period
        slos.append(slo)
    return slos


def _period(spec: Mapping[str, Any], i: int, name: str, context: _Context) -> str | None:
    windows = spec.get("timeWindow")
    if windows is None:
        return None
    if not isinstance(windows, list) or len(windows) != 1 or not isinstance(windows[0], Mapping):
        raise context.error(
            "timeWindow must be a list of one window", i, ("spec", "timeWindow"), name
        )
    window = windows[0]
    if window.get("isRolling", True) is not True or "calendar" in window:
        raise context.error(
            "calendar-aligned time windows are not supported (use isRolling: true)",
            i,
            ("spec", "timeWindow", 0),
            name,
        )
    return window.get("duration")


def _target(
    objective: Mapping[str, Any], i: int, path: tuple, name: str, context: _Context
) -> float:
    if "target" in objective:
        target = objective["target"]
    elif "targetPercent" in objective:
        target = objective["targetPercent"]
        target = target / 100.0 if isinstance(target, int | float) and target >= 1.0 else target
    else:
        raise context.error("an objective needs 'target' or 'targetPercent'", i, path, name)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.0 < target < 1.0:
        raise context.error(f"target {target!r} must be in (0, 1)", i, (*path, "target"), name)
    return float(target)


def _indicator(
    objective: Mapping[str, Any],
    spec: Mapping[str, Any],
    indicators: Mapping[str, tuple[Mapping[str, Any], int]],
    i: int,
    path: tuple,
    name: str,
    context: _Context,
) -> dict[str, Any]:
    for holder, where in ((objective, path), (spec, ("spec",))):
        if isinstance(holder.get("indicator"), Mapping):
            return dict(_mapping(holder["indicator"], "spec", i, (*where, "indicator"), context))
        ref = holder.get("indicatorRef")
        if ref is not None:
            if ref not in indicators:
                raise context.error(
                    f"indicatorRef {ref!r} names no 'kind: SLI' document",
                    i,
                    (*where, "indicatorRef"),
                    name,
                )
            return dict(indicators[ref][0])
    raise context.error("the SLO needs spec.indicator or spec.indicatorRef", i, ("spec",), name)


def _sli(
    indicator: dict[str, Any],
    objective: Mapping[str, Any],
    i: int,
    path: tuple,
    name: str,
    context: _Context,
) -> dict[str, Any]:
    if "thresholdMetric" in indicator:
        source = (
            indicator["thresholdMetric"].get("metricSource", {})
            if isinstance(indicator["thresholdMetric"], Mapping)
            else {}
        )
        if str(source.get("type", "")).lower() != "budgetpilot" or not isinstance(
            source.get("spec"), Mapping
        ):
            raise context.error(
                "a thresholdMetric SLI needs 'metricSource: {type: budgetpilot, spec: <llm SLI>}'",
                i,
                path,
                name,
            )
        llm = dict(source["spec"])
        selectors = llm.pop("selectors", None)
        if selectors is not None:
            indicator["_selectors"] = selectors
        _apply_threshold(llm, objective, i, path, name, context)
        return {"llm": llm}
    if isinstance(indicator.get("ratioMetric"), Mapping):
        return _ratio_sli(indicator["ratioMetric"], i, path, name, context)
    raise context.error("the indicator needs 'thresholdMetric' or 'ratioMetric'", i, path, name)


def _apply_threshold(
    llm: dict[str, Any],
    objective: Mapping[str, Any],
    i: int,
    path: tuple,
    name: str,
    context: _Context,
) -> None:
    if "value" not in objective:
        return
    op = objective.get("op", "lte")
    if op not in ("lt", "lte"):
        raise context.error(
            f"op {op!r}: budgetpilot SLIs count values below a threshold (lt/lte)",
            i,
            (*path, "op"),
            name,
        )
    kind = llm.get("kind")
    if kind in _THRESHOLDED:
        llm.setdefault(_THRESHOLD_FIELD.get(kind, "threshold_s"), objective["value"])


def _ratio_sli(
    ratio: Mapping[str, Any], i: int, path: tuple, name: str, context: _Context
) -> dict[str, Any]:
    def query(key: str) -> str | None:
        part = ratio.get(key)
        if part is None:
            return None
        spec = part.get("metricSource", {}).get("spec", {}) if isinstance(part, Mapping) else {}
        text = spec.get("query") if isinstance(spec, Mapping) else None
        if not isinstance(text, str):
            raise context.error(
                f"ratioMetric.{key} needs metricSource.spec.query (PromQL)", i, path, name
            )
        return text

    raw = query("raw")
    if raw is not None:
        failure = ratio.get("rawType", "failure") == "failure"
        return {"raw": {"error_ratio_query": raw if failure else f"1 - ({raw})"}}
    total, good, bad = query("total"), query("good"), query("bad")
    if total is None or (good is None) == (bad is None):
        raise context.error("ratioMetric needs 'total' and one of 'good' or 'bad'", i, path, name)
    error = bad if bad is not None else f"({total}) - ({good})"
    return {"events": {"error_query": error, "total_query": total}}


def _slug(text: Any, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(text or "").lower()).strip("-")
    return slug or str(index)
