"""A user's own GPU calibration: the file ``scripts/fit_steptime.py --profiles`` writes.

A GPU outside the catalog is given in a fleet file by its spec sheet
(:class:`envs.sim.config.GpuDatasheet`); with ``calibration: my-gpu.json`` it runs on constants
fitted on the user's own Vidur-format profiles instead of the optimistic roofline. The file
holds what the profiles measure in absolute terms (matrix multiplies as an effective TFLOP/s and
HBM TB/s with a launch cost and a knee; element-wise operators and all-reduces per element and
per byte), and what they cannot measure (attention efficiencies and the serving stack) borrowed
from a calibrated GPU, with the rule that chose it in ``provenance``. The matrix-multiply
efficiencies the step-time model needs are the fitted rates over the spec sheet's, so a
calibration that is faster than the spec sheet it is paired with is refused: it belongs to
another GPU, or the spec sheet is wrong.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from envs.sim.catalog import GpuSpec, read_json_file
from envs.sim.config import ConfigError, _Strict, validated
from envs.sim.steptime import ELEMENTWISE_OPS, GpuCalibration

#: Version of the calibration file's layout.
CALIBRATION_FORMAT = 1


class GemmFit(_Strict):
    """Matrix multiplies: ``launch + ((W / hbm)^p + (F n / flops)^p)^(1/p)`` per operator."""

    launch_s: float = Field(ge=0.0, allow_inf_nan=False)
    knee_p: float = Field(ge=1.0, allow_inf_nan=False)
    effective_tflops: float = Field(gt=0.0, allow_inf_nan=False)
    effective_hbm_tb_s: float = Field(gt=0.0, allow_inf_nan=False)


class ElementwiseFit(_Strict):
    """``fixed_s + s_per_element * elements`` of one element-wise operator."""

    fixed_s: float = Field(ge=0.0, allow_inf_nan=False)
    s_per_element: float = Field(ge=0.0, allow_inf_nan=False)


class AllReduceFit(_Strict):
    """``fixed_s + s_per_byte * bytes`` of one all-reduce among a node's GPUs."""

    fixed_s: float = Field(ge=0.0, allow_inf_nan=False)
    s_per_byte: float = Field(ge=0.0, allow_inf_nan=False)


class AttentionFit(_Strict):
    """Attention efficiencies relative to the spec sheet (see ``steptime.GpuCalibration``)."""

    prefill_compute_efficiency: float = Field(gt=0.0, le=1.0)
    decode_hbm_efficiency: float = Field(gt=0.0, le=1.0)
    cpu_memory_efficiency: float = Field(gt=0.0, le=1.0)


class StackFit(_Strict):
    """The serving stack's software cost (see ``steptime.ServingStack``)."""

    iteration_s: float = Field(ge=0.0, allow_inf_nan=False)
    per_tp_doubling_s: float = Field(ge=0.0, allow_inf_nan=False)
    prefill_attn_s_per_flop: float = Field(ge=0.0, allow_inf_nan=False)


class CalibrationFile(_Strict):
    """The content of a GPU calibration file (``scripts/fit_steptime.py --profiles``)."""

    format: int
    gpu: str = Field(min_length=1, description="the GPU's name, as its spec sheet gives it")
    gemm: GemmFit
    elementwise: dict[str, ElementwiseFit]
    all_reduce: dict[str, AllReduceFit] = Field(description="by GPU count; empty: TP 1 only")
    attention: AttentionFit
    serving_stack: StackFit
    provenance: dict = Field(default_factory=dict, description="what was fitted on what, how")

    @field_validator("format")
    @classmethod
    def _known_format(cls, version: int) -> int:
        if version != CALIBRATION_FORMAT:
            raise ValueError(f"format {version} is not {CALIBRATION_FORMAT} (refit the profiles)")
        return version

    @field_validator("elementwise")
    @classmethod
    def _every_operator(cls, ops: dict[str, ElementwiseFit]) -> dict[str, ElementwiseFit]:
        expected = {*ELEMENTWISE_OPS, "emb"}
        if set(ops) != expected:
            raise ValueError(f"needs the operators {sorted(expected)}, got {sorted(ops)}")
        return ops

    @field_validator("all_reduce")
    @classmethod
    def _gpu_counts(cls, fits: dict[str, AllReduceFit]) -> dict[str, AllReduceFit]:
        for workers in fits:
            if not workers.isdigit() or int(workers) < 2:
                raise ValueError(f"key {workers!r} is not a GPU count of 2 or more")
        return fits

    @property
    def tp_degrees(self) -> list[int]:
        """Tensor-parallel degrees the all-reduce fits cover (1 always)."""
        return [1, *sorted(int(w) for w in self.all_reduce)]

    def check_tp(self, tp: int) -> None:
        """ValueError saying why ``tp`` is not calibrated, if it is not."""
        if tp in self.tp_degrees:
            return
        if not self.all_reduce:
            why = "its profiles had no all-reduce measurements, so only tp=1 is calibrated"
        else:
            why = f"its all-reduces were measured among {self.tp_degrees[1:]} GPUs only"
        raise ValueError(f"tp={tp} is not calibrated: {why}")

    def for_gpu(self, gpu: GpuSpec) -> GpuCalibration:
        """The step-time constants of ``gpu`` (its spec sheet) on this calibration.

        Raises
        ------
        ValueError
            The calibration is for another GPU name, or measured faster than ``gpu``'s spec
            sheet allows (naming the figures).
        """
        if self.gpu.lower() != gpu.name.lower():
            raise ValueError(f"gpu: the calibration is for {self.gpu!r}, not {gpu.name!r}")
        mem = self.gemm.effective_hbm_tb_s * 1e12 / gpu.hbm_bandwidth
        compute = self.gemm.effective_tflops * 1e12 / gpu.peak_flops
        for field, efficiency, measured, sheet in (
            ("effective_hbm_tb_s", mem, self.gemm.effective_hbm_tb_s, "hbm_tb_s"),
            ("effective_tflops", compute, self.gemm.effective_tflops, "bf16_tflops"),
        ):
            if efficiency > 1.0:
                raise ValueError(
                    f"gemm.{field}: the profiles measured {measured:.4g}, more than the spec "
                    f"sheet's {sheet} ({measured / efficiency:.4g}): a calibration of another "
                    "GPU, or a wrong spec sheet"
                )
        dump = self.model_dump()
        return GpuCalibration(
            gemm={
                "launch_s": self.gemm.launch_s,
                "knee_p": self.gemm.knee_p,
                "mem_efficiency": mem,
                "compute_efficiency": compute,
            },
            elementwise=dump["elementwise"],
            all_reduce=dump["all_reduce"],
            attention=dump["attention"],
            serving_stack=dump["serving_stack"],
            name=gpu.name,
        )


def load_calibration_file(path: str | Path) -> CalibrationFile:
    """Read and validate a calibration file; ConfigError names the file and the field."""
    try:
        data = read_json_file(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return validated(CalibrationFile, data, str(path))


def gpu_calibration(gpu: GpuSpec) -> GpuCalibration:
    """The constants of a GPU calibrated by a calibration file (``gpu.calibration_file``)."""
    if gpu.calibration_file is None:
        raise ValueError(f"GPU {gpu.name!r} has no calibration file")
    return load_calibration_file(gpu.calibration_file).for_gpu(gpu)
