"""``budgetpilot simulate`` and ``perf sim``, fleet YAML errors, the reference rate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from envs.sim import REFERENCE_RATE, ConfigError, SimConfig, measure_capacity, reference_config
from envs.sim.perf import benchmark
from eval.cli import app

runner = CliRunner()

SIMULATE_KEYS = {
    "requests", "served", "rejected", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_p50_s",
    "itl_p99_s", "e2e_p50_s", "kv_usage_mean", "preemptions", "sim_seconds", "wall_seconds",
}  # fmt: skip


def test_simulate_json_has_every_figure():
    result = runner.invoke(app, ["simulate", "--hours", "0.02", "--replicas", "2", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert set(figures) >= SIMULATE_KEYS
    assert figures["requests"] > 50 and figures["served"] > 0
    assert figures["ttft_p50_s"] <= figures["ttft_p99_s"]
    assert figures["sim_seconds"] == pytest.approx(72.0)


def test_simulate_table_and_fleet_file(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "pools:\n"
        "  - {name: strong, replicas: 1}\n"
        "  - {name: cheap, model: llama-3.2-1b, replicas: 1, tier: 1, capability: 0.5}\n"
        "workload: {kind: bursty, rate: 3}\n"
        "knobs: {cheap_tier_share: 0.5}\n"
    )
    result = runner.invoke(app, ["simulate", "--config", str(fleet), "--hours", "0.02"])
    assert result.exit_code == 0, result.output
    assert "ttft_p50_s" in result.stdout and "quality_loss_mean" in result.stdout


@pytest.mark.parametrize(
    "text,field",
    [
        ("pools:\n  - {name: a, replicas: -1}\n", "pools.0.replicas"),
        ("pools:\n  - {name: a, gpu: tpu}\n", "pools.0.gpu"),
        ("pools:\n  - {name: a, replica: 2}\n", "pools.0.replica"),
        ("tenants:\n  - {name: t, weight: 0}\n", "tenants.0.weight"),
        ("workload: {kind: poisson, options: {speed: 2}}\n", "workload.options"),
        ("knobs: {offload_fraction: 2}\n", "knobs"),
        ("failures:\n  - {pool: nope, replica: 0, at_s: 1, duration_s: 1}\n", "failures.0.pool"),
        ("pools:\n  - {name: a, tier: 1}\n", "tiers must be numbered"),
    ],
)
def test_malformed_fleet_yaml_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        SimConfig.from_yaml(path)
    assert str(path) in str(info.value) and field in str(info.value)
    result = runner.invoke(app, ["simulate", "--config", str(path)])
    assert result.exit_code == 2 and field in result.stderr


def test_yaml_syntax_error_and_conflicting_flags(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("pools: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SimConfig.from_yaml(path)
    path.write_text("pools:\n  - {name: a}\n")
    result = runner.invoke(app, ["simulate", "--config", str(path), "--replicas", "3"])
    assert result.exit_code == 2 and "--replicas" in result.stderr


def test_perf_sim_figures():
    result = benchmark(
        hours=0.01, scaling=(1, 2), scaling_hours=0.01, repeats=1, fleets=("single-tier",)
    )
    for key in ("requests_per_wall_s", "sim_s_per_wall_s", "prompt_time_mape", "token_time_mape"):
        assert key in result
    assert [row["load_factor"] for row in result["scaling"]] == [1, 2]
    assert result["scaling"][1]["requests"] > 1.5 * result["scaling"][0]["requests"]
    (fleet,) = result["fleets"]
    assert fleet["fleet"] == "examples/fleets/single-tier.yaml" and fleet["replicas"] == 4
    assert fleet["requests"] > 100 and fleet["requests_per_cpu_s"] > 0
    assert (result["prompt_time_mape"] is None) == ("fidelity_reason" in result)
    help_text = runner.invoke(app, ["perf", "sim", "--help"])
    assert help_text.exit_code == 0 and "--json" in help_text.stdout


def test_reference_rate_is_80_percent_of_measured_capacity():
    capacity = measure_capacity(reference_config())
    assert 0.75 * capacity <= REFERENCE_RATE <= 0.85 * capacity
