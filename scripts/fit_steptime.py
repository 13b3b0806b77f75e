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

Usage: ``python scripts/fit_steptime.py [--data DIR] [--out FILE]`` regenerates the committed
file (needs scipy).

A user's own GPU: ``python scripts/fit_steptime.py --profiles DIR --gpu NAME [--prefix P] --out
my-gpu.json`` fits the same matrix-multiply roofline, element-wise and all-reduce constants from
``DIR/{P}_*_mlp.csv`` and ``DIR/{P}_dgx_all_reduce.csv`` (optional: without it the GPU is
calibrated for TP 1 only) and writes a calibration file (:mod:`envs.sim.calibration`) that a
fleet file's spec sheet names (``gpu: {name: NAME, ..., calibration: my-gpu.json}``). No spec
sheet is needed here: matrix multiplies are fitted as absolute rates. Attention and the serving
stack are not in the profiles; they are borrowed from the calibrated GPU nearest in measured
matrix-multiply rates (the rule is printed and stored in the file's ``provenance``). A profile
with a missing column or an unparsable row is refused naming the file, row and column, and
nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from envs.paths import reference_data_dir
from envs.sim.calibration import CALIBRATION_FORMAT, CalibrationFile
from envs.sim.capacity import write_json_atomically
from envs.sim.catalog import ModelSpec, get_gpu
from envs.sim.fidelity import (
    SPLITWISE_CSV,
    SplitwiseConfig,
    fit_serving_stack,
    load_splitwise,
    stack_design,
)
from envs.sim.steptime import (
    ELEMENTWISE_OPS,
    GEMM_OPS,
    PARAMS_PATH,
    ServingStack,
    elementwise_width,
    load_params,
)
from slo.files import TextFileError, read_text

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


#: Operators of one layer in a Vidur MLP profile (``time_stats.<op>.mean``, milliseconds).
PROFILE_OPS = (*GEMM_OPS, *ELEMENTWISE_OPS, "emb")
#: Columns of a Vidur MLP profile the fit reads, and their types.
MLP_COLUMNS: dict[str, type] = {
    **dict.fromkeys(("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size"), int),
    **dict.fromkeys(("num_tokens", "num_tensor_parallel_workers"), int),
    **{f"time_stats.{op}.mean": float for op in PROFILE_OPS},
}
#: Columns of a Vidur all-reduce profile the fit reads, and their types.
ALL_REDUCE_COLUMNS: dict[str, type] = {
    "collective": str,
    "num_workers": int,
    "devices_per_node": int,
    "size": int,
    "time_stats.all_reduce.median": float,
}


class ProfileError(ValueError):
    """A profile file that cannot be fitted; the message names the file, row and column."""


def _value(text: str | None, kind: type) -> int | float | str:
    """``text`` as ``kind`` (ValueError saying why not): a positive integer, a positive finite
    number (times in a profile are never zero), or a non-empty string."""
    if text is None or not text.strip():
        raise ValueError("missing value")
    if kind is str:
        return text.strip()
    value = kind(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r} is not a positive number")
    return value


def read_rows(path: Path, columns: dict[str, type]) -> list[dict]:
    """The rows of a profile CSV, ``columns`` parsed to their types (plus Vidur's optional
    ``use_gated_mlp`` flag); ProfileError names the file, the row and the column of a missing
    column or an unparsable value."""
    try:
        text = read_text(path)
    except (OSError, TextFileError) as exc:
        raise ProfileError(
            str(exc) if isinstance(exc, TextFileError) else f"{path}: {exc}"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ProfileError(f"{path}: missing column {missing[0]!r}")
    rows = []
    for row, record in enumerate(reader, start=1):
        parsed = {}
        for name, kind in (
            *columns.items(),
            *(("use_gated_mlp", str),) * ("use_gated_mlp" in header),
        ):
            try:
                parsed[name] = _value(record[name], kind)
            except ValueError as exc:
                problem = "not a number" if "could not convert" in str(exc) else str(exc)
                raise ProfileError(
                    f"{path}: row {row} (line {reader.line_num}), column {name!r}: {problem}"
                ) from None
        rows.append(parsed)
    if not rows:
        raise ProfileError(f"{path}: no rows (only a header)")
    return rows


def profile_model(row: dict) -> ModelSpec:
    """Return the architecture a Vidur profile row was measured on."""
    hidden, heads = row["n_embd"], row["n_head"]
    return ModelSpec(
        name="profile",
        layers=1,
        hidden=hidden,
        heads=heads,
        kv_heads=row["n_kv_head"],
        head_dim=hidden // heads,
        mlp_hidden=row["n_expanded_embd"],
        vocab=row["vocab_size"],
        gated_mlp=row.get("use_gated_mlp", "True").lower() != "false",
    )


def op_samples(rows: list[dict]) -> dict[str, list[tuple[ModelSpec, int, int, float]]]:
    """Group profile rows by operator: (model, tp, tokens, mean seconds)."""
    samples = defaultdict(list)
    for row in rows:
        model = profile_model(row)
        tp, n = row["num_tensor_parallel_workers"], row["num_tokens"]
        for op in PROFILE_OPS:
            samples[op].append((model, tp, n, row[f"time_stats.{op}.mean"] * 1e-3))
    return samples


def gemm_arrays(samples: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The matrix-multiply rows of all operators: weights, TP degree, tokens, seconds."""
    rows = [
        (model.layer_linear_params[op], tp, n, t)
        for op in GEMM_OPS
        for model, tp, n, t in samples[op]
    ]
    return tuple(np.asarray(a, dtype=float) for a in zip(*rows, strict=True))


def fit_gemm(
    samples: dict, hbm_bandwidth: float, peak_flops: float, start: tuple[float, float] = (0.8, 0.7)
) -> dict:
    """Fit the matmul roofline (launch, memory and compute efficiency relative to
    ``hbm_bandwidth`` and ``peak_flops``, knee sharpness), efficiencies starting at ``start``."""
    from scipy.optimize import least_squares

    w, tp, n, t = gemm_arrays(samples)
    weight = np.sqrt(octave_weights(n))
    floor_at_1 = 2.0 * w / tp / hbm_bandwidth
    slope_at_1 = 2.0 * w / tp / peak_flops

    def predict(x: np.ndarray) -> np.ndarray:
        launch, e_m, e_c, p = x
        return launch + ((floor_at_1 / e_m) ** p + (slope_at_1 * n / e_c) ** p) ** (1.0 / p)

    fit = least_squares(
        lambda x: weight * np.log(predict(x) / t),
        x0=[2e-6, *start, 2.0],
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


#: A user GPU's matmul rates are searched between half the best rate any profile row achieved
#: (rows scatter around the fit) and this many times it (rows of small matrices run far from
#: peak: launch costs and the soft knee); the search starts at the best achieved rate.
RATE_HEADROOM = 10.0


def fit_gemm_rates(samples: dict) -> dict:
    """Fit the matmul roofline of a GPU without a spec sheet: effective TFLOP/s and HBM TB/s."""
    w, tp, n, t = gemm_arrays(samples)
    hbm = RATE_HEADROOM * float(np.max(2.0 * w / tp / t))
    flops = RATE_HEADROOM * float(np.max(2.0 * w / tp * n / t))
    fit = fit_gemm(samples, hbm, flops, start=(1.0 / RATE_HEADROOM, 1.0 / RATE_HEADROOM))
    return {
        "launch_s": fit["launch_s"],
        "knee_p": fit["knee_p"],
        "effective_tflops": sig(fit["compute_efficiency"] * flops / 1e12),
        "effective_hbm_tb_s": sig(fit["mem_efficiency"] * hbm / 1e12),
        "_fit_mape_percent": fit["_fit_mape_percent"],
        "_fit_rows": fit["_fit_rows"],
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


def fit_all_reduce(rows: list[dict]) -> dict:
    """Fit ``fixed + s_per_byte * bytes`` per GPU count, single node (NVLink) rows only."""
    by_workers = defaultdict(list)
    for row in rows:
        workers = row["num_workers"]
        if row["collective"] == "all_reduce" and workers == row["devices_per_node"]:
            # Vidur's `size` counts fp16 elements.
            by_workers[workers].append(
                (2 * row["size"], row["time_stats.all_reduce.median"] * 1e-3)
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


def mlp_samples(profiles: Path, prefix: str) -> tuple[dict, list[str]]:
    """The operator samples of ``profiles/{prefix}_*_mlp.csv`` and the files they came from."""
    paths = sorted(profiles.glob(f"{prefix}_*_mlp.csv"))
    if not paths:
        raise ProfileError(f"no {prefix}_*_mlp.csv profiles in {profiles}")
    rows = [r for path in paths for r in read_rows(path, MLP_COLUMNS)]
    return op_samples(rows), [p.name for p in paths]


def fit_gpu(vidur: Path, prefix: str, gpu_name: str) -> dict:
    """Fit all constants of one catalog GPU from its Vidur profiles."""
    samples, _ = mlp_samples(vidur, prefix)
    gpu = get_gpu(gpu_name)
    return {
        "gemm": fit_gemm(samples, gpu.hbm_bandwidth, gpu.peak_flops),
        "elementwise": fit_elementwise(samples),
        "all_reduce": fit_all_reduce(
            read_rows(vidur / f"{prefix}_dgx_all_reduce.csv", ALL_REDUCE_COLUMNS)
        ),
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


def constants_and_quality(fits: dict) -> tuple[dict, dict]:
    """Split per-operator fits into their constants and their ``_fit_mape_percent``."""
    constants = {k: {n: v for n, v in f.items() if not n.startswith("_")} for k, f in fits.items()}
    return constants, {k: f["_fit_mape_percent"] for k, f in fits.items()}


def nearest_calibrated_gpu(gemm: dict, params: dict) -> tuple[str, str]:
    """The committed calibrated GPU whose matmul rates are nearest to ``gemm``'s (log distance
    of effective TFLOP/s and HBM TB/s), and the rule's statement with the figures."""
    rates = {}
    for name, cal in params["gpus"].items():
        if "serving_stack" in cal:
            gpu = get_gpu(name)
            rates[name] = (
                gpu.peak_flops * cal["gemm"]["compute_efficiency"] / 1e12,
                gpu.hbm_bandwidth * cal["gemm"]["mem_efficiency"] / 1e12,
            )
    mine = (gemm["effective_tflops"], gemm["effective_hbm_tb_s"])

    def distance(name: str) -> float:
        return math.dist(np.log(mine), np.log(rates[name]))

    nearest = min(rates, key=distance)
    rule = (
        f"attention efficiencies (applied to the spec sheet's peak and bandwidths) and the "
        f"serving stack are {nearest}'s, the calibrated GPU nearest in measured matrix-multiply "
        f"rates ({mine[0]:.4g} vs {rates[nearest][0]:.4g} TFLOP/s, {mine[1]:.4g} vs "
        f"{rates[nearest][1]:.4g} TB/s): Vidur's operator profiles measure neither"
    )
    return nearest, rule


def calibrate_gpu(profiles: Path, gpu: str, prefix: str) -> tuple[dict, list[str]]:
    """The calibration file of a user's GPU fitted on ``profiles/{prefix}_*.csv``, and the
    warnings about what the profiles could not give (ProfileError: nothing fitted)."""
    samples, files = mlp_samples(profiles, prefix)
    all_reduce_path = profiles / f"{prefix}_dgx_all_reduce.csv"
    has_all_reduce = all_reduce_path.is_file()
    gemm, gemm_quality = constants_and_quality({"gemm": fit_gemm_rates(samples)})
    elementwise, elementwise_quality = constants_and_quality(fit_elementwise(samples))
    all_reduce, all_reduce_quality = constants_and_quality(
        fit_all_reduce(read_rows(all_reduce_path, ALL_REDUCE_COLUMNS)) if has_all_reduce else {}
    )
    params = load_params()
    nearest, rule = nearest_calibrated_gpu(gemm["gemm"], params)
    warnings = [f"{gpu}: {rule}"]
    if not all_reduce:
        why = "no all-reduce measurements" if has_all_reduce else f"no {all_reduce_path.name}"
        warnings.append(f"{gpu}: {why}: calibrated for tp=1 only (fleets with tp > 1 refused)")
    borrowed = params["gpus"][nearest]
    calibration = {
        "format": CALIBRATION_FORMAT,
        "gpu": gpu,
        "gemm": gemm["gemm"],
        "elementwise": elementwise,
        "all_reduce": all_reduce,
        "attention": borrowed["attention"],
        "serving_stack": asdict(ServingStack.from_dict(borrowed["serving_stack"])),
        "provenance": {
            "fitted_by": "scripts/fit_steptime.py --profiles",
            "profiles": files + ([all_reduce_path.name] if has_all_reduce else []),
            "fit_mape_percent": {
                **gemm_quality,
                "elementwise": elementwise_quality,
                "all_reduce": all_reduce_quality,
            },
            "mlp_rows": len(samples["emb"]),
            "borrowed": {"from": nearest, "fields": ["attention", "serving_stack"], "rule": rule},
        },
    }
    return calibration, warnings


def regenerate(data: Path, out: Path) -> None:
    """Fit the committed parameter file from the reference data folder."""
    vidur = data / "profiles" / "vidur"
    params = {
        "source": "scripts/fit_steptime.py on Vidur profiles (Agrawal et al., MLSys 2024, MIT) "
        "and Splitwise perf_model.csv (Patel et al., ISCA 2024, MIT)",
        "gpus": {gpu: fit_gpu(vidur, prefix, gpu) for prefix, gpu in GPU_FILES.items()},
    }
    fit_serving_stacks(params, load_splitwise(data / SPLITWISE_CSV))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
    for gpu, p in params["gpus"].items():
        print(f"{gpu}: gemm {p['gemm']}")
        print(f"{gpu}: serving stack {p.get('serving_stack')}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=reference_data_dir())
    parser.add_argument("--out", type=Path, help=f"default (no --profiles): {PARAMS_PATH}")
    parser.add_argument("--profiles", type=Path, help="folder of a user GPU's Vidur profiles")
    parser.add_argument("--gpu", help="the user GPU's name, as its fleet-file spec sheet gives it")
    parser.add_argument("--prefix", help="the profiles' file prefix (default: the GPU's name)")
    args = parser.parse_args(argv)
    if args.profiles is None:
        if args.gpu or args.prefix:
            parser.error("--gpu and --prefix calibrate a user GPU: give its --profiles too")
        regenerate(args.data, args.out or PARAMS_PATH)
        return
    if not args.gpu or args.out is None:
        parser.error("--profiles needs --gpu NAME and --out FILE")
    try:
        calibration, warnings = calibrate_gpu(args.profiles, args.gpu, args.prefix or args.gpu)
    except ProfileError as exc:
        sys.exit(f"error: {exc} (nothing written)")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    CalibrationFile.model_validate(calibration)  # what a fleet file will read
    write_json_atomically(args.out, calibration, indent=1)
    print(f"{args.gpu}: gemm {calibration['gemm']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
