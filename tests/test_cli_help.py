"""Every command's --help as a user reads it: no markup swallowed, no leftover reST, no
types of flags, every choice listed; --version and shell completion."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from agents.baselines import BASELINES
from envs.twin import TWIN_MAPPINGS
from eval.cli import app, version
from slo.metrics import BUILTIN_MAPPINGS
from training.config import available_presets

RUNNER = CliRunner()
ROOT = typer.main.get_command(app)
#: What rich would take for a style tag and swallow: "[default: 8]", "[reactive]".
RICH_TAG = re.compile(r"(?<!\\)\[[a-z#/@][^\[\]]*\]")


def _commands(command=ROOT, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands())
IDS = [" ".join(path) or "budgetpilot" for path, _ in COMMANDS]


def _help(path: tuple[str, ...]) -> str:
    result = RUNNER.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_has_no_rendering_defects(path, command):
    text = _help(path)
    assert not re.search(r"\s\.(?![.\w])", text), f"a stray ' .' (markup swallowed?):\n{text}"
    assert "``" not in text, f"reST double backticks:\n{text}"
    assert "<bool>" not in text, f"a flag shown with a type:\n{text}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_texts_are_plain(path, command):
    texts = [command.help or ""] + [p.help or "" for p in command.params]
    for text in texts:
        assert not RICH_TAG.search(text), f"rich markup would swallow {RICH_TAG.search(text)[0]!r}"
    summary = inspect.cleandoc(command.help or "").split("\n\n")[0]
    assert "\n" not in summary, f"{path}: the summary line breaks in the command list: {summary!r}"


def _option_help(path: tuple[str, ...], name: str) -> str:
    command = dict(COMMANDS)[path]
    return next(p.help for p in command.params if p.name == name)


@pytest.mark.parametrize(
    ("path", "option", "choices"),
    [
        (("train",), "preset", available_presets()),
        (("sidecar",), "fallback", list(BASELINES)),
        (("sidecar",), "mapping", list(BUILTIN_MAPPINGS)),
        (("twin",), "mapping", list(TWIN_MAPPINGS)),
        (("tune",), "baseline", list(BASELINES)),
    ],
)
def test_options_list_their_choices(path, option, choices):
    text = _option_help(path, option)
    missing = [c for c in choices if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", text)]
    assert not missing, f"{' '.join(path)} --{option} does not list {missing}: {text!r}"


def test_version():
    result = RUNNER.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"budgetpilot {version()}"
    assert version() != "unknown"  # the package is installed (pip install -e)


def test_shell_completion_script(monkeypatch):
    # Typer otherwise detects the shell from the process tree, which a detached run lacks.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = RUNNER.invoke(app, ["--show-completion", "bash"], prog_name="budgetpilot")
    assert result.exit_code == 0, result.output
    assert "_BUDGETPILOT_COMPLETE" in result.output


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_numeric_options_are_range_checked(path, command):
    unchecked = [
        p.name
        for p in command.params
        if getattr(p, "type_descriptor", None) is not None
        and p.type_descriptor.annotation in (int, float)
        and p.min is None
        and p.max is None
        and p.callback is None
    ]
    assert not unchecked, f"{' '.join(path)}: no range on {unchecked}"


def test_the_light_list_of_baseline_names_is_the_registry():
    from agents.baseline_names import BASELINE_NAMES

    assert tuple(BASELINES) == BASELINE_NAMES
