"""Fit the prompt/output length models from the Azure LLM inference traces.

Each model is a Gaussian copula: the marginal of prompt and of output tokens is stored as a
quantile table indexed by normal score (``z`` grid), and the dependence between the two as the
correlation of their normal scores. Sampling then needs only ``np.interp`` of correlated normals.
Writes ``envs/sim/params/lengths.json``.

Usage: ``python scripts/fit_lengths.py [--data DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from envs.paths import reference_data_dir
from envs.sim.workload import LENGTHS_PATH, TraceReplay

#: trace file -> length-model name.
TRACES = {
    "azure-conv": "traces/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "traces/AzureLLMInferenceTrace_code.csv",
}
#: Normal scores of the quantile table: dense enough that linear interpolation between table
#: points keeps the mean and p99 of the trace within ~1%; +-4 covers the smallest and largest of
#: ~20k requests.
Z_GRID = np.linspace(-4.0, 4.0, 161)


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Map values to standard-normal scores through their mid-ranks (ties share a score)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    return ndtri((rankdata(values) - 0.5) / len(values))


def fit_trace(path: Path) -> dict:
    """Fit one length model (quantile tables + copula correlation) to a trace file."""
    from scipy.special import ndtr

    trace = TraceReplay(path)
    prompt, output = trace.prompt_tokens, trace.output_tokens
    levels = ndtr(Z_GRID)
    rho = float(np.corrcoef(normal_scores(prompt), normal_scores(output))[0, 1])
    return {
        "z_grid": Z_GRID.round(6).tolist(),
        "prompt_quantiles": np.quantile(prompt, levels).round(3).tolist(),
        "output_quantiles": np.quantile(output, levels).round(3).tolist(),
        "normal_score_correlation": round(rho, 6),
        "source": path.name,
        "trace_facts": {
            "requests": len(prompt),
            "rate_per_s": round(trace.mean_rate, 4),
            "prompt_mean": round(float(prompt.mean()), 2),
            "prompt_p99": float(np.quantile(prompt, 0.99)),
            "output_mean": round(float(output.mean()), 2),
            "output_p99": float(np.quantile(output, 0.99)),
        },
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=reference_data_dir())
    parser.add_argument("--out", type=Path, default=LENGTHS_PATH)
    args = parser.parse_args()
    models = {name: fit_trace(args.data / rel) for name, rel in TRACES.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(models, indent=1) + "\n")
    for name, m in models.items():
        print(name, m["trace_facts"], "rho", m["normal_score_correlation"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
