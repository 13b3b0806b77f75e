"""A Grafana dashboard of a spec's error budgets and of the controller sidecar's decisions.

Built with Grafana's own SDK (``grafana-foundation-sdk``, the ``dashboard`` extra). Per SLO: its
burn rate over each window and its period budget remaining, from the series that ``budgetpilot
slo rules`` records (:func:`slo.rules.slo_queries`), and, for the SLOs the budget engine
computes, the alert level the sidecar exports. Per decision: the sidecar's mode, its knobs
(published and proposed), its guardrail interventions and its decision latency.

The sidecar's series are named here by :data:`SIDECAR_PREFIX` (``policies.sidecar.telemetry``,
which ``slo`` must not import); ``tests/test_dashboard.py`` runs every panel's query against a
real Prometheus scraping a sidecar and an engine twin, with the rules loaded. A series Prometheus
does not have shows as "no data", never as a healthy value.
"""

from __future__ import annotations

import json
from typing import Any

from slo.rules import slo_queries
from slo.spec import ServiceSpec

#: Prefix of the sidecar's metric names (``policies.sidecar.telemetry.PREFIX``).
SIDECAR_PREFIX = "budgetpilot_sidecar"
#: The dashboard's data-source variable: every panel queries the Prometheus chosen there.
DATASOURCE_VARIABLE = "datasource"
#: The sidecar's alert levels (``budgetpilot_sidecar_alert_level``): text and colour.
_ALERT_LEVELS = {"0": ("none", "green"), "1": ("ticket", "orange"), "2": ("page", "red")}
_NO_DATA = "no data"


def build_dashboard(spec: ServiceSpec) -> dict[str, Any]:
    """The dashboard of ``spec`` as the JSON model Grafana imports.

    Raises
    ------
    ModuleNotFoundError
        ``grafana-foundation-sdk`` is not installed (``pip install budgetpilot[dashboard]``).
    """
    from grafana_foundation_sdk.builders import dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    builder = (
        dashboard.Dashboard(f"{spec.service}: error budgets and decisions")
        .uid(f"budgetpilot-{spec.service}"[:40])
        .tags(["budgetpilot", "slo"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(
            dashboard.DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus")
        )
    )
    engine_slos = {slo.name for slo in spec.engine_slos}
    for slo in spec.slos:
        builder.with_row(dashboard.Row(f"SLO {slo.name} ({slo.objective * 100:g}%)"))
        for panel in _slo_panels(spec, slo, alerts=slo.name in engine_slos):
            builder.with_panel(panel)
    builder.with_row(dashboard.Row("Sidecar decisions"))
    for panel in _decision_panels():
        builder.with_panel(panel)
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """Every panel's title and query of a dashboard model (rows have none)."""
    return [
        (panel["title"], target["expr"])
        for panel in model["panels"]
        for target in panel.get("targets", [])
    ]


def _query(expr: str, legend: str, index: int = 0) -> Any:
    """The ``index``-th query of a panel (reference ids A, B, ...)."""
    from grafana_foundation_sdk.builders import prometheus

    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))


def _datasource() -> Any:
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    return DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")


def _thresholds(*steps: tuple[float | None, str]) -> Any:
    from grafana_foundation_sdk.builders import dashboard
    from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def _slo_panels(spec: ServiceSpec, slo: Any, *, alerts: bool) -> list[Any]:
    from grafana_foundation_sdk.builders import stat, timeseries
    from grafana_foundation_sdk.models.dashboard import ValueMap, ValueMappingResult

    burn_rates, remaining = slo_queries(spec, slo)
    burn = (
        timeseries.Panel()
        .title(f"{slo.name}: burn rate by window")
        .description(
            "Error ratio over each window / (1 - objective): at 1 the budget lasts exactly one "
            "period; the page alerts fire at 14.4 and 6."
        )
        .datasource(_datasource())
        .span(12)
        .height(8)
        .min(0)
        .thresholds(_thresholds((None, "green"), (1.0, "orange"), (14.4, "red")))
    )
    for i, (window, expr) in enumerate(burn_rates.items()):
        burn.with_target(_query(expr, window, i))
    policy = spec.budgetpilot.policy
    panels = [
        burn,
        stat.Panel()
        .title(f"{slo.name}: budget remaining")
        .description("Fraction of the period's error budget left (negative: overspent).")
        .datasource(_datasource())
        .span(6)
        .height(8)
        .unit("percentunit")
        .no_value(_NO_DATA)
        .thresholds(
            _thresholds(
                (None, "red"), (policy.exhausted_at, "orange"), (policy.at_risk_below, "green")
            )
        )
        .with_target(_query(remaining, slo.name)),
    ]
    if alerts:
        options = {
            value: ValueMappingResult(text=text, color=color)
            for value, (text, color) in _ALERT_LEVELS.items()
        }
        panels.append(
            stat.Panel()
            .title(f"{slo.name}: alert")
            .description("The sidecar's multi-window alert: none, ticket or page.")
            .datasource(_datasource())
            .span(6)
            .height(8)
            .no_value(_NO_DATA)
            .mappings([ValueMap(options=options)])
            .with_target(_query(f'{SIDECAR_PREFIX}_alert_level{{slo="{slo.name}"}}', slo.name))
        )
    return panels


def _decision_panels() -> list[Any]:
    from grafana_foundation_sdk.builders import timeseries

    def panel(title: str, description: str, *queries: tuple[str, str]) -> Any:
        built = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(_datasource())
            .span(12)
            .height(8)
        )
        for i, (expr, legend) in enumerate(queries):
            built.with_target(_query(expr, legend, i))
        return built

    p = SIDECAR_PREFIX
    return [
        panel(
            "Decision mode",
            "1 for the mode in force: policy, hold (stale metrics or invalid output), fallback "
            "(the heuristic baseline), kill (kill switch).",
            (f"{p}_mode", "{{mode}}"),
        ),
        panel(
            "Knobs",
            "Published knob values, and what the policy or fallback proposed before guardrails.",
            (f"{p}_knob", "{{knob}}"),
            (f"{p}_proposed_knob", "{{knob}} proposed"),
        ),
        panel(
            "Guardrail interventions",
            "Knob changes the guardrails made (clamp, max step, hysteresis) per 5 minutes.",
            (f"increase({p}_guardrail_interventions_total[5m])", "{{knob}} {{guardrail}}"),
        ),
        panel(
            "Decision latency p99",
            "Observation to action: observation vector, policy (onnxruntime), guardrails.",
            (f"histogram_quantile(0.99, rate({p}_decision_seconds_bucket[5m]))", "p99"),
        ),
    ]
