"""``budgetpilot slo dashboard``: the Grafana dashboard of a spec, and its queries against a real
Prometheus.

Prometheus scrapes an engine twin (its engines' vLLM pages and its router's counters) and a
sidecar process governing it, with the rules of ``budgetpilot slo rules`` loaded; after a short
run every panel's query must return a number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from envs.twin import EngineTwin
from eval.cli import app
from slo.dashboard import build_dashboard, panel_queries
from slo.prometheus_server import free_port
from slo.rules import render_rules
from slo.spec import default_spec
from tests.conftest import stop_process

pytest.importorskip("grafana_foundation_sdk", reason="the dashboard extra is not installed")

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "slo" / "specs" / "default.yaml"
ZOO_POLICY = REPO / "policies" / "zoo" / "ppo-standard.onnx"


def test_the_cli_writes_a_panel_set_per_slo_and_for_the_decisions(tmp_path):
    output = tmp_path / "dashboard.json"
    result = CliRunner().invoke(app, ["slo", "dashboard", str(SPEC), "-o", str(output)])
    assert result.exit_code == 0, result.output
    model = json.loads(output.read_text())
    spec = default_spec()
    assert model == build_dashboard(spec)  # same spec, same dashboard
    titles = [panel["title"] for panel in model["panels"]]
    for slo in spec.slos:
        assert {f"{slo.name}: burn rate by window", f"{slo.name}: budget remaining"} <= set(titles)
        assert f"{slo.name}: alert" in titles  # every SLO of the default spec is the engine's
        (burn,) = [p for p in model["panels"] if p["title"] == f"{slo.name}: burn rate by window"]
        legends = [t["legendFormat"] for t in burn["targets"]]
        assert legends == ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"]
        assert len({t["refId"] for t in burn["targets"]}) == len(legends)
    decisions = {"Decision mode", "Knobs", "Guardrail interventions", "Decision latency p99"}
    assert decisions <= set(titles)
    assert all(p["datasource"]["uid"] == "${datasource}" for p in model["panels"] if "targets" in p)


def test_a_bad_spec_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: prometheus/v1\nservice: x\nslos: []\n")
    result = CliRunner().invoke(app, ["slo", "dashboard", str(bad)])
    assert result.exit_code == 1
    assert "bad.yaml" in result.output


@pytest.fixture
def twin():
    """The fleet, in accelerated real time."""
    with EngineTwin("steady", seed=3, speed=30.0) as running:
        running.start()
        yield running


@pytest.fixture
def sidecar_url(twin, tmp_path):
    """A sidecar process governing the twin every second; its small max step makes the
    guardrails intervene."""
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": str(ZOO_POLICY),
                "port": port,
                "interval_s": 1.0,
                "guardrails": {"max_step": 0.02},
                "state": {"directory": str(tmp_path / "state")},
            }
        )
    )
    log = tmp_path / "sidecar.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "eval.cli", "sidecar", "--config", str(config), "--twin", twin.url],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    yield f"127.0.0.1:{port}", process, log
    stop_process(process)


def _has_number(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


@pytest.mark.slow
def test_every_panel_query_returns_data_from_prometheus(
    twin, sidecar_url, prometheus_server, tmp_path
):
    sidecar, process, log = sidecar_url
    rules = tmp_path / "rules.yaml"
    text, _ = render_rules(default_spec())
    rules.write_text(text)
    host = twin.url.removeprefix("http://")
    engines = [
        {
            "targets": [host],
            "labels": {"__metrics_path__": f"/engines/{e['name']}/metrics", "replica": e["name"]},
        }
        for e in twin.engines()
    ]
    router = [{"targets": [host], "labels": {"__metrics_path__": "/router/metrics"}}]
    prometheus = prometheus_server(
        [
            {"job_name": "engines", "static_configs": engines},
            {"job_name": "router", "static_configs": router},
            {"job_name": "sidecar", "static_configs": [{"targets": [sidecar]}]},
        ],
        rule_files=[rules],
    )
    queries = panel_queries(build_dashboard(default_spec()))
    assert len(queries) > 50
    deadline = time.monotonic() + 240
    missing = queries
    while missing and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        time.sleep(2)
        missing = [(title, q) for title, q in missing if not _has_number(prometheus.query(q))]
    assert missing == [], f"panels without data: {missing}"
    # The check can fail: a series nobody exports has no data.
    assert not _has_number(prometheus.query("budgetpilot_sidecar_no_such_series"))
