"""The slim install: the sidecar's dependencies only, in a fresh venv, from the package index.

The install follows the Containerfile step by step (its COPY lines pick the sources, its pip
commands build and install the wheel), so the image recipe and this test cannot drift apart.
The installed ``budgetpilot sidecar --once`` then governs an engine twin started from the full
install, and the venv must hold none of the simulator's or the training stack's packages.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from slo.prometheus_server import free_port
from tests.conftest import stop_process

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILE = REPO / "Containerfile"
#: What the slim install must not bring (the simulator, plots, Gymnasium, training).
ABSENT = ("numba", "torch", "ray", "gymnasium", "matplotlib", "stable_baselines3")
ZOO_POLICY = REPO / "policies" / "zoo" / "ppo-standard.onnx"

pytestmark = pytest.mark.slow


def containerfile_steps() -> tuple[list[list[str]], list[str], list[str]]:
    """The build stage's COPY sources and the pip arguments of the wheel build and the install."""
    copies, pip_commands = [], []
    for line in CONTAINERFILE.read_text().replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["COPY"] and not words[1].startswith("--from"):
            copies.append(words[1:-1])
        if words[:1] == ["RUN"]:
            command = " ".join(words[1:]).split(" && ")[0].split()
            if command[:3] == ["python", "-m", "pip"]:
                pip_commands.append(command[3:])
    wheel, install = pip_commands
    return copies, wheel, install


def test_the_containerfile_builds_a_wheel_and_installs_it_without_extras():
    copies, wheel, install = containerfile_steps()
    assert [path for sources in copies for path in sources][2:] == [
        "slo", "envs", "agents", "training", "policies", "eval"
    ]  # fmt: skip
    assert wheel[0] == "wheel" and "--no-deps" in wheel and wheel[-1] == "."
    assert install[0] == "install" and install[-1] == "/wheels/budgetpilot-*.whl"  # no [extras]


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory) -> Path:
    """A fresh venv with the slim install, made by the Containerfile's steps."""
    tmp = tmp_path_factory.mktemp("slim")
    source, wheels, venv = tmp / "src", tmp / "wheels", tmp / "venv"
    copies, wheel, install = containerfile_steps()
    for sources in copies:
        for name in sources:
            origin = REPO / name
            if origin.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
                shutil.copytree(origin, source / name, ignore=ignore)
            else:
                source.mkdir(exist_ok=True)
                shutil.copy2(origin, source / name)
    # pip of this interpreter installs into the venv (--python): no pip bootstrapped in it. The
    # image's --no-cache-dir keeps it small; here the cache saves downloads.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "-q", "--python", str(venv / "bin" / "python")]
    wheel = [str(wheels) if arg == "/wheels" else arg for arg in wheel if arg != "--no-cache-dir"]
    subprocess.run([*pip, *wheel], cwd=source, env=_slim_env(), check=True, timeout=600)
    built = [str(path) for path in wheels.glob(Path(install[-1]).name)]
    assert len(built) == 1, built
    options = [arg for arg in install[:-1] if arg != "--no-cache-dir"]
    subprocess.run([*pip, *options, *built], cwd=tmp, env=_slim_env(), check=True, timeout=900)
    return venv


def _slim_env() -> dict[str, str]:
    """The environment of a slim-venv process: nothing of this checkout on its path (its
    metadata would tell pip that budgetpilot is installed)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_slim_install_has_none_of_the_heavy_packages(slim_venv, tmp_path):
    code = (
        "import importlib.util, json, pkgutil, sys\n"
        "import policies.sidecar\n"
        "names = [m.name for m in pkgutil.iter_modules(policies.sidecar.__path__)]\n"
        "for name in names: __import__(f'policies.sidecar.{name}')\n"
        f"print(json.dumps([[m for m in {ABSENT!r} if importlib.util.find_spec(m)], names,"
        " [m for m in sys.modules if m.startswith(('envs.sim', 'envs.fleet_env'))]]))\n"
    )
    result = subprocess.run(
        [str(slim_venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_slim_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    installed, modules, simulator = json.loads(result.stdout)
    assert installed == []
    assert {"loop", "server", "cli", "actuators"} <= set(modules) and "perf" not in modules
    assert simulator == []


@pytest.fixture
def twin_url(tmp_path):
    """An engine twin of the full install (this interpreter) on loopback."""
    url = f"http://127.0.0.1:{free_port()}"
    args = ["twin", "--scenario", "steady", "--listen", url.removeprefix("http://")]
    process = subprocess.Popen(
        [sys.executable, "-m", "eval.cli", *args, "--speed", "30"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "twin.log").open("w"),
    )
    deadline = time.monotonic() + 300  # a first start compiles the simulator (numba)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/engines", timeout=2):
                break
        except OSError:
            assert process.poll() is None, (tmp_path / "twin.log").read_text()
            assert time.monotonic() < deadline, "the twin did not start within 300 s"
            time.sleep(0.2)
    yield url
    stop_process(process)


def test_the_slim_sidecar_governs_the_twin(slim_venv, twin_url, tmp_path):
    command = [str(slim_venv / "bin" / "budgetpilot"), "sidecar", "--policy", str(ZOO_POLICY)]
    command += ["--twin", twin_url, "--state-dir", str(tmp_path / "state"), "--once"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=_slim_env(), timeout=300
    )
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout[result.stdout.index("{") :])
    assert decision["mode"] == "policy" and decision["actuated"]
    with urllib.request.urlopen(f"{twin_url}/v1/knobs", timeout=10) as response:
        applied = json.load(response)
    knobs = applied.get("knobs", applied)
    for name, value in decision["knobs"].items():
        assert knobs[name] == pytest.approx(value), name


def test_a_command_needing_an_extra_says_which(slim_venv, tmp_path):
    command = [str(slim_venv / "bin" / "budgetpilot"), "simulate", "--hours", "0.01"]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=_slim_env(), timeout=120
    )
    assert result.returncode == 2
    assert "pip install 'budgetpilot[sim]'" in result.stderr
