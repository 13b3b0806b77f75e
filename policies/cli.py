"""``budgetpilot`` subcommands of the ``policies`` package: ``export`` and ``perf policy``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from slo.cli import echo_figures


def register(app: typer.Typer, perf: typer.Typer) -> None:
    """Add this package's commands to the root app and its benchmarks to ``perf``."""
    app.command("export")(export)
    perf.command("policy")(perf_policy)


def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint directory: model.zip, vecnormalize.pkl, run.json.")
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="ONNX file to write; the manifest goes beside it."),
    ],
    opset: Annotated[int, typer.Option(help="ONNX opset (17 or later).", min=17)] = 17,
    parity_samples: Annotated[
        int, typer.Option(help="Random observations checked against stable-baselines3.", min=1)
    ] = 1000,
) -> None:
    """Export a trained checkpoint to ONNX plus a JSON manifest (contracts, SLO spec, provenance).

    The graph takes raw observations (normalisation baked in) and returns actions in [-1, 1];
    load it with policies.runtime.load_policy.
    """
    from policies.export import ExportError, export_checkpoint

    try:
        result = export_checkpoint(checkpoint, output, opset=opset, parity_samples=parity_samples)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {result.onnx_path} and {result.manifest_path}")
    typer.echo(result.summary())


def perf_policy(
    policy: Annotated[Path, typer.Argument(help="Exported policy (.onnx, manifest beside it).")],
    calls: Annotated[int, typer.Option(help="Single-observation act() calls timed.", min=1)] = 2000,
    batch: Annotated[
        int, typer.Option(help="Observations in the batched act() call.", min=1)
    ] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Load time, act() latency (one observation) and batched throughput of an exported policy."""
    import numpy as np

    from policies.runtime import PolicyFileError, load_policy

    start = time.perf_counter()
    try:
        loaded = load_policy(policy)
    except PolicyFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    load_s = time.perf_counter() - start
    low, high = loaded.manifest.observation_contract.bounds()
    observations = np.random.default_rng(0).uniform(low, high, (batch, low.size)).astype(np.float32)
    for obs in observations[:50]:  # warm up the session
        loaded.act(obs)
    latencies = np.empty(calls)
    for i in range(calls):
        obs = observations[i % batch]
        t0 = time.perf_counter()
        loaded.act(obs)
        latencies[i] = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded.act(observations)
    batch_s = time.perf_counter() - t0
    figures = {
        "policy": str(policy),
        "onnx_bytes": policy.stat().st_size,
        "load_ms": round(load_s * 1e3, 2),
        "act_p50_us": round(float(np.percentile(latencies, 50)) * 1e6, 1),
        "act_p99_us": round(float(np.percentile(latencies, 99)) * 1e6, 1),
        "batch": batch,
        "batch_us_per_observation": round(batch_s / batch * 1e6, 2),
    }
    echo_figures(figures, as_json)
