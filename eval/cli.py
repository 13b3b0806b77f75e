"""The ``budgetpilot`` console command.

Each package contributes its subcommands through a ``register(app, perf)`` function in its own
``cli`` module. Those modules import only typer at module level and defer heavy imports (numba,
torch, ray) to the command bodies, so that ``budgetpilot sidecar`` starts without loading them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer
import typer.core

from agents import cli as agents_cli
from envs import cli as envs_cli
from envs import fit_cli, twin_cli
from eval import bench_cli
from policies import cli as policies_cli
from policies.sidecar import cli as sidecar_cli
from slo import cli as slo_cli
from training import cli as training_cli

app = typer.Typer(
    name="budgetpilot",
    help="Learned governance of multi-dimensional error budgets for LLM inference fleets.",
    no_args_is_help=True,
)
perf = typer.Typer(help="Performance benchmarks: each prints its figures (--json for JSON).")
app.add_typer(perf, name="perf")

for module in (
    slo_cli,
    envs_cli,
    twin_cli,
    fit_cli,
    agents_cli,
    training_cli,
    policies_cli,
    sidecar_cli,
    bench_cli,
):
    module.register(app, perf)


#: Top-level modules of the optional extras, by extra (what a slim install lacks).
EXTRA_OF_MODULE = {
    "numba": "sim",
    "gymnasium": "sim",
    "matplotlib": "sim",
    "torch": "train",
    "stable_baselines3": "train",
    "ray": "train",
    "onnx": "train",
    "grafana_foundation_sdk": "dashboard",
}


def version() -> str:
    """The installed package's version (``unknown`` when run from a source tree)."""
    try:
        return package_version("budgetpilot")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"budgetpilot {version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Learned governance of multi-dimensional error budgets for LLM inference fleets."""


def _flag_type(self: typer.core.TyperOption, ctx: object) -> str | None:
    # typer shows every flag's type as <bool>: a flag takes no value, so it has no type to show.
    if self.is_flag:
        return None
    return _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type


def main() -> None:
    """Entry point of the ``budgetpilot`` console script. A command that needs an extra the
    install lacks (the slim install has the sidecar's dependencies only) says which."""
    try:
        app(prog_name="budgetpilot")
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        typer.echo(
            f"error: this command needs {exc.name} (extra {extra!r}): "
            f"pip install 'budgetpilot[{extra}]'",
            err=True,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
