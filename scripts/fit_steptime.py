"""Fit the per-GPU step-time constants from Vidur's operator profiles.

Reads ``profiles/vidur/{gpu}_*_mlp.csv`` (per-operator times of one transformer layer) and
``profiles/vidur/{gpu}_dgx_all_reduce.csv`` from the reference-data folder and writes
``envs/sim/params/steptime.json``:

* matrix multiplies: one roofline per GPU for all operators, models and TP degrees,
  ``launch + ((W / (B e_m))^p + (F n / (P e_c))^p)^(1/p)`` with W the weight bytes, F the FLOPs
  per token, B, P the spec-sheet bandwidth and peak; fitted on log time, every doubling of the
  token count weighted equally;
* element-wise operators: ``fixed + s_per_element * n * width`` per operator;
* all-reduce: ``fixed + s_per_byte * bytes`` per GPU count inside one node (NVLink);
* attention is not in these profiles: literature constants, see ``ATTENTION`` below;
* the serving stack of each machine (``envs.sim.steptime.ServingStack``: per-iteration host
  work, its growth per doubling of TP ranks, unsharded prefill attention): fitted on all of that
  machine's Splitwise Llama-2-70B measurements; ``envs/sim/fidelity.py`` cross-validates the same
  fit across TP degrees.

Usage: ``python scripts/fit_steptime.py [--data DIR] [--out FILE]`` (needs scipy).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from envs.paths import reference_data_dir
from envs.sim.catalog import ModelSpec, get_gpu
from envs.sim.fidelity import (
    SPLITWISE_CSV,
    SplitwiseConfig,
    fit_serving_stack,
    load_splitwise,
    stack_design,
)
from envs.sim.steptime import ELEMENTWISE_OPS, GEMM_OPS, PARAMS_PATH, elementwise_width

#: Vidur's file prefix -> catalog GPU name.
GPU_FILES = {"a100": "a100-80gb", "h100": "h100-80gb"}

#: Attention is not profiled by Vidur; efficiencies from the literature. FlashAttention-2 (Dao,
#: 2023, Fig. 5-6: causal forward, head dim 128) reaches ~190 TFLOP/s on A100 (0.6 of peak) and
#: ~335 TFLOP/s on H100 SXM (0.35: FA2 does not use Hopper's TMA/wgmma). Paged decode attention
#: streams KV at ~70% of HBM bandwidth (vLLM PagedAttention kernel benchmarks); CPU attention over
#: host DRAM reaches ~60% of its bandwidth (NEO, Jiang et al. 2024, AVX kernels).
ATTENTION = {
    "a100-80gb": {
        "prefill_compute_efficiency": 0.6,
        "decode_hbm_efficiency": 0.7,
        "cpu_memory_efficiency": 0.6,
    },
    "h100-80gb": {
        "prefill_compute_efficiency": 0.35,
        "decode_hbm_efficiency": 0.7,
        "cpu_memory_efficiency": 0.6,
    },
}


def read_rows(path: Path) -> list[dict[str, str]]:
    """Return the rows of a CSV file as dicts."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def profile_model(row: dict[str, str]) -> ModelSpec:
    """Return the architecture a Vidur profile row was measured on."""
    hidden, heads = int(row["n_embd"]), int(row["n_head"])
    return ModelSpec(
        name="profile",
        layers=1,
        hidden=hidden,
        heads=heads,
        kv_heads=int(row["n_kv_head"]),
        head_dim=hidden // heads,
        mlp_hidden=int(row["n_expanded_embd"]),
        vocab=int(row["vocab_size"]),
    )


def op_samples(rows: list[dict[str, str]]) -> dict[str, list[tuple[ModelSpec, int, int, float]]]:
    """Group profile rows by operator: (model, tp, tokens, mean seconds)."""
    samples = defaultdict(list)
    for row in rows:
        model = profile_model(row)
        tp, n = int(row["num_tensor_parallel_workers"]), int(row["num_tokens"])
        for op in (*GEMM_OPS, *ELEMENTWISE_OPS, "emb"):
            samples[op].append((model, tp, n, float(row[f"time_stats.{op}.mean"]) * 1e-3))
    return samples


def fit_gemm(samples: dict, gpu_name: str) -> dict:
    """Fit the matmul roofline (launch, memory and compute efficiency, knee sharpness)."""
    from scipy.optimize import least_squares

    gpu = get_gpu(gpu_name)
    weights, tps, tokens, times = [], [], [], []
    for op in GEMM_OPS:
        for model, tp, n, t in samples[op]:
            weights.append(model.layer_linear_params[op])
            tps.append(tp)
            tokens.append(n)
            times.append(t)
    w, tp, n, t = (np.asarray(a, dtype=float) for a in (weights, tps, tokens, times))
    weight = np.sqrt(octave_weights(n))
    floor_at_1 = 2.0 * w / tp / gpu.hbm_bandwidth
    slope_at_1 = 2.0 * w / tp / gpu.peak_flops

    def predict(x: np.ndarray) -> np.ndarray:
        launch, e_m, e_c, p = x
        return launch + ((floor_at_1 / e_m) ** p + (slope_at_1 * n / e_c) ** p) ** (1.0 / p)

    fit = least_squares(
        lambda x: weight * np.log(predict(x) / t),
        x0=[2e-6, 0.8, 0.7, 2.0],
        bounds=([0.0, 0.05, 0.05, 1.0], [1e-4, 1.0, 1.0, 20.0]),
    )
    launch, e_m, e_c, p = (sig(v) for v in fit.x)
    return {
        "launch_s": launch,
        "mem_efficiency": e_m,
        "compute_efficiency": e_c,
        "knee_p": p,
        "_fit_mape_percent": mape_percent(predict(fit.x), t),
        "_fit_rows": len(t),
    }


