"""Prometheus rules (checked and unit-tested with the real promtool) and the ``slo`` commands."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from eval.cli import app
from slo.rules import generate_rules, render_rules
from slo.spec import DEFAULT_SPEC_PATH, load_spec, parse_spec

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found: install the Debian package 'prometheus' (.ci/run does)",
)

TTFT_SPEC = {
    "version": "prometheus/v1",
    "service": "llm",
    "labels": {"owner": "serving"},
    "slos": [
        {
            "name": "ttft-1s",
            "objective": 99,
            "sli": {"llm": {"kind": "ttft", "threshold_s": 1.0}},
            "alerting": {
                "name": "TTFTBudgetBurn",
                "labels": {"category": "latency"},
                "annotations": {"summary": "TTFT burns its budget"},
                "page_alert": {"labels": {"severity": "critical"}},
                "ticket_alert": {"labels": {"severity": "warning"}},
            },
        }
    ],
}

# Every SLI form: LLM kinds with selectors and both fairness methods, Sloth PromQL, a 7-day period.
VARIED_SPEC = """\
version: prometheus/v1
service: llm
budgetpilot:
  models: {"meta-llama/Llama-3.1-70B": 0, small: 1}
slos:
  - name: ttft-models
    objective: 99
    selectors: {model: ["meta-llama/Llama-3.1-70B", small]}
    sli: {llm: {kind: ttft, threshold_s: 0.5}}
    alerting: {name: TtftModels, ticket_alert: {disable: true}}
  - name: length-cuts
    objective: 99.5
    period: 7d
    sli: {llm: {kind: context, truncation: false, max_preemptions: null}}
    alerting: {name: LengthCuts, page_alert: {for: 5m}}
  - name: fair-jain
    objective: 90
    sli: {llm: {kind: fairness, method: jain, base: {kind: availability}}}
    alerting: {name: FairJain}
  - name: promql-events
    objective: 99.9
    sli:
      events:
        error_query: sum(rate(http_requests_total{code=~"5.."}[{{.window}}]))
        total_query: sum(rate(http_requests_total[{{ .window }}]))
  - name: promql-raw
    objective: 95
    sli: {raw: {error_ratio_query: '1 - avg_over_time(up[{{.window}}])'}}
  - name: plugin
    objective: 99
    sli: {plugin: {id: sloth-common/availability}}
