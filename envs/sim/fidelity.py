"""How well the step-time model reproduces real end-to-end measurements.

The reference is Splitwise's ``perf_model.csv``: Llama-2-70B served on A100-80GB and H100-80GB
machines (DGX) with tensor parallelism 2/4/8, measured by ``prompt_time`` (ms for the prompt
phase of ``batch_size`` prompts of ``prompt_size`` tokens) and ``token_time`` (ms per generated
token of that batch, averaged over the ``token_size - 1`` decode steps).

How a measurement is predicted, with the simulator's own :func:`~envs.sim.steptime.iteration_time`:

* prompt phase: ``batch_size`` iterations of one prompt each. The data shows prompts were not
  batched into one forward pass: 2 x 512-token prompts take longer than 1 x 1024 (A100 TP2:
  416 vs 377 ms), although the single prompt has twice the attention work; this reading also
  cross-validates better than one pass of all prompt tokens;
* token phase: the mean decode iteration of the batch, whose contexts grow from
  ``prompt_size + 1`` to ``prompt_size + token_size - 1`` (the model is linear in context, so
  the mean context gives the mean time);
* configurations whose KV cache cannot fit the deployment (``batch x (prompt + tokens)`` above
  :attr:`Deployment.kv_capacity_tokens`) are excluded: they did not run as described (two rows,
  70B on TP2 with batch 64, report prompt phases 10x faster than batch 32).

Everything GPU-side comes from Vidur's profiles and literature constants. Only each machine's
:class:`~envs.sim.steptime.ServingStack` (three numbers) is fitted on these rows, by least squares
on relative error; the prediction is linear in it. The headline figures are out of sample:
leave-one-TP-out cross-validation, each machine's stack fitted on its rows of the two other TP
degrees. The report also gives the in-sample figures of the committed parameters, leave-one-
batch-group-out figures and the transfer of one machine's stack to the other.

Known misses: decode batches of 32-64 sequences take 5-35% longer than predicted (host work per
sequence, which the iteration formula cannot express: its batch term is per batch token, and a
prompt is hundreds of tokens but one sequence); batched prompt phases at TP 4/8 scatter from -30%
to +50% around b x one prompt; the stack of a single-GPU engine (tp=1) is an extrapolation.
``python -m envs.sim.fidelity`` prints the report as JSON.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from envs.paths import reference_data_dir
from envs.sim.catalog import Deployment, get_gpu, get_model
from envs.sim.steptime import (
    GpuCalibration,
    ServingStack,
    deployment_coeffs,
    iteration_time,
    load_params,
    prefill_attn_pairs,
)
from slo.files import read_text

SPLITWISE_CSV = "profiles/splitwise/perf_model.csv"
SPLITWISE_MODELS = {"llama2-70b": "llama-2-70b"}
N_STACK_PARAMS = len(fields(ServingStack))


@dataclass(frozen=True)
class SplitwiseConfig:
    """One measured configuration (repeats averaged)."""

    model: str
    gpu: str
    tp: int
    prompt_size: int
    batch_size: int
    token_size: int
    prompt_ms: float
    token_ms: float
    repeats: int

    @property
    def deployment(self) -> Deployment:
        """The deployment the configuration ran on."""
        return Deployment(get_model(self.model), get_gpu(self.gpu), self.tp)

    @property
    def fits(self) -> bool:
        """Whether the batch's KV cache fits the deployment."""
        needed = self.batch_size * (self.prompt_size + self.token_size)
        return needed <= self.deployment.kv_capacity_tokens

    @property
    def batch_group(self) -> int:
        """Batch sizes in groups of two doublings: 1 | 2-4 | 8-16 | 32-64."""
        return math.ceil(math.log2(self.batch_size) / 2)

    @property
    def label(self) -> str:
        """Short name for reports."""
        return (
            f"{self.gpu}/tp{self.tp} prompt={self.prompt_size} batch={self.batch_size} "
            f"tokens={self.token_size}"
        )