def octave_weights(tokens: np.ndarray) -> np.ndarray:
    """Weights giving every doubling of the token count the same total weight.

    Vidur samples num_tokens densely above 512 and sparsely below; unweighted, the fit would
    sacrifice the 32-512 token range where decode batches live.
    """
    grid = np.unique(tokens)
    spacing = np.gradient(np.log2(grid)) if len(grid) > 1 else np.ones(1)
    return spacing[np.searchsorted(grid, tokens)]


def fit_linear_relative(
    x: np.ndarray, t: np.ndarray, weight: np.ndarray | None = None
) -> tuple[float, float]:
    """Weighted least-squares ``t ~ a + b x`` on relative error; returns non-negative (a, b)."""
    w = np.sqrt(weight) if weight is not None else np.ones_like(t)
    design = np.stack([np.ones_like(x), x], axis=1) * (w / t)[:, None]
    (a, b), *_ = np.linalg.lstsq(design, w, rcond=None)
    return sig(max(a, 0.0)), sig(max(b, 0.0))


def fit_elementwise(samples: dict) -> dict:
    """Fit ``fixed + s_per_element * elements`` for every element-wise operator."""
    out = {}
    for op in (*ELEMENTWISE_OPS, "emb"):
        x = np.array([n * elementwise_width(m, op, tp) for m, tp, n, _ in samples[op]])
        t = np.array([s[3] for s in samples[op]])
        a, b = fit_linear_relative(x, t, octave_weights(np.array([s[2] for s in samples[op]])))
        out[op] = {
            "fixed_s": a,
            "s_per_element": b,
            "_fit_mape_percent": mape_percent(a + b * x, t),
        }
    return out


def fit_all_reduce(rows: list[dict[str, str]]) -> dict:
    """Fit ``fixed + s_per_byte * bytes`` per GPU count, single node (NVLink) rows only."""
    by_workers = defaultdict(list)
    for row in rows:
        workers = int(row["num_workers"])
        if row["collective"] == "all_reduce" and workers == int(row["devices_per_node"]):
            # Vidur's `size` counts fp16 elements.
            by_workers[workers].append(
                (2 * int(row["size"]), float(row["time_stats.all_reduce.median"]) * 1e-3)
            )
    out = {}
    for workers, pts in sorted(by_workers.items()):
        nbytes, t = (np.array(a, dtype=float) for a in zip(*pts, strict=True))
        a, b = fit_linear_relative(nbytes, t)
        out[str(workers)] = {
            "fixed_s": a,
            "s_per_byte": b,
            "_fit_mape_percent": mape_percent(a + b * nbytes, t),
        }
    return out


def mape_percent(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute percentage error, rounded for the parameter file."""
    return round(float(np.mean(np.abs(pred - actual) / actual) * 100), 2)


def sig(x: float) -> float:
    """``x`` as a plain float with 6 significant digits (keeps the committed JSON readable)."""
    return float(f"{float(x):.6g}")


def fit_gpu(vidur: Path, prefix: str, gpu_name: str) -> dict:
    """Fit all constants of one GPU from its Vidur profiles."""
    rows = [r for path in sorted(vidur.glob(f"{prefix}_*_mlp.csv")) for r in read_rows(path)]
    if not rows:
        raise FileNotFoundError(f"no {prefix}_*_mlp.csv profiles in {vidur}")
    samples = op_samples(rows)
    return {
        "gemm": fit_gemm(samples, gpu_name),
        "elementwise": fit_elementwise(samples),
        "all_reduce": fit_all_reduce(read_rows(vidur / f"{prefix}_dgx_all_reduce.csv")),
        "attention": ATTENTION[gpu_name],
    }


def fit_serving_stacks(params: dict, configs: list[SplitwiseConfig]) -> None:
    """Add each calibrated GPU's serving stack, fitted on all its Splitwise rows, to ``params``."""
    for gpu, cal in params["gpus"].items():
        designs = [stack_design(c, params) for c in configs if c.gpu == gpu and c.fits]
        if not designs:
            print(f"{gpu}: no Splitwise rows, serving stack left unfitted")
            continue
        stack = fit_serving_stack(designs)
        pred = np.array([d.predict(stack) for d in designs])
        actual = np.array([d.measured for d in designs])
        cal["serving_stack"] = {
            **{name: sig(v) for name, v in asdict(stack).items()},
            "_fitted_on": f"Splitwise perf_model.csv, Llama-2-70B, {len(designs)} configurations "
            f"(tp {sorted({d.cfg.tp for d in designs})})",
            "_in_sample_mape_percent": {
                "prompt_time": mape_percent(pred[:, 0], actual[:, 0]),
                "token_time": mape_percent(pred[:, 1], actual[:, 1]),
            },
        }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=reference_data_dir())
    parser.add_argument("--out", type=Path, default=PARAMS_PATH)
    args = parser.parse_args()
    vidur = args.data / "profiles" / "vidur"
    params = {
        "source": "scripts/fit_steptime.py on Vidur profiles (Agrawal et al., MLSys 2024, MIT) "
        "and Splitwise perf_model.csv (Patel et al., ISCA 2024, MIT)",
        "gpus": {gpu: fit_gpu(vidur, prefix, gpu) for prefix, gpu in GPU_FILES.items()},
    }
    fit_serving_stacks(params, load_splitwise(args.data / SPLITWISE_CSV))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
    for gpu, p in params["gpus"].items():
        print(f"{gpu}: gemm {p['gemm']}")
        print(f"{gpu}: serving stack {p.get('serving_stack')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
