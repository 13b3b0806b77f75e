"""Iteration (step) time of one replica: how long one forward pass of a mixed batch takes.

One iteration of a continuous-batching engine runs ``prefill_tokens`` prompt tokens (possibly
chunks of several prompts) and one token for each of ``decode_seqs`` decoding sequences. Its time
is split into

* work independent of the decode contexts (:func:`gpu_fixed_time`): the matrix multiplies and
  element-wise operators of all layers for every batch token, the tensor-parallel all-reduces,
  the LM head, and prefill attention (compute bound, proportional to query-key pairs);
* decode attention, memory bound: every context token's KV is read once per iteration, from HBM
  for GPU-resident KV or from host DRAM by the CPU for KV offloaded NEO-style. The CPU part runs
  concurrently with the GPU work, so the iteration waits for the slower of the two;
* the software cost of the serving stack on the deployment's machine (:class:`ServingStack`):
  a per-iteration overhead that grows with the depth of the synchronisation among the TP ranks,
  plus a prefill-attention share that does not shrink with TP. It is the only part fitted on
  end-to-end measurements (Splitwise), separately for each machine, and cross-validated across
  TP degrees (see :mod:`envs.sim.fidelity`).

All coefficients for one deployment live in one float64 vector (see the index constants), so the
numba kernel can evaluate :func:`iteration_time` without Python objects. The per-GPU constants
behind the vector are fitted by ``scripts/fit_steptime.py`` and committed in
``envs/sim/params/steptime.json``; no reference data is needed at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple, dataclass, fields
from functools import cache
from pathlib import Path

import numpy as np
from numba import njit

from envs.sim.catalog import Deployment, GpuSpec, ModelSpec

PARAMS_PATH = Path(__file__).resolve().parent / "params" / "steptime.json"

# Layout of the coefficient vector (all in seconds).
OVERHEAD_S = 0  # per iteration, serving-stack software (ServingStack.overhead_s)
GPU_ATTN_S_PER_CTX_TOKEN = 1  # decode attention over HBM-resident KV
CPU_ATTN_S_PER_CTX_TOKEN = 2  # decode attention over host-resident KV, on the CPU
SWAP_S_PER_TOKEN = 3  # PCIe copy of one token's KV (either direction)
PREFILL_ATTN_S_PER_PAIR = 4  # prefill attention per (query, key) pair, GPU + stack share
FIXED_S = 5  # per iteration GPU work of any batch size: launches, LM head, all-reduce latency
PER_TOKEN_S = 6  # element-wise operators and all-reduce bytes, per batch token
GEMM_LAUNCH_S = 7  # launch cost of all matrix multiplies of an iteration
GEMM_KNEE_P = 8  # sharpness of the memory-bound -> compute-bound transition
N_GEMMS = 4  # fused QKV, attention output, fused gate/up, down (all layers summed)
GEMM_FLOOR_S = 9  # N_GEMMS entries: memory-bound time (weights read once)
GEMM_SLOPE_S = GEMM_FLOOR_S + N_GEMMS  # N_GEMMS entries: compute-bound time per batch token
N_COEFFS = GEMM_SLOPE_S + N_GEMMS

#: Matrix multiplies of one layer, in the order of the GEMM_* entries (Vidur operator names).
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
#: Element-wise operators of one layer (their widths: :func:`elementwise_width`).
ELEMENTWISE_OPS = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")


@njit(cache=True)
def gpu_fixed_time(coeffs: np.ndarray, batch_tokens: float, prefill_attn_pairs: float) -> float:
    """Seconds of GPU work of one iteration that do not depend on decode contexts.

    Parameters
    ----------
    coeffs: the deployment's coefficient vector (``N_COEFFS``).
    batch_tokens: prefill tokens plus decoding sequences of the iteration.
    prefill_attn_pairs: sum over prefill chunks of ``chunk_len * (ctx_before + (chunk_len+1)/2)``.
    """
    if batch_tokens <= 0.0:
        return 0.0
    p = coeffs[GEMM_KNEE_P]
    gemm = coeffs[GEMM_LAUNCH_S]
    for g in range(N_GEMMS):
        floor = coeffs[GEMM_FLOOR_S + g]
        compute = coeffs[GEMM_SLOPE_S + g] * batch_tokens
        # p-norm of the two rooflines: max() at large p, a soft knee as measured at small p.
        gemm += (floor**p + compute**p) ** (1.0 / p)
    return (
        coeffs[FIXED_S]
        + coeffs[PER_TOKEN_S] * batch_tokens
        + gemm
        + coeffs[PREFILL_ATTN_S_PER_PAIR] * prefill_attn_pairs
    )


@njit(cache=True)
def iteration_time(
    coeffs: np.ndarray,
    prefill_tokens: float,
    prefill_attn_pairs: float,
    decode_seqs: float,
    gpu_ctx_tokens: float,
    cpu_ctx_tokens: float,
) -> float:
    """Seconds of one iteration (see the module docstring for the decomposition).

    Parameters
    ----------
    coeffs: the deployment's coefficient vector (``N_COEFFS``).
    prefill_tokens: prompt tokens computed in this iteration.
    prefill_attn_pairs: query-key pairs of those prompt tokens (see :func:`gpu_fixed_time`).
    decode_seqs: sequences generating one token in this iteration.
    gpu_ctx_tokens: context tokens of the decoding sequences whose KV is in HBM.
    cpu_ctx_tokens: context tokens of the decoding sequences whose KV is in host memory.
    """
    gpu = (
        gpu_fixed_time(coeffs, prefill_tokens + decode_seqs, prefill_attn_pairs)
        + coeffs[GPU_ATTN_S_PER_CTX_TOKEN] * gpu_ctx_tokens
    )
    cpu = coeffs[CPU_ATTN_S_PER_CTX_TOKEN] * cpu_ctx_tokens
    return coeffs[OVERHEAD_S] + max(gpu, cpu)


@cache
def load_params(path: Path = PARAMS_PATH) -> dict:
    """Return the fitted per-GPU constants (``envs/sim/params/steptime.json``)."""
    return json.loads(Path(path).read_text())


def attention_flops_per_pair(model: ModelSpec) -> float:
    """FLOPs of one prefill (query, key) pair over all heads and layers: QK^T and PV, 2 x 2 x
    head_dim each per head (divide by the TP degree for one GPU's share)."""
    return 4.0 * model.heads * model.head_dim * model.layers


@dataclass(frozen=True)
class ServingStack:
    """Software cost of the serving stack on one machine (fitted per GPU kind, end to end).

    The shape follows what Splitwise's Llama-2-70B measurements show beyond the GPU work (see
    :mod:`envs.sim.fidelity`): decode time stops improving with TP because every doubling of the
    ranks adds a fixed cost to each iteration, and long prompts at TP 4/8 grow with the square of
    their length far beyond what FlashAttention-2 on the TP share of the heads predicts.

    Parameters
    ----------
    iteration_s: host work of every iteration of a single-GPU engine (scheduling, input
        preparation, sampling, output processing). Extrapolated: no measurement has tp=1.
    per_tp_doubling_s: added to every iteration per doubling of the TP ranks. Each iteration the
        driver broadcasts its inputs to the ranks and every all-reduce waits for the slowest
        rank's kernel launches; both deepen with log2(tp) (a tree over the ranks; cross-validates
        better than a cost linear in tp - 1).
    prefill_attn_s_per_flop: prefill attention time that does not shrink with TP, in seconds per
        attention FLOP of the whole model (:func:`attention_flops_per_pair`), so it carries over
        to other model shapes.
    """

    iteration_s: float
    per_tp_doubling_s: float
    prefill_attn_s_per_flop: float

    @classmethod
    def from_dict(cls, values: dict) -> ServingStack:
        """Build from a ``steptime.json`` entry (keys starting with ``_`` are fit metadata)."""
        return cls(**{f.name: float(values[f.name]) for f in fields(cls)})

    def as_array(self) -> np.ndarray:
        """The parameters in field order (the unknowns of the linear fit)."""
        return np.array(astuple(self), dtype=np.float64)

    def overhead_s(self, tp: int) -> float:
        """Seconds the stack adds to every iteration of a replica of ``tp`` GPUs."""
        return self.iteration_s + self.per_tp_doubling_s * math.log2(tp)

    def prefill_s_per_pair(self, model: ModelSpec) -> float:
        """Seconds the stack adds per prefill (query, key) pair of ``model``, at any TP."""
        return self.prefill_attn_s_per_flop * attention_flops_per_pair(model)


@dataclass(frozen=True)
class GpuCalibration:
    """Fitted constants of one GPU kind and the machine it sits in (one ``steptime.json`` entry).

    Parameters
    ----------
    gemm: ``launch_s``, ``mem_efficiency``, ``compute_efficiency``, ``knee_p``.
    elementwise: per operator ``{"fixed_s", "s_per_element"}`` (``ELEMENTWISE_OPS`` and ``emb``).
    all_reduce: per GPU count (string key) ``{"fixed_s", "s_per_byte"}``.
    attention: ``prefill_compute_efficiency``, ``decode_hbm_efficiency``,
        ``cpu_memory_efficiency``.
    serving_stack: the :class:`ServingStack` fields (absent until fitted end to end).
    name: the GPU's catalog name (for error messages).
    """

    gemm: dict
    elementwise: dict
    all_reduce: dict
    attention: dict
    serving_stack: dict | None = None
    name: str = "?"

    @classmethod
    def for_gpu(cls, gpu_name: str, params: dict | None = None) -> GpuCalibration:
        """Return the calibration of ``gpu_name``; ValueError lists the calibrated GPUs."""
        gpus = (params or load_params())["gpus"]
        if gpu_name not in gpus:
            raise ValueError(
                f"no step-time calibration for GPU {gpu_name!r}; calibrated: "
                f"{', '.join(sorted(gpus))} (run scripts/fit_steptime.py with its profiles)"
            )
        return cls(**gpus[gpu_name], name=gpu_name)

    @classmethod
    def roofline(cls, gpu: GpuSpec) -> GpuCalibration:
        """Spec-sheet-only constants of an uncalibrated GPU: every operator at its roofline
        (peak FLOPs, HBM and interconnect bandwidth fully used, no launch or software cost), a
        lower bound on real step times, since no measurement tells how far below peak it runs.

        Element-wise operators read and write each 16-bit element once; all-reduces move
        ``2 (tp - 1) / tp`` of their bytes over the interconnect (ring); the matmul knee is
        nearly a max() of the two rooflines (p = 8: at most 9% above it at the knee).
        """
        per_element = 2 * 2 / gpu.hbm_bandwidth
        elementwise = {op: {"fixed_s": 0.0, "s_per_element": per_element} for op in ELEMENTWISE_OPS}
        elementwise["emb"] = {"fixed_s": 0.0, "s_per_element": per_element}
        all_reduce = {}
        if gpu.interconnect_bandwidth:
            all_reduce = {
                str(tp): {
                    "fixed_s": 0.0,
                    "s_per_byte": 2 * (tp - 1) / tp / gpu.interconnect_bandwidth,
                }
                for tp in (2, 4, 8)
            }
        return cls(
            gemm={"launch_s": 0.0, "mem_efficiency": 1.0, "compute_efficiency": 1.0, "knee_p": 8.0},
            elementwise=elementwise,
            all_reduce=all_reduce,
            attention={
                "prefill_compute_efficiency": 1.0,
                "decode_hbm_efficiency": 1.0,
                "cpu_memory_efficiency": 1.0,
            },
            serving_stack={
                "iteration_s": 0.0,
                "per_tp_doubling_s": 0.0,
                "prefill_attn_s_per_flop": 0.0,
            },
            name=gpu.name,
        )

    @property
    def stack(self) -> ServingStack:
        """The machine's serving-stack cost; ValueError if it was never fitted."""
        if self.serving_stack is None:
            raise ValueError(
                f"step-time parameters have no serving_stack for GPU {self.name!r} "
                "(run scripts/fit_steptime.py with the Splitwise data)"
            )
        return ServingStack.from_dict(self.serving_stack)


def elementwise_width(model: ModelSpec, op: str, tp: int) -> float:
    """Elements per token one GPU reads for an element-wise operator (its cost driver)."""
    widths = {
        "emb": model.hidden,
        "input_layernorm": model.hidden,
        "post_attention_layernorm": model.hidden,
        "add": model.hidden,
        "attn_rope": (model.heads + model.kv_heads) * model.head_dim / tp,
        "mlp_act": model.mlp_hidden / tp,
    }
    return widths[op]


def gemm_rooflines(
    cal: GpuCalibration, peak_flops: float, hbm_bandwidth: float, weights: float, tp: int
) -> tuple[float, float]:
    """Return (memory-bound time, compute-bound time per token) of one sharded matmul.

    Parameters
    ----------
    cal: the GPU's calibration; peak_flops, hbm_bandwidth: its spec-sheet figures.
    weights: parameters of the whole (unsharded) matrix; tp: tensor-parallel degree.
    """
    floor = 2.0 * weights / tp / (hbm_bandwidth * cal.gemm["mem_efficiency"])
    slope = 2.0 * weights / tp / (peak_flops * cal.gemm["compute_efficiency"])
    return floor, slope


def all_reduce_fit(cal: GpuCalibration, tp: int) -> tuple[float, float]:
    """(fixed_s, s_per_byte) of one all-reduce among ``tp`` GPUs of a node ((0, 0) at tp=1)."""
    if tp == 1:
        return 0.0, 0.0
    fit = cal.all_reduce.get(str(tp))
    if fit is None:
        raise ValueError(f"no all-reduce calibration for tp={tp}; have {sorted(cal.all_reduce)}")
    return fit["fixed_s"], fit["s_per_byte"]


def _set_linear_ops(c: np.ndarray, cal: GpuCalibration, deployment: Deployment) -> None:
    """Fill the batch-size-dependent entries: matmuls, element-wise ops, all-reduces."""
    model, gpu, tp = deployment.model, deployment.gpu, deployment.tp
    layers = model.layers
    for g, op in enumerate(GEMM_OPS):
        floor, slope = gemm_rooflines(
            cal, gpu.peak_flops, gpu.hbm_bandwidth, model.layer_linear_params[op], tp
        )
        c[GEMM_FLOOR_S + g] = layers * floor
        c[GEMM_SLOPE_S + g] = layers * slope
    c[GEMM_LAUNCH_S] = layers * N_GEMMS * cal.gemm["launch_s"]
    c[GEMM_KNEE_P] = cal.gemm["knee_p"]

    # LM head: logits are computed for sampled tokens only (<= running sequences), which keeps
    # it near its weight-read floor; charged as that floor.
    lm_floor, _ = gemm_rooflines(
        cal, gpu.peak_flops, gpu.hbm_bandwidth, model.vocab * model.hidden, tp
    )
    fixed = cal.gemm["launch_s"] + lm_floor
    per_token = 0.0
    for op in (*ELEMENTWISE_OPS, "emb"):
        count = 1 if op == "emb" else layers
        fit = cal.elementwise[op]
        fixed += count * fit["fixed_s"]
        per_token += count * fit["s_per_element"] * elementwise_width(model, op, tp)
    # Two all-reduces per layer (attention output, MLP output) of the hidden activations.
    ar_fixed, ar_per_byte = all_reduce_fit(cal, tp)
    fixed += 2 * layers * ar_fixed
    per_token += 2 * layers * ar_per_byte * model.hidden * model.dtype_bytes
    c[FIXED_S] = fixed
    c[PER_TOKEN_S] = per_token


def _set_attention_and_memory(c: np.ndarray, cal: GpuCalibration, deployment: Deployment) -> None:
    """Fill attention (prefill compute, decode HBM / host DRAM reads) and PCIe swap entries."""
    model, gpu, tp = deployment.model, deployment.gpu, deployment.tp
    att = cal.attention
    c[PREFILL_ATTN_S_PER_PAIR] = (
        attention_flops_per_pair(model) / tp / (gpu.peak_flops * att["prefill_compute_efficiency"])
    )
    kv_gpu = deployment.kv_bytes_per_token_per_gpu
    c[GPU_ATTN_S_PER_CTX_TOKEN] = kv_gpu / (gpu.hbm_bandwidth * att["decode_hbm_efficiency"])
    c[CPU_ATTN_S_PER_CTX_TOKEN] = kv_gpu / (
        gpu.host_memory_bandwidth * att["cpu_memory_efficiency"]
    )
    c[SWAP_S_PER_TOKEN] = kv_gpu / gpu.pcie_bandwidth


def deployment_coeffs(
    deployment: Deployment, params: dict | None = None, stack: ServingStack | None = None
) -> np.ndarray:
    """Build the coefficient vector of ``deployment`` from the fitted parameters.

    Parameters
    ----------
    deployment: the replica's model, GPU and TP degree (an uncalibrated GPU gets
        :meth:`GpuCalibration.roofline`, a GPU with a calibration file its constants).
    params: the parameter file's content (default: the committed ``steptime.json``).
    stack: serving-stack cost to use instead of the GPU's fitted one (fitting and
        cross-validation evaluate candidate stacks on the same GPU physics).
    """
    gpu = deployment.gpu
    if gpu.calibration_file is not None:
        # Imported here: the calibration file's schema builds GpuCalibration objects.
        from envs.sim.calibration import gpu_calibration

        cal = gpu_calibration(gpu)
    elif gpu.calibrated:
        cal = GpuCalibration.for_gpu(gpu.name, params or load_params())
    else:
        cal = GpuCalibration.roofline(gpu)
    stack = stack if stack is not None else cal.stack
    c = np.zeros(N_COEFFS)
    _set_linear_ops(c, cal, deployment)
    _set_attention_and_memory(c, cal, deployment)
    c[OVERHEAD_S] = stack.overhead_s(deployment.tp)
    c[PREFILL_ATTN_S_PER_PAIR] += stack.prefill_s_per_pair(deployment.model)
    return c


class StepTimeModel:
    """Iteration and swap times of one deployment.

    Parameters
    ----------
    coeffs: the coefficient vector (``N_COEFFS`` float64), usually from :meth:`for_deployment`.
    """

    def __init__(self, coeffs: np.ndarray) -> None:
        coeffs = np.ascontiguousarray(coeffs, dtype=np.float64)
        if coeffs.shape != (N_COEFFS,):
            raise ValueError(f"coeffs must have shape ({N_COEFFS},), got {coeffs.shape}")
        self.coeffs = coeffs

    @classmethod
    def for_deployment(cls, deployment: Deployment) -> StepTimeModel:
        """Return the calibrated model of ``deployment`` (from the committed parameters)."""
        return cls(deployment_coeffs(deployment))

    def iteration_time(
        self,
        prefill_tokens: float,
        prefill_attn_pairs: float,
        decode_seqs: float,
        gpu_ctx_tokens: float,
        cpu_ctx_tokens: float,
    ) -> float:
        """Seconds of one iteration (see :func:`iteration_time`)."""
        return iteration_time(
            self.coeffs,
            float(prefill_tokens),
            float(prefill_attn_pairs),
            float(decode_seqs),
            float(gpu_ctx_tokens),
            float(cpu_ctx_tokens),
        )

    def swap_time(self, tokens: int) -> float:
        """Seconds to copy ``tokens`` tokens' KV between HBM and host memory over PCIe."""
        return float(self.coeffs[SWAP_S_PER_TOKEN]) * tokens


def prefill_attn_pairs(chunk_len: float, ctx_before: float = 0.0) -> float:
    """Query-key pairs of a prefill chunk of ``chunk_len`` tokens after ``ctx_before`` tokens."""
    return chunk_len * (ctx_before + (chunk_len + 1) / 2)
