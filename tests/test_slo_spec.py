"""SLO specs: Sloth format, our LLM extension, OpenSLO import and error reporting."""

from __future__ import annotations

import textwrap

import pytest

from slo.spec import (
    DEFAULT_SPEC_PATH,
    FairnessSLI,
    SpecError,
    default_spec,
    describe_sli,
    load_spec,
    parse_spec,
)

# A Sloth file written the way Sloth's users write them: PromQL SLIs (events and raw, with
# Sloth's camelCase alias), plugins, numeric label values, a disabled ticket alert.
SLOTH_FILE = """\
version: "prometheus/v1"
service: "chat-gateway"
labels:
  owner: "serving-team"
  tier: 1
slo_plugins:
  chain:
    - id: "sloth.dev/contrib/alert_for/v1"
slos:
  - name: "http-availability"
    objective: 99.95
    description: "Gateway answers without 5xx."
    sli:
      events:
        error_query: sum(rate(gateway_requests_total{code=~"5.."}[{{.window}}]))
        total_query: sum(rate(gateway_requests_total[{{.window}}]))
    alerting:
      name: GatewayAvailability
      labels:
        category: availability
      annotations:
        runbook: "https://runbooks.example/gateway"
      page_alert:
        labels:
          severity: critical
      ticket_alert:
        disable: true
  - name: "satisfaction"
    objective: 95
    sli:
      raw:
        errorRatioQuery: 1 - avg_over_time(chat_satisfaction_ratio[{{.window}}])
    alerting:
      name: ChatSatisfaction
  - name: "plugin-latency"
    objective: 99
    sli:
      plugin:
        id: "sloth-common/kubernetes/apiserver/latency"
        options: {bucket: "0.5"}
    alerting:
      name: PluginLatency
"""


def spec_with(slo_fields: str, engine: str = "") -> str:
    """A one-SLO spec whose SLO body is ``slo_fields`` (YAML, indented by the caller)."""
    return (
        "version: prometheus/v1\nservice: llm\n"
        + (textwrap.dedent(engine) if engine else "")
        + "slos:\n  - name: slo-a\n"
        + textwrap.indent(textwrap.dedent(slo_fields), "    ")
    )


TTFT = "objective: 99\nsli:\n  llm: {kind: ttft, threshold_s: 1.0}\n"


def test_default_spec_covers_every_budget_dimension():
    spec = default_spec()
    dimensions = {s.dimension_name for s in spec.engine_slos}
    assert {
        "ttft",
        "itl",
        "availability",
        "quality",
        "fairness",
        "context",
        "streaming",
    } <= dimensions
    assert len(spec.engine_slos) == len(spec.slos)
    ttft = next(s for s in spec.slos if s.sli.llm.kind == "ttft")
    assert 0.25 <= ttft.sli.llm.threshold_s <= 2.0
    assert all(0.9 <= s.objective < 1.0 for s in spec.slos)
    assert spec.budgetpilot.models == {"strong": 0, "fast": 1}


def test_sloth_example_file_parses():
    spec = parse_spec(SLOTH_FILE, "sloth.yaml")
    assert spec.service == "chat-gateway"
    assert spec.labels == {"owner": "serving-team", "tier": "1"}
    availability, satisfaction, plugin = spec.slos
    assert availability.objective == pytest.approx(0.9995)
    assert "{{.window}}" in availability.sli.events.error_query
    assert satisfaction.sli.raw.error_ratio_query.startswith("1 - avg_over_time")
    assert plugin.sli.plugin["id"].endswith("latency")
    assert availability.alerting.ticket_alert.disable
    assert spec.engine_slos == ()  # PromQL SLIs are for rules only


@pytest.mark.parametrize(
    ("written", "ratio"),
    [(99.9, 0.999), (99, 0.99), (1, 0.01), (0.95, 0.95), (0.5, 0.5)],
)
def test_objective_accepts_sloth_percent_and_ratios(written, ratio):
    spec = parse_spec(
        spec_with(f"objective: {written}\nsli:\n  llm: {{kind: ttft, threshold_s: 1.0}}\n")
    )
    assert spec.slos[0].objective == pytest.approx(ratio)


def test_llm_sli_kinds_parse_with_defaults():
    body = """\
    objective: 95
    period: 7d
    selectors: {tenant: 3, model: fast}
    sli:
      llm:
        kind: fairness
        base: {kind: itl, threshold_s: 0.1, per: request}
        method: jain
        slice: 10m
    """
    engine = "budgetpilot:\n  models: {strong: 0, fast: 1}\n"
    slo = parse_spec(spec_with(body, engine)).slos[0]
    assert isinstance(slo.sli.llm, FairnessSLI)
    assert slo.sli.llm.slice == 600.0 and slo.sli.llm.min_jain == 0.95
    assert slo.sli.llm.base.per == "request"
    assert slo.period == 7 * 86400.0
    assert slo.selectors.tenant == (3,) and slo.selectors.model == ("fast",)
    assert describe_sli(slo) == "fairness Jain >= 0.95 of (itl <= 0.1 s per request) per 10m"


