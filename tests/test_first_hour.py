"""What a new user trips over first: numeric options out of range, empty fleets, files that are
not text, models the fidelity data does not know."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import stop_process
from typer.testing import CliRunner

from envs.sim import ConfigError, SimConfig
from envs.sim.fidelity import load_splitwise
from envs.twin import EngineTwin
from eval.cli import app
from eval.plots import timeline_figure
from eval.report import PRIMARY, _scope
from policies.runtime import PolicyFileError, read_manifest
from policies.sidecar.cli import TWIN_AUDIT_LOG
from policies.sidecar.config import SidecarConfigError, load_config
from policies.sidecar.decision_log import changes, worst_burn
from slo import BudgetEngine, default_spec
from slo.metrics import load_mapping
from slo.progress import ProgressReport
from slo.spec import SpecError, load_spec
from training.config import PresetError, load_preset
from training.report import learning_curves_figure

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


@pytest.mark.parametrize("content", [NOT_UTF8, bytes(range(256)) * 4], ids=["latin-1", "binary"])
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


def test_a_process_that_imports_only_gymnasium_makes_every_id():
    """What RLlib's env runners do: ``gymnasium.make`` in a process that never imported envs."""
    import envs

    script = (
        "import sys, gymnasium\n"
        "assert 'envs' not in sys.modules\n"
        "for env_id in sys.argv[1:]:\n"
        "    env = gymnasium.make(env_id)\n"
        "    assert env.unwrapped.action_space.shape[0] >= 7, env_id\n"
        "    env.close()\n"
        "env = gymnasium.make(sys.argv[1], scenario='steady', episode_hours=0.05)\n"
        "env.reset(seed=0)\n"
        "print('made', len(sys.argv) - 1)\n"
    )
    ids = [envs.IMPORT_PREFIX + env_id for env_id in envs.ENV_IDS]
    result = subprocess.run(
        [sys.executable, "-c", script, *ids], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["made", str(len(ids))]


# ------------------------------------------------------------------------------------------------
# The sidecar demo: one line per decision, a line at shutdown, the audit log, bad policies first

ZOO_POLICY = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-standard.onnx"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, {"a": 0.5, "b": 2.0}, "a 0.5, b 2"),
        ({"a": 0.5, "b": 2.0}, {"a": 0.5, "b": 2.0}, "unchanged"),
        ({"a": 0.5, "b": 2.0}, {"a": 0.25, "b": 2.0}, "a 0.5->0.25"),
    ],
)
def test_decision_line_lists_the_knobs_that_changed(before, after, expected):
    assert changes(before, after) == expected


def test_worst_burn_names_the_slo_or_says_no_data():
    engine = BudgetEngine(default_spec())
    engine.advance_to(600.0)
    snapshot = engine.snapshot()
    snapshot.burn_rates[:, 0] = np.nan
    assert worst_burn(snapshot, "5m") == "worst burn over 5m: no data"
    snapshot.burn_rates[2, 0] = 3.5
    assert worst_burn(snapshot, "5m") == f"worst burn {snapshot.slo_names[2]} 3.5x over 5m"


def _sidecar_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "eval.cli", "sidecar", *arguments]