"""


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@needs_promtool
@pytest.mark.parametrize("spec", [DEFAULT_SPEC_PATH, VARIED_SPEC], ids=["default", "varied"])
def test_generated_rules_pass_promtool_check(tmp_path, spec):
    loaded = load_spec(spec) if spec == DEFAULT_SPEC_PATH else parse_spec(spec)
    text, warnings = render_rules(loaded)
    (tmp_path / "rules.yaml").write_text(text)
    result = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    if spec == VARIED_SPEC:
        assert warnings == ["SLO 'plugin': Sloth plugin SLIs are not supported, skipped"]


def test_rules_use_sloth_names_labels_and_period_scaled_windows():
    rules, _ = generate_rules(parse_spec(VARIED_SPEC))
    groups = {g["name"]: g["rules"] for g in rules["groups"]}
    sli = groups["sloth-slo-sli-recordings-llm-length-cuts"]
    # A 7-day period scales 5m..3d to 1m..16h48m; the period ratio is named after the period.
    assert [r["record"] for r in sli] == [
        f"slo:sli_error:ratio_rate{w}"
        for w in ("1m", "7m", "14m", "28m", "1h24m", "5h36m", "16h48m", "7d")
    ]
    assert 'vllm:request_success_total{finished_reason="length"}[1m]' in sli[0]["expr"]
    meta = {r["record"]: r for r in groups["sloth-slo-meta-recordings-llm-length-cuts"]}
    assert set(meta) >= {
        "slo:objective:ratio",
        "slo:error_budget:ratio",
        "slo:current_burn_rate:ratio",
        "slo:period_error_budget_remaining:ratio",
    }
    assert meta["slo:objective:ratio"]["expr"] == "vector(0.995)"
    assert meta["slo:error_budget:ratio"]["labels"] == {
        "sloth_id": "llm-length-cuts",
        "sloth_service": "llm",
        "sloth_slo": "length-cuts",
    }
    page, ticket = groups["sloth-slo-alerts-llm-length-cuts"]
    assert page["for"] == "5m" and page["labels"]["sloth_severity"] == "page"
    assert "ratio_rate1m" in page["expr"] and "ratio_rate14m" in page["expr"]
    models = groups["sloth-slo-sli-recordings-llm-ttft-models"][0]["expr"]
    assert 'model_name=~"meta\\\\-llama/Llama\\\\-3\\\\.1\\\\-70B|small"' in models
    assert [r["labels"]["sloth_severity"] for r in groups["sloth-slo-alerts-llm-ttft-models"]] == [
        "page"
    ]
    events = groups["sloth-slo-sli-recordings-llm-promql-events"][0]["expr"]
    assert "[5m]" in events and "{{" not in events
    assert "sloth-slo-alerts-llm-promql-events" not in groups  # no alerting block, no alerts


def alert(severity: str, window: str) -> dict:
    labels = {
        "owner": "serving",
        "sloth_id": "llm-ttft-1s",
        "sloth_service": "llm",
        "sloth_slo": "ttft-1s",
        "sloth_window": window,
        "category": "latency",
        "severity": "critical" if severity == "page" else "warning",
        "sloth_severity": severity,
    }
    annotations = {
        "title": f"({severity}) llm ttft-1s SLO error budget burn rate is too fast.",
        "summary": "TTFT burns its budget",
    }
    return {"exp_labels": labels, "exp_annotations": annotations}


def ttft_series(good: str, total: str, le: str = "1.0") -> list[dict]:
    name = "vllm:time_to_first_token_seconds"
    return [
        {"series": f'{name}_bucket{{le="{le}", model_name="strong"}}', "values": good},
        {"series": f'{name}_count{{model_name="strong"}}', "values": total},
    ]


def short_window_exceeds(eval_time: str, exceeds: int) -> dict:
    selector = 'sloth_slo="ttft-1s"'
    return {
        "eval_time": eval_time,
        "expr": f"slo:sli_error:ratio_rate5m{{{selector}}} > bool (14.4 * 0.01)",
        "exp_samples": [
            {
                "labels": "{"
                + f'owner="serving", sloth_id="llm-ttft-1s", sloth_service="llm", {selector}, '
                + 'sloth_window="5m"}',
                "value": exceeds,
            }
        ],
    }


@needs_promtool
@pytest.mark.parametrize("le", ["1.0", "1"])
def test_promtool_unit_tests_fire_the_page_only_when_both_windows_burn(tmp_path, le):
    """Also when the exporter spells the bucket's bound otherwise than prometheus_client
    (Prometheus 2 keeps the spelling it scraped)."""
    text, _ = render_rules(load_spec(TTFT_SPEC))
    (tmp_path / "rules.yaml").write_text(text)
    cases = [
        # Half of the first tokens late for an hour: 50x burn in every window, page and ticket.
        (
            ttft_series("0+50x120", "0+100x120", le),
            "60m",
            [alert("page", "5m"), alert("ticket", "2h")],
            1,
        ),
        # 0.5 % late: 0.5x burn, nothing fires.
        (ttft_series("0+995x120", "0+1000x120", le), "60m", [], 0),
        # One bad minute after two good hours: 5m burns at 25x but 1h only at 1.7x: no page.
        (ttft_series("0+100x119 11900", "0+100x120", le), "120m", [], 1),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": "TTFTBudgetBurn", "exp_alerts": alerts}
            ],
            "promql_expr_test": [short_window_exceeds(at, exceeds)],
        }
        for series, at, alerts, exceeds in cases
    ]
    unit = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_an_idle_window_leaves_the_period_ratio_a_number(tmp_path):
    """Ten idle minutes (no first tokens: 0/0 in the 5m window), then 1% of first tokens late:
    the period's error ratio is the busy windows' 1%, where Sloth's rules keep NaN (no data)
    for the whole 30-day period."""
    text, _ = render_rules(load_spec(TTFT_SPEC))
    (tmp_path / "rules.yaml").write_text(text)
    labels = 'owner="serving", sloth_id="llm-ttft-1s", sloth_service="llm", sloth_slo="ttft-1s"'
    test = {
        "interval": "1m",
        "input_series": ttft_series("0x10 0+99x50", "0x10 0+100x50"),
        "promql_expr_test": [
            {
                "eval_time": "60m",
                "expr": 'abs(slo:sli_error:ratio_rate30d{sloth_slo="ttft-1s"} - 0.01) < bool 1e-9',
                "exp_samples": [{"labels": f'{{{labels}, sloth_window="30d"}}', "value": 1}],
            },
            {"eval_time": "5m", "expr": 'slo:sli_error:ratio_rate5m{sloth_slo="ttft-1s"}'},
        ],
    }
    unit = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit, sort_keys=False))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_wrong_expectation(tmp_path):
    """The unit test above can fail: expecting no page on a 50x burn is refused."""
    text, _ = render_rules(load_spec(TTFT_SPEC))
    (tmp_path / "rules.yaml").write_text(text)
    test = {
        "interval": "1m",
        "input_series": ttft_series("0+50x120", "0+100x120"),
        "alert_rule_test": [{"eval_time": "60m", "alertname": "TTFTBudgetBurn", "exp_alerts": []}],
    }
    unit = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(unit))
    assert promtool("test", "rules", "test.yaml", cwd=tmp_path).returncode != 0


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

runner = CliRunner()


def test_slo_check_prints_a_summary_of_a_good_spec():
    result = runner.invoke(app, ["slo", "check", str(DEFAULT_SPEC_PATH)])
    assert result.exit_code == 0, result.output
    for name in (
        "ttft-1s",
        "tenant-fairness",
        "streaming-reading-pace",
        "budgetpilot:sli_events_total",
    ):
        assert name in result.output
    assert "OK: 8 SLOs computed by the engine" in result.output


def test_slo_check_fails_with_the_problem_on_a_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: prometheus/v1\nservice: x\nslos:\n  - name: a\n    objective: 99\n"
        "    sli: {llm: {kind: ttft, threshold_s: 0.3}}\n"
    )
    result = runner.invoke(app, ["slo", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:6: SLO 'a': field 'sli.llm.threshold_s'" in result.output


def test_slo_rules_writes_a_rule_file(tmp_path):
    output = tmp_path / "rules.yaml"
    result = runner.invoke(
        app, ["slo", "rules", str(DEFAULT_SPEC_PATH), "-o", str(output), "--mapping", "sglang"]
    )
    assert result.exit_code == 0, result.output
    groups = yaml.safe_load(output.read_text())["groups"]
    assert len(groups) == 3 * 8
    assert "sglang:time_to_first_token_seconds_bucket" in output.read_text()


def test_perf_slo_prints_json_figures():
    result = runner.invoke(app, ["perf", "slo", "--json", "--events", "20000", "--batch", "4096"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["events_per_s"] > 0 and figures["query_us"] > 0
    assert figures["n_slos"] == 8 and figures["n_windows"] == 7