def test_threshold_on_a_bucket_boundary_is_snapped_to_it():
    spec = parse_spec(
        spec_with("objective: 99\nsli:\n  llm: {kind: ttft, threshold_s: 0.2500000000001}\n")
    )
    assert spec.slos[0].sli.llm.threshold_s == 0.25


def test_windows_scale_with_the_period():
    spec = parse_spec(spec_with(TTFT + "period: 7d\n"))
    # 5m * 7/30 = 70 s -> 2 buckets of 30 s; 30m -> 7 min; 1h -> 14 min; ... 3d -> 16.8 h.
    assert spec.windows_for(spec.slos[0]) == (60.0, 420.0, 840.0, 1680.0, 5040.0, 20160.0, 60480.0)


BAD_SPECS = [
    # (spec text, SLO named in the message, field named in the message, line, message part)
    (
        spec_with("objective: 150\nsli:\n  llm: {kind: ttft, threshold_s: 1.0}\n"),
        "slo-a",
        "objective",
        5,
        "outside (0, 1)",
    ),
    (
        spec_with("objective: 0\nsli:\n  llm: {kind: ttft, threshold_s: 1.0}\n"),
        "slo-a",
        "objective",
        5,
        "outside",
    ),
    (
        spec_with("objective: 100\nsli:\n  llm: {kind: ttft, threshold_s: 1.0}\n"),
        "slo-a",
        "objective",
        5,
        "outside",
    ),
    (
        spec_with("objective: 99\nsli:\n  llm: {kind: latency, threshold_s: 1.0}\n"),
        "slo-a",
        "sli.llm",
        7,
        "unknown SLI kind 'latency'",
    ),
    (spec_with(TTFT + "period: 30x\n"), "slo-a", "period", 8, "bad duration '30x'"),
    (spec_with(TTFT + "period: -1h\n"), "slo-a", "period", 8, "bad duration"),
    (
        spec_with("objective: 99\nsli:\n  llm: {kind: ttft, threshold_s: 0.3}\n"),
        "slo-a",
        "sli.llm.threshold_s",
        7,
        "nearest: 0.25, 0.5",
    ),
    (
        spec_with("objective: 99\nsli:\n  llm: {kind: streaming, pace_s: 0.12}\n"),
        "slo-a",
        "sli.llm.pace_s",
        7,
        "not a bucket boundary",
    ),
    (
        spec_with("objective: 99\nsli:\n  llm: {kind: ttft}\n"),
        "slo-a",
        "sli.llm.threshold_s",
        7,
        "required field is missing",
    ),
    (spec_with("objective: 99\nsli: {}\n"), "slo-a", "sli", 6, "needs one of 'llm'"),
    (spec_with(TTFT + "colour: blue\n"), "slo-a", "colour", 8, "unknown field"),
    (
        spec_with(TTFT + "selectors: {model: huge}\n"),
        "slo-a",
        "selectors.model",
        8,
        "unknown model 'huge'",
    ),
    (
        spec_with(
            "objective: 99\nsli:\n  llm:\n    kind: context\n    truncation: false\n"
            "    length_cut: false\n    max_preemptions: null\n"
        ),
        "slo-a",
        "sli.llm",
        7,
        "must check",
    ),
    (
        spec_with(TTFT, "budgetpilot:\n  windows: [5m, 1h, 30m]\n"),
        None,
        "budgetpilot.windows",
        4,
        "windows not increasing: 1h then 30m",
    ),
    (
        spec_with(TTFT, "budgetpilot:\n  windows: [5m, 1h]\n"),
        None,
        "budgetpilot",
        3,
        "not one of the burn-rate windows",
    ),
    (
        spec_with(
            TTFT,
            "budgetpilot:\n  alert_windows:\n    page: [{long: 5m, short: 1h, burn_rate: 14.4}]\n",
        ),
        None,
        "budgetpilot.alert_windows.page.0",
        5,
        "windows not increasing",
    ),
    (
        spec_with(TTFT, "budgetpilot:\n  resolution: 7m\n"),
        None,
        "budgetpilot",
        3,
        "multiple of resolution",
    ),
    ("version: prometheus/v1\nservice: llm\nslos: []\n", None, "slos", 3, "at least one SLO"),
    (
        "version: prometheus/v1\nservice: llm\nslos:\n  - name: [oops\n",
        None,
        None,
        5,
        "malformed YAML",
    ),
]