@pytest.mark.slow
def test_sidecar_against_the_twin_logs_decisions_audits_and_stops_cleanly(tmp_path):
    with EngineTwin("steady", seed=0, speed=60.0) as twin:
        twin.start()
        command = _sidecar_command("--policy", str(ZOO_POLICY), "--twin", twin.url)
        process = subprocess.Popen(
            [*command, "--interval", "0.25", "--port", "0"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        audit = tmp_path / TWIN_AUDIT_LOG  # on by default against the twin
        try:
            deadline = time.monotonic() + 120.0
            while not audit.exists() or len(audit.read_text().splitlines()) < 4:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "no audited decisions"
                time.sleep(0.1)
            # Two signals at once (Ctrl-C twice, or a supervisor's TERM to the whole group).
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGINT)
            _, log = process.communicate(timeout=60)
        finally:
            stop_process(process)
    assert process.returncode == 0, log
    line = re.compile(r"budgetpilot\.sidecar: decision (policy|hold|fallback): knobs .+; worst")
    decisions = [text for text in log.splitlines() if line.search(text)]
    assert len(decisions) >= len(audit.read_text().splitlines()) - 1 >= 3
    assert "WARNING" not in log.split("decision policy")[0], "a normal start logged as a warning"
    assert f"audit log {audit}" in log and "serving on http://127.0.0.1:" in log
    assert re.search(r"stopped after \d+ decisions \(last: \w+\)", log), log[-2000:]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "policy.onnx: ONNX file not found"),
        (lambda d: (d / "policy.onnx").write_bytes(b"not onnx"), "policy.json: manifest not found"),
    ],
)
def test_a_bad_policy_is_reported_before_the_twin_is_contacted(tmp_path, setup, expected):
    setup(tmp_path)
    policy = tmp_path / "policy.onnx"
    result = runner.invoke(
        app, ["sidecar", "--policy", str(policy), "--twin", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert expected in result.stderr and "twin" not in result.stderr


# ------------------------------------------------------------------------------------------------
# Progress where output is not a terminal


def test_progress_prints_lines_while_work_goes_on():
    stream = io.StringIO()
    with ProgressReport("benchmark runs", stream=stream, every_s=0.05) as report:
        report.update(3, 10)
        deadline = time.monotonic() + 30.0
        while "benchmark runs: 3/10 (30%), " not in stream.getvalue():
            assert time.monotonic() < deadline, stream.getvalue()
            time.sleep(0.05)
        report.update(10)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "benchmark runs: started"
    assert re.fullmatch(r"benchmark runs: done: 10/10 \(100%\) in \d+ s", lines[-1])


def test_simulate_reports_progress_when_output_is_not_a_terminal():
    result = runner.invoke(app, ["simulate", "--hours", "0.01", "--replicas", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert "simulating: started" in result.stderr
    assert re.search(r"simulating: done: 36/36 simulated s \(100%\) in \d+ s", result.stderr)
    assert json.loads(result.stdout)["sim_seconds"] == pytest.approx(36.0)


# ------------------------------------------------------------------------------------------------
# Training output


def test_every_line_of_the_learning_curves_is_distinguishable(tmp_path):
    writer_module = pytest.importorskip("torch.utils.tensorboard", reason="train extra")
    components = ["burn/ttft-1s", "burn/itl-100ms", "page", "exhaustion", "serving"]
    for trial in range(3):
        writer = writer_module.SummaryWriter(str(tmp_path / f"seed{trial}_x" / "tensorboard"))
        for step in (1024, 2048):
            writer.add_scalar("rollout/ep_rew_mean", -step / (trial + 1), step)
            for i, name in enumerate(components):
                writer.add_scalar(f"reward_components/{name}", -0.1 * i * step, step)
            writer.add_scalar("burn_rate/ttft-1s", 0.5 * step, step)
        writer.close()
    figure = learning_curves_figure(tmp_path)
    components_axis = figure.axes[2]
    assert len(components_axis.lines) == 3 * 4  # the burn/ terms are one component
    for axis in figure.axes:
        styles = [(str(line.get_color()), line.get_linestyle()) for line in axis.lines]
        assert len(set(styles)) == len(styles), f"{axis.get_title()}: lines look alike"


def test_tune_status_names_the_run_directory(tmp_path, capsys):
    pytest.importorskip("ray.tune", reason="train extra")
    from training.run import _reporter

    reporter = _reporter(tmp_path / "runs" / "demo")(metric_columns={"timesteps": "steps"})
    reporter._print("== Status ==\nResult logdir: /tmp/ray/session_1/artifacts/demo\n1 RUNNING")
    printed = capsys.readouterr().out
    assert f"Run directory: {tmp_path / 'runs' / 'demo'}" in printed
    assert "/tmp/ray/" not in printed and "1 RUNNING" in printed


# ------------------------------------------------------------------------------------------------
# The quick report


def _traces(hours: np.ndarray) -> list[dict]:
    """Two controllers' traces: SLO b never burns; budgets fall from 0.9 by 0.1% at most."""
    traces = []
    for i, controller in enumerate(("pid", "reactive")):
        burn = np.zeros((hours.size, 3))
        burn[:, 0] = 2.0 + i
        burn[:, 2] = np.linspace(0, 5, hours.size)
        remaining = 0.9 - np.outer(np.linspace(0, 1e-3 * (i + 1), hours.size), np.ones(3))
        traces.append(
            {
                "controller": controller,
                "hours": hours,
                "window_burn_rate": burn,
                "budget_remaining": remaining,
            }  # fmt: skip
        )
    return traces


def test_budget_timelines_show_budget_spent_since_the_episode_start():
    traces, colors = _traces(np.linspace(0, 0.5, 61)), {"pid": "C0", "reactive": "C1"}
    figure = timeline_figure(
        traces, "budget_remaining", ["a", "b", "c"], "budget", colors,
        transform=lambda remaining: 100.0 * (remaining[0] - remaining),
    )  # fmt: skip
    lines = [line.get_ydata() for line in figure.axes[0].lines]
    assert [values[0] for values in lines] == [0.0, 0.0]
    assert lines[0][-1] == pytest.approx(0.1) and lines[1][-1] == pytest.approx(0.2)


def test_burn_timelines_drop_slos_that_never_burn():
    traces, colors = _traces(np.linspace(0, 0.5, 61)), {"pid": "C0", "reactive": "C1"}
    figure = timeline_figure(
        traces, "window_burn_rate", ["a", "b", "c"], "burn", colors, floor=0.01
    )
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.lines]
    assert titles == ["a", "c"]
    assert "never above 0.01: b" in figure._suptitle.get_text()


@pytest.mark.parametrize(("seeds", "hours", "shown"), [(3, 0.5, True), (10, None, False)])
def test_a_short_run_says_what_it_can_show(seeds, hours, shown):
    stats = {PRIMARY: {"point": 0.02, "low": 0.01, "high": 0.05}}
    document = {
        "config": {"seeds": list(range(seeds)), "episode_hours": hours, "scenarios": ["steady"]},
        "analysis": {"groups": {"in-distribution": {"controllers": {"pid": stats}}}},
    }
    text = _scope(document)
    assert bool(text) == shown
    if shown:
        assert "3 seeds of 0.5 h episodes" in text and "+/- 2 percentage points" in text
        assert "judged on the full run" in text