def load_splitwise(path: Path) -> list[SplitwiseConfig]:
    """Read ``perf_model.csv`` and average the repeats of each configuration."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    with io.StringIO(read_text(path), newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            key = (
                _catalog_model(path, line, row["model"]),
                row["hardware"],
                int(row["tensor_parallel"]),
                int(row["prompt_size"]),
                int(row["batch_size"]),
                int(row["token_size"]),
            )
            groups[key].append((float(row["prompt_time"]), float(row["token_time"])))
    return [
        SplitwiseConfig(*key, *np.mean(times, axis=0).tolist(), len(times))
        for key, times in sorted(groups.items())
    ]


def _catalog_model(path: Path, line: int, splitwise_name: str) -> str:
    """The catalog model a Splitwise model name stands for (ValueError naming it otherwise)."""
    try:
        return SPLITWISE_MODELS[splitwise_name]
    except KeyError:
        raise ValueError(
            f"{path}: line {line}: model {splitwise_name!r} is not mapped to a catalog model "
            f"(mapped: {', '.join(SPLITWISE_MODELS)}); add its ModelSpec to envs/sim/catalog.py "
            "and its name to envs.sim.fidelity.SPLITWISE_MODELS, or drop its rows"
        ) from None


def predict_ms(coeffs: np.ndarray, cfg: SplitwiseConfig) -> tuple[float, float]:
    """Predicted (prompt_time, token_time) in ms of a configuration (see the module docs).

    Parameters
    ----------
    coeffs: the deployment's step-time coefficient vector.
    cfg: the measured configuration.
    """
    p, b = float(cfg.prompt_size), float(cfg.batch_size)
    prompt = b * iteration_time(coeffs, p, prefill_attn_pairs(p), 0.0, 0.0, 0.0)
    mean_ctx = b * (p + cfg.token_size / 2)
    token = iteration_time(coeffs, 0.0, 0.0, b, mean_ctx, 0.0)
    return prompt * 1e3, token * 1e3


@dataclass(frozen=True)
class StackDesign:
    """A configuration's predictions as a linear function of its machine's serving stack.

    Parameters
    ----------
    cfg: the measured configuration.
    base: predicted (prompt, token) ms without any serving-stack cost, shape (2,).
    per_param: ms per unit of each :class:`ServingStack` parameter, shape (2, N_STACK_PARAMS).
    """

    cfg: SplitwiseConfig
    base: np.ndarray
    per_param: np.ndarray

    @property
    def measured(self) -> np.ndarray:
        """Measured (prompt, token) ms."""
        return np.array([self.cfg.prompt_ms, self.cfg.token_ms])

    def predict(self, stack: ServingStack) -> np.ndarray:
        """Predicted (prompt, token) ms with ``stack``."""
        return self.base + self.per_param @ stack.as_array()


def stack_design(cfg: SplitwiseConfig, params: dict) -> StackDesign:
    """Evaluate the step-time model of ``cfg`` at a zero stack and at each unit parameter."""
    deployment = cfg.deployment

    def predicted(stack_values: np.ndarray) -> np.ndarray:
        coeffs = deployment_coeffs(deployment, params, ServingStack(*stack_values))
        return np.array(predict_ms(coeffs, cfg))

    base = predicted(np.zeros(N_STACK_PARAMS))
    units = np.eye(N_STACK_PARAMS)
    per_param = np.stack([predicted(u) - base for u in units], axis=1)
    return StackDesign(cfg, base, per_param)


def nonnegative_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``a x ~ y`` with ``x >= 0``, by trying every support.

    The constrained optimum is the unconstrained solution restricted to its own support, so the
    best non-negative candidate over all 2^n supports is exact (n = 3 here). Columns are
    normalised first: the parameters differ by 12 orders of magnitude.
    """
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    best, best_cost = np.zeros(a.shape[1]), float(y @ y)
    for support in itertools.product((False, True), repeat=a.shape[1]):
        cols = np.flatnonzero(support)
        if cols.size == 0:
            continue
        sol = np.linalg.lstsq(a[:, cols], y, rcond=None)[0]
        if np.any(sol < 0):
            continue
        x = np.zeros(a.shape[1])
        x[cols] = sol
        cost = float(np.sum((a @ x - y) ** 2))
        if cost < best_cost:
            best, best_cost = x, cost
    return best / scale


def fit_serving_stack(designs: Sequence[StackDesign]) -> ServingStack:
    """Fit one machine's serving stack to its configurations (least squares, relative error)."""
    if not designs:
        raise ValueError("no configurations to fit the serving stack on")
    measured = np.concatenate([d.measured for d in designs])
    a = np.concatenate([d.per_param for d in designs]) / measured[:, None]
    y = (measured - np.concatenate([d.base for d in designs])) / measured
    return ServingStack(*nonnegative_lstsq(a, y))


def held_out_predictions(
    designs: Sequence[StackDesign], group: Callable[[SplitwiseConfig], Hashable]
) -> np.ndarray:
    """Out-of-sample (prompt, token) ms of every configuration, shape (n, 2).

    Per machine (GPU kind) and per value of ``group``, the configurations of that group are
    predicted with a stack fitted on the machine's other configurations only.
    """
    out = np.full((len(designs), 2), np.nan)
    folds: dict[tuple, list[int]] = defaultdict(list)
    for i, d in enumerate(designs):
        folds[(d.cfg.gpu, group(d.cfg))].append(i)
    for (gpu, _), test in folds.items():
        held = set(test)
        train = [d for i, d in enumerate(designs) if d.cfg.gpu == gpu and i not in held]
        stack = fit_serving_stack(train)
        out[test] = [designs[i].predict(stack) for i in test]
    return out


