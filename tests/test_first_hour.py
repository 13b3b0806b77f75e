"""What a new user trips over first: numeric options out of range, empty fleets, files that are
not text, models the fidelity data does not know."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from envs.sim import ConfigError, SimConfig
from envs.sim.fidelity import load_splitwise
from eval.cli import app
from policies.runtime import PolicyFileError, read_manifest
from policies.sidecar.config import SidecarConfigError, load_config
from slo.metrics import load_mapping
from slo.spec import SpecError, load_spec
from training.config import PresetError, load_preset

runner = CliRunner()

#: A UTF-8 first line, then bytes that are not UTF-8 on line 2 (a Latin-1 file, say).
NOT_UTF8 = b"# budgetpilot\n caf\xe9: 1\n"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--hours", "0"], "--hours"),
        (["--hours", "-1"], "--hours"),
        (["--hours", "nan"], "--hours"),
        (["--replicas", "0"], "--replicas"),
        (["--replicas", "0", "--rate", "10"], "--replicas"),
        (["--rate", "0"], "--rate"),
        (["--tp", "0"], "--tp"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_simulate_refuses_out_of_range_options(args, option):
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output


def test_fleet_without_replicas_reports_no_kv_usage(tmp_path):
    fleet = tmp_path / "empty.yaml"
    fleet.write_text(
        "pools:\n  - {name: strong, replicas: 0}\nworkload: {kind: poisson, rate: 10}\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        result = runner.invoke(app, ["simulate", "--config", str(fleet), "--hours", "0.01"])
        as_json = runner.invoke(
            app, ["simulate", "--config", str(fleet), "--hours", "0.01", "--json"]
        )
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower()
    figures = json.loads(as_json.stdout)
    assert figures["served"] == 0 and figures["rejected"] == figures["requests"] > 0
    assert figures["kv_usage_mean"] is None


def _not_utf8(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize(
    ("name", "load", "error"),
    [
        ("spec.yaml", load_spec, SpecError),
        ("fleet.yaml", SimConfig.from_yaml, ConfigError),
        ("sidecar.yaml", load_config, SidecarConfigError),
        ("preset.yaml", load_preset, PresetError),
        ("mapping.yaml", load_mapping, ValueError),
        ("perf_model.csv", load_splitwise, ValueError),
        ("policy.onnx", read_manifest, PolicyFileError),
    ],
)
def test_a_file_that_is_not_text_is_named_with_its_line(tmp_path, name, load, error):
    path = _not_utf8(tmp_path, name)
    if name == "policy.onnx":
        _not_utf8(tmp_path, "policy.json")  # the manifest beside it is what is read as text
        path = tmp_path / "policy.onnx"
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert "line 2" in message and "not UTF-8" in message
    assert str(path.with_suffix(".json") if name == "policy.onnx" else path) in message


@pytest.mark.parametrize("content", [NOT_UTF8, bytes(range(256)) * 4])
def test_simulate_names_a_trace_that_is_not_text(tmp_path, content):
    trace = tmp_path / "trace.csv"
    trace.write_bytes(content)
    result = runner.invoke(app, ["simulate", "--trace", str(trace), "--hours", "0.01"])
    assert result.exit_code == 2
    assert str(trace) in result.stderr and "not UTF-8" in result.stderr
    assert "codec can't decode" not in result.stderr


def test_splitwise_model_outside_the_catalog_is_named(tmp_path):
    csv = tmp_path / "perf_model.csv"
    csv.write_text(
        "model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel\n"
        "llama2-70b,a100-80gb,512,1,128,196.2,54.8,2\n"
        "llama2-13b,a100-80gb,512,1,128,96.2,24.8,1\n"
    )
    with pytest.raises(ValueError) as info:
        load_splitwise(csv)
    message = str(info.value)
    assert str(csv) in message and "line 3" in message and "'llama2-13b'" in message
    assert "SPLITWISE_MODELS" in message and "catalog" in message