@pytest.mark.parametrize(("text", "slo", "field", "line", "message"), BAD_SPECS)
def test_bad_specs_raise_one_error_naming_slo_field_and_line(text, slo, field, line, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "spec.yaml")
    error = caught.value
    assert message in str(error)
    assert error.slo == slo
    assert error.field == field
    assert error.line == line
    assert str(error).startswith(f"spec.yaml:{line}:")


def test_duplicate_slo_names_are_refused():
    text = spec_with(TTFT) + "  - name: slo-a\n" + textwrap.indent(TTFT, "    ")
    with pytest.raises(SpecError, match="duplicate SLO name 'slo-a'") as caught:
        parse_spec(text, "spec.yaml")
    assert caught.value.line == 8


def test_several_problems_are_reported_together():
    text = spec_with("objective: 150\nperiod: 2x\nsli:\n  llm: {kind: ttft, threshold_s: 1.0}\n")
    with pytest.raises(SpecError, match="2 problems") as caught:
        parse_spec(text, "spec.yaml")
    assert "field 'objective'" in str(caught.value) and "field 'period'" in str(caught.value)


def test_load_spec_reports_a_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "absent.yaml")


def test_load_spec_refuses_other_objects():
    with pytest.raises(TypeError, match="got int"):
        load_spec(3)


def test_load_spec_accepts_paths_mappings_and_specs(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(DEFAULT_SPEC_PATH.read_text())
    from_path = load_spec(path)
    assert load_spec(from_path) is from_path
    from_mapping = load_spec(from_path.model_dump(by_alias=True))
    assert from_mapping == from_path


OPENSLO = """\
apiVersion: openslo/v1
kind: Service
metadata: {name: chat}
spec: {description: Chat completions}
---
apiVersion: openslo/v1
kind: SLI
metadata:
  name: first-token
spec:
  thresholdMetric:
    metricSource:
      type: budgetpilot
      spec: {kind: ttft, selectors: {tier: 0}}
---
apiVersion: openslo/v1
kind: SLO
metadata:
  name: chat-ttft
  displayName: Chat time to first token
spec:
  service: chat
  indicatorRef: first-token
  timeWindow:
    - duration: 28d
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - displayName: Fast start
      op: lte
      value: 1.0
      target: 0.99
    - displayName: Eventual start
      op: lt
      value: 2.5
      targetPercent: 99.9
---
apiVersion: openslo/v1
kind: SLO
metadata: {name: chat-availability}
spec:
  service: chat
  indicator:
    metadata: {name: served}
    spec:
      ratioMetric:
        counter: true
        good:
          metricSource: {type: Prometheus, spec: {query: 'sum(rate(served_total[{{.window}}]))'}}
        total:
          metricSource: {type: Prometheus, spec: {query: 'sum(rate(requests_total[{{.window}}]))'}}
  objectives:
    - target: 0.999
"""


def test_openslo_documents_import_into_the_same_model():
    spec = parse_spec(OPENSLO, "openslo.yaml")
    assert spec.service == "chat"
    fast, eventual, availability = spec.slos
    assert fast.name == "chat-ttft-fast-start" and eventual.name == "chat-ttft-eventual-start"
    assert fast.sli.llm.threshold_s == 1.0 and eventual.sli.llm.threshold_s == 2.5
    assert eventual.objective == pytest.approx(0.999)
    assert fast.period == 28 * 86400.0 and fast.selectors.tier == (0,)
    assert fast.description == "Chat time to first token"
    assert availability.sli.events.error_query == (
        "(sum(rate(requests_total[{{.window}}]))) - (sum(rate(served_total[{{.window}}])))"
    )
    assert [s.name for s in spec.engine_slos] == [
        "chat-ttft-fast-start",
        "chat-ttft-eventual-start",
    ]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("value: 2.5", "value: 2.4"), "sli.llm.threshold_s", "not a bucket boundary"),
        (
            ("budgetingMethod: Occurrences", "budgetingMethod: Timeslices"),
            "spec.budgetingMethod",
            "not supported",
        ),
        (("isRolling: true", "isRolling: false"), "spec.timeWindow.0", "calendar-aligned"),
        (
            ("indicatorRef: first-token", "indicatorRef: nothing"),
            "spec.indicatorRef",
            "names no 'kind: SLI'",
        ),
        (("op: lt\n", "op: gt\n"), "spec.objectives.1.op", "lt/lte"),
        (
            ("apiVersion: openslo/v1\nkind: SLI", "apiVersion: openslo/v1alpha\nkind: SLI"),
            "apiVersion",
            "unsupported apiVersion",
        ),
    ],
)
def test_openslo_errors_name_the_field_and_line(change, field, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(OPENSLO.replace(*change), "openslo.yaml")
    assert caught.value.line is not None
    assert caught.value.field == field