def _mape_percent(pred: np.ndarray, actual: np.ndarray) -> float | None:
    if actual.size == 0:
        return None
    return round(float(np.mean(np.abs(pred - actual) / actual) * 100), 2)


def _summary(designs: Sequence[StackDesign], pred: np.ndarray) -> dict:
    actual = np.array([d.measured for d in designs]).reshape(-1, 2)
    pred = pred.reshape(-1, 2)
    return {
        "prompt_time_mape_percent": _mape_percent(pred[:, 0], actual[:, 0]),
        "token_time_mape_percent": _mape_percent(pred[:, 1], actual[:, 1]),
        "configs": len(designs),
    }


def _breakdown(designs: list[StackDesign], preds: dict[str, np.ndarray], key) -> dict:
    """Summaries of each prediction set (name -> (n, 2) array) per value of ``key(cfg)``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(designs):
        groups[key(d.cfg)].append(i)
    return {
        k: {name: _summary([designs[i] for i in idx], p[idx]) for name, p in preds.items()}
        for k, idx in sorted(groups.items())
    }


def _transfer(designs: list[StackDesign]) -> dict:
    """Each machine's stack (fitted on all its rows) applied to every other machine's rows."""
    gpus = sorted({d.cfg.gpu for d in designs})
    by_gpu = {g: [d for d in designs if d.cfg.gpu == g] for g in gpus}
    out = {}
    for source, target in itertools.permutations(gpus, 2):
        stack = fit_serving_stack(by_gpu[source])
        pred = np.array([d.predict(stack) for d in by_gpu[target]])
        out[f"{source}->{target}"] = _summary(by_gpu[target], pred)
    return out


def fidelity_report(data_dir: Path | str | None = None, params: dict | None = None) -> dict:
    """Compare the step-time model with Splitwise's measurements.

    Parameters
    ----------
    data_dir: reference-data folder (default :func:`envs.paths.reference_data_dir`).
    params: step-time parameters (default: the committed ``steptime.json``).

    Returns a dict whose ``prompt_time_mape_percent`` / ``token_time_mape_percent`` are the
    leave-one-TP-out cross-validated MAPEs (percent) over all configurations of both machines;
    ``in_sample`` (committed parameters), ``leave_one_batch_group_out``, ``cross_gpu_transfer``,
    ``by_gpu`` and ``by_gpu_tp`` give the rest, ``excluded`` the configurations left out. Without
    the data both MAPEs are None and ``reason`` says why.
    """
    path = Path(data_dir if data_dir is not None else reference_data_dir()) / SPLITWISE_CSV
    if not path.is_file():
        return {
            "prompt_time_mape_percent": None,
            "token_time_mape_percent": None,
            "reason": f"reference data not found: {path} (set BUDGETPILOT_DATA)",
        }
    params = params or load_params()
    configs = load_splitwise(path)
    designs = [stack_design(cfg, params) for cfg in configs if cfg.fits]
    stacks = {d.cfg.gpu: GpuCalibration.for_gpu(d.cfg.gpu, params).stack for d in designs}
    preds = {
        "cross_validated": held_out_predictions(designs, lambda cfg: cfg.tp),
        "in_sample": np.array([d.predict(stacks[d.cfg.gpu]) for d in designs]),
    }
    return {
        **_summary(designs, preds["cross_validated"]),
        "validation": "leave-one-TP-out: each machine's serving stack fitted on its rows of the "
        "two other TP degrees",
        "in_sample": _summary(designs, preds["in_sample"]),
        "leave_one_batch_group_out": _summary(
            designs, held_out_predictions(designs, lambda cfg: cfg.batch_group)
        ),
        "cross_gpu_transfer": _transfer(designs),
        "by_gpu": _breakdown(designs, preds, lambda cfg: cfg.gpu),
        "by_gpu_tp": _breakdown(designs, preds, lambda cfg: f"{cfg.gpu}/tp{cfg.tp}"),
        "serving_stack": {gpu: asdict(stack) for gpu, stack in sorted(stacks.items())},
        "excluded": [f"{cfg.label}: KV cache does not fit" for cfg in configs if not cfg.fits],
        "reason": None,
    }


if __name__ == "__main__":
    print(json.dumps(fidelity_report(), indent=1))
