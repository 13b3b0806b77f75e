"""Configuration of a simulated fleet: pools of replicas, router, admission, tenants, failures and
workload, as pydantic models loadable from YAML.

A minimal fleet file::

    pools:
      - {name: strong, model: llama-2-7b, gpu: a100-80gb, replicas: 8}
      - {name: cheap, model: llama-3.2-1b, gpu: a100-80gb, replicas: 2, tier: 1, capability: 0.6}
    workload: {kind: poisson, rate: 40}
    tenants:
      - {name: interactive, share: 3, priority: 2, patience_s: 30}
      - {name: batch, share: 1, priority: 0, weight: 0.25}

A pool that may scale gives its cap and, optionally, how its replicas come and go (see
:class:`AutoscalingConfig`; :meth:`envs.sim.Simulator.set_desired_replicas` scales it)::

    pools:
      - name: strong
        replicas: 4
        max_replicas: 12
        autoscaling: {drain_timeout_s: 300, spot_rate_per_hour: 0.05, spot_notice_s: 30}

A model is a catalog name or the path of a Hugging Face ``config.json`` (relative to the fleet
file); a GPU is a catalog name or its spec sheet (:class:`GpuDatasheet`, run uncalibrated with a
warning, or on the calibration file fitted on its own profiles). The traffic is the
``workload``: a named shape (``kind``) at a ``rate`` in requests/s or at a ``load`` relative to
the fleet's measured capacity (:mod:`envs.sim.capacity`), optionally following a measured
rate curve (``rate_curve``; a tenant's part of it may follow its own, see :class:`TenantConfig`),
or a trace file with its column mapping and time scale. The fleet file also names the SLO spec
(``slo_spec``), the control interval and the episode length of the environments built from it.
Ready-made fleet files are in ``examples/fleets/``.

Unknown keys are errors; :meth:`SimConfig.from_yaml` names the file, the line and the field of
every problem.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from envs.sim.catalog import (
    Deployment,
    GpuSpec,
    ModelSpec,
    get_gpu,
    get_model,
    is_model_path,
    resolve_model,
)
from envs.sim.knobs import Knobs
from envs.sim.workload import (
    LENGTH_MODELS,
    TRACE_COLUMNS,
    WORKLOAD_NAMES,
    LengthModel,
    Marginal,
    RateCurve,
    TraceReplay,
    Workload,
    get_length_model,
    make_workload,
)
from slo.files import TextFileError, read_text

GiB = 1024**3

#: Poisson rate (req/s) of the reference workload: ~80% of the reference fleet's capacity as
#: measured by :func:`envs.sim.simulator.measure_capacity` (tests/test_sim_capacity.py checks it).
REFERENCE_RATE = 30.0
#: Replicas of the reference fleet.
REFERENCE_REPLICAS = 8


class ConfigError(ValueError):
    """A configuration is invalid; the message names the file and the field."""


class UncalibratedGpuWarning(UserWarning):
    """A GPU known by its spec sheet only: its step times are a roofline lower bound."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Model = TypeVar("_Model", bound=BaseModel)


def _resolve_path(path: str, info: ValidationInfo) -> str:
    """``path`` made absolute against the fleet file's folder (``base_dir`` of the validation
    context; the working directory without one); ValueError if no such file exists."""
    base = Path((info.context or {}).get("base_dir", "."))
    resolved = (base / Path(path).expanduser()).resolve()
    if not resolved.is_file():
        raise ValueError(f"no such file: {resolved}")
    return str(resolved)


class GpuDatasheet(_Strict):
    """A GPU known by its spec sheet only (not in :data:`envs.sim.catalog.GPUS`).

    It runs on the step-time model's roofline part alone (:meth:`envs.sim.steptime.
    GpuCalibration.roofline`), which is optimistic, and every fleet using it warns that it is
    uncalibrated, unless ``calibration`` names a calibration file (its path relative to the
    fleet file) that ``scripts/fit_steptime.py --profiles`` fitted on profiles of this GPU
    (:mod:`envs.sim.calibration`). Host figures are per GPU (the node's DRAM and its bandwidth
    divided by its GPUs).
    """

    name: str = Field(min_length=1)
    memory_gib: float = Field(gt=0.0, description="HBM capacity")
    bf16_tflops: float = Field(gt=0.0, description="dense bf16 tensor-core peak")
    hbm_tb_s: float = Field(gt=0.0, description="HBM bandwidth")
    host_memory_gib: float = Field(ge=0.0, description="host DRAM for this GPU")
    pcie_gb_s: float = Field(gt=0.0, description="effective host<->GPU copy bandwidth")
    host_memory_gb_s: float = Field(gt=0.0, description="host DRAM bandwidth for this GPU")
    cost_per_hour: float = Field(ge=0.0, description="price of one GPU, USD/h")
    interconnect_gb_s: float | None = Field(
        None, gt=0.0, description="GPU-to-GPU bandwidth in a node (needed for tp > 1)"
    )
    calibration: str | None = Field(None, description="calibration file fitted on its profiles")

    @field_validator("calibration")
    @classmethod
    def _calibration_exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        return None if path is None else _resolve_path(path, info)

    def check_calibration(self, tp: int) -> None:
        """ValueError naming the calibration file and what in it does not fit this spec sheet
        or ``tp`` (another GPU's name, faster than the spec sheet, an uncalibrated TP)."""
        # Imported here: the calibration file's schema is built on this module's helpers.
        from envs.sim.calibration import load_calibration_file

        try:
            calibration = load_calibration_file(self.calibration)
        except ConfigError as exc:  # names the file and its fields
            raise ValueError(f"gpu.calibration: {exc}") from None
        try:
            calibration.for_gpu(self.spec())
            calibration.check_tp(tp)
        except ValueError as exc:
            raise ValueError(f"gpu.calibration: {self.calibration}: {exc}") from None

    def spec(self) -> GpuSpec:
        """The catalog form of this GPU (calibrated if it has a calibration file)."""
        return GpuSpec(
            name=self.name.lower(),
            memory_bytes=int(self.memory_gib * GiB),
            peak_flops=self.bf16_tflops * 1e12,
            hbm_bandwidth=self.hbm_tb_s * 1e12,
            host_memory_bytes=int(self.host_memory_gib * GiB),
            pcie_bandwidth=self.pcie_gb_s * 1e9,
            host_memory_bandwidth=self.host_memory_gb_s * 1e9,
            cost_per_hour=self.cost_per_hour,
            calibrated=self.calibration is not None,
            interconnect_bandwidth=None
            if self.interconnect_gb_s is None
            else self.interconnect_gb_s * 1e9,
            calibration_file=self.calibration,
        )


class AutoscalingConfig(_Strict):
    """How the replicas of a pool start, stop and get interrupted.

    A replica that is scaled up is *provisioning* for ``provision_base_s`` (node and container
    start, engine initialisation, CUDA graph capture) plus ``provision_s_per_gib`` for every GiB
    of the model's weights it loads (at ~250 MiB/s from a model store), times a log-normal
    jitter of log-standard-deviation ``provision_jitter`` (the nominal delay is the median).
    The defaults give about 3 minutes for Llama-2-7B or Llama-3-8B, 11 for Llama-2-70B.

    A replica that is scaled down is *draining*: it takes no new requests and stops when its
    last one ends, or at ``drain_timeout_s``, when the requests still on it are aborted.

    Spot-like interruptions reach every provisioned replica at ``spot_rate_per_hour`` (Poisson,
    per replica-hour; 0 = none). An interrupted replica drains for ``spot_notice_s``, then is
    taken away: the requests still on it fail. The pool starts a replacement at once when its
    cap allows, else as soon as a replica slot frees up.
    """

    provision_base_s: float = Field(
        120.0, ge=0.0, allow_inf_nan=False, description="provisioning delay besides weights"
    )
    provision_s_per_gib: float = Field(
        4.0, ge=0.0, allow_inf_nan=False, description="provisioning seconds per GiB of weights"
    )
    provision_jitter: float = Field(
        0.2, ge=0.0, le=2.0, description="log-standard-deviation of the provisioning delay"
    )
    drain_timeout_s: float = Field(
        120.0, ge=0.0, description="requests still running this long after a drain are aborted"
    )
    spot_rate_per_hour: float = Field(
        0.0, ge=0.0, allow_inf_nan=False, description="interruptions per replica-hour"
    )
    spot_notice_s: float = Field(
        120.0, ge=0.0, allow_inf_nan=False, description="warning before an interruption"
    )

    def nominal_provisioning_s(self, weight_bytes: float) -> float:
        """Median provisioning delay of a replica that loads ``weight_bytes`` of weights."""
        return self.provision_base_s + self.provision_s_per_gib * weight_bytes / GiB


class PoolConfig(_Strict):
    """Identical replicas of one deployment (one model on ``tp`` GPUs), serving one tier.

    ``replicas`` serve from the start; :meth:`envs.sim.Simulator.set_desired_replicas` scales
    the pool between ``min_replicas`` (default 0) and ``max_replicas`` (default: ``replicas``, a
    fixed pool), with the delays and interruptions of ``autoscaling``.

    ``max_num_seqs``, ``max_num_batched_tokens``, ``chunked_prefill``, ``block_tokens``,
    ``gpu_memory_utilization``, ``swap_space_gib`` and ``preemption_mode`` are vLLM's engine
    settings of the same names.

    ``model`` is a catalog name or the path of a Hugging Face ``config.json`` (made absolute);
    ``gpu`` a catalog name or a :class:`GpuDatasheet`.
    """

    name: str = "strong"
    model: str = "llama-2-7b"
    gpu: str | GpuDatasheet = "a100-80gb"
    tp: int = Field(1, ge=1)
    replicas: int = Field(REFERENCE_REPLICAS, ge=0, description="replicas serving at the start")
    min_replicas: int = Field(0, ge=0, description="fewest replicas the pool scales down to")
    max_replicas: int | None = Field(
        None, ge=0, description="most replicas provisioned at once (the GPUs the pool may use)"
    )
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    tier: int = Field(0, ge=0, description="0 is the strongest model tier")
    capability: float = Field(
        1.0, ge=0.0, le=1.0, description="answer quality relative to the strongest tier"
    )
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    block_tokens: int = Field(16, ge=1, le=256)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    chunked_prefill: bool = True
    max_model_len: int | None = Field(
        None, ge=2, description="longest prompt + output; default: the KV capacity"
    )
    preemption_mode: Literal["recompute", "swap"] = "recompute"
    swap_space_gib: float = Field(4.0, ge=0.0, description="host swap space per replica")
    offload_host_gib: float | None = Field(
        None, ge=0.0, description="host memory for offloaded KV; default: the GPUs' host share"
    )
    mtbf_s: float = Field(math.inf, gt=0.0, description="mean time between failures")
    mttr_s: float = Field(600.0, gt=0.0, description="mean time to repair")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if is_model_path(name):
            path = _resolve_path(name, info)
            resolve_model(path)
            return path
        get_model(name)
        return name.lower()

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str | GpuDatasheet) -> str | GpuDatasheet:
        if isinstance(gpu, GpuDatasheet):
            return gpu
        get_gpu(gpu)
        return gpu.lower()

    @field_validator("min_replicas")
    @classmethod
    def _floor_below_start(cls, floor: int, info: ValidationInfo) -> int:
        replicas = info.data.get("replicas")  # absent when replicas itself is invalid
        if replicas is not None and floor > replicas:
            raise ValueError(f"must be at most replicas ({replicas}), got {floor}")
        return floor

    @field_validator("max_replicas")
    @classmethod
    def _cap_above_start(cls, cap: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replicas")  # absent when replicas itself is invalid
        if cap is not None and replicas is not None and cap < replicas:
            raise ValueError(f"must be at least replicas ({replicas}), got {cap}")
        return cap

    @model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        self.deployment()  # raises if the model does not fit the GPUs
        gpu = self.gpu_spec()
        if isinstance(self.gpu, GpuDatasheet) and self.gpu.calibration is not None:
            self.gpu.check_calibration(self.tp)
        if not gpu.calibrated:
            if self.tp > 1 and gpu.interconnect_bandwidth is None:
                raise ValueError(f"gpu.interconnect_gb_s: needed for tp={self.tp} (all-reduces)")
            warnings.warn(
                f"GPU {gpu.name!r} is uncalibrated: its step times are a spec-sheet roofline "
                "(a lower bound); calibrate it with scripts/fit_steptime.py",
                UncalibratedGpuWarning,
                stacklevel=2,
            )
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}): every running sequence decodes each step"
            )
        return self

    @property
    def replica_slots(self) -> int:
        """Most replicas the pool can have provisioned at once."""
        return self.replicas if self.max_replicas is None else self.max_replicas

    def nominal_provisioning_s(self) -> float:
        """Median seconds from scale-up to serving for a replica of this pool."""
        return self.autoscaling.nominal_provisioning_s(self.model_spec().weight_bytes)

    def model_spec(self) -> ModelSpec:
        """The model the pool serves."""
        return resolve_model(self.model)

    def gpu_spec(self) -> GpuSpec:
        """The GPU kind of the pool's replicas."""
        return self.gpu.spec() if isinstance(self.gpu, GpuDatasheet) else get_gpu(self.gpu)

    def deployment(self) -> Deployment:
        """The catalog deployment of one replica."""
        return Deployment(
            self.model_spec(),
            self.gpu_spec(),
            tp=self.tp,
            gpu_memory_utilization=self.gpu_memory_utilization,
            block_tokens=self.block_tokens,
        )


class RouterConfig(_Strict):
    """How requests reach replicas.

    ``policy`` picks a replica inside a tier. ``difficulty_noise`` is the standard deviation of
    the router's error when it estimates a request's difficulty (RouteLLM's router is a model,
    not an oracle). ``cheap_tier`` receives the share of traffic set by the
    ``cheap_tier_share`` knob (default: the highest tier). With ``fallback``, a request whose
    tier has no healthy replica goes to its intended tier, then to the other tiers; without,
    it is rejected (NO_REPLICA).
    """

    policy: Literal["round-robin", "least-outstanding", "kv-aware"] = "least-outstanding"
    difficulty_noise: float = Field(0.1, ge=0.0)
    cheap_tier: int | None = Field(None, ge=0)
    fallback: bool = True
    calibration_window: int = Field(
        4096, ge=16, description="recent requests the downgrade threshold is calibrated on"
    )


class AdmissionConfig(_Strict):
    """Gateway admission settings that are not knobs (the limits themselves are knobs)."""

    burst_s: float = Field(
        1.0, gt=0.0, description="token-bucket depth in seconds of the admission rate"
    )


class ScheduledFailure(_Strict):
    """A replica failure at a given time (in addition to random MTBF failures). ``replica``
    numbers the pool's replica slots (``0 .. max_replicas - 1``); a failure of a stopped slot
    has no effect."""

    pool: str
    replica: int = Field(ge=0)
    at_s: float = Field(ge=0.0)
    duration_s: float = Field(gt=0.0)


class TraceColumns(_Strict):
    """Which columns of a trace CSV hold what (default: the Azure LLM inference format)."""

    timestamp: str = TRACE_COLUMNS[0]
    prompt_tokens: str = TRACE_COLUMNS[1]
    output_tokens: str = TRACE_COLUMNS[2]

    def names(self) -> tuple[str, str, str]:
        """The column names in :data:`envs.sim.workload.TRACE_COLUMNS` order."""
        return (self.timestamp, self.prompt_tokens, self.output_tokens)


class LengthDistribution(_Strict):
    """A token-length distribution of a known mean (:class:`envs.sim.workload.Marginal`):
    lognormal of spread ``sigma``, shaped by ``cdf`` when given (tokens -> share of lengths at
    or below, e.g. a length histogram's buckets)."""

    mean: float = Field(ge=1.0, allow_inf_nan=False, description="mean tokens")
    sigma: float = Field(ge=0.0, le=4.0, description="standard deviation of log(tokens)")
    cdf: dict[float, float] | None = Field(
        None, description="share of lengths at or below each token count"
    )

    @field_validator("cdf")
    @classmethod
    def _a_cdf(cls, cdf: dict[float, float] | None) -> dict[float, float] | None:
        if cdf is None:
            return None
        shares = [cdf[t] for t in sorted(cdf)]
        if min(cdf, default=1.0) <= 0 or not all(0.0 <= p <= 1.0 for p in shares):
            raise ValueError("a cdf maps token counts > 0 to shares in [0, 1]")
        if any(b < a for a, b in zip(shares, shares[1:], strict=False)):
            raise ValueError("a cdf's shares must not decrease as the token count grows")
        return cdf

    def marginal(self) -> Marginal:
        """The simulator's distribution of these lengths."""
        return Marginal(self.mean, self.sigma, self.cdf)


class LengthDistributions(_Strict):
    """Prompt and output lengths (:class:`LengthDistribution`) joined by the correlation of
    their normal scores (what ``budgetpilot fit`` writes from an engine's length histograms)."""

    prompt: LengthDistribution
    output: LengthDistribution
    correlation: float = Field(0.0, ge=-1.0, le=1.0)

    def length_model(self) -> LengthModel:
        """The simulator's length model of these distributions."""
        return LengthModel.from_marginals(
            self.prompt.marginal(), self.output.marginal(), self.correlation
        )


class RateCurveConfig(_Strict):
    """A measured arrival-rate curve (:class:`envs.sim.workload.RateCurve`): ``rates`` in
    blocks of ``step_s`` seconds, the first starting at simulated time ``start_s``, repeating
    after the last block. Only its shape counts: the workload's rate is its mean unless
    ``rate`` or ``load`` rescale it."""

    step_s: float = Field(gt=0.0, allow_inf_nan=False, description="seconds per block")
    rates: list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]] = Field(
        min_length=2, description="requests/s in each block"
    )
    start_s: float = Field(
        0.0, allow_inf_nan=False, description="simulated time where the first block starts"
    )

    @field_validator("rates")
    @classmethod
    def _some_traffic(cls, rates: list[float]) -> list[float]:
        if sum(rates) <= 0:
            raise ValueError("a rate curve needs some traffic: every rate is 0")
        return rates

    @property
    def mean(self) -> float:
        """Requests/s over the curve's span (its blocks are equally long)."""
        return sum(self.rates) / len(self.rates)

    def modulation(self) -> RateCurve:
        """The simulator's rate modulation of this curve."""
        return RateCurve(self.step_s, self.rates, self.start_s)

    def starting_at(self, start_s: float) -> RateCurveConfig:
        """This curve with its first block ``start_s`` simulated seconds later."""
        return self.model_copy(update={"start_s": self.start_s + start_s})


class TenantConfig(_Strict):
    """One tenant: its traffic share, priority (for shedding), queue weight and patience.

    A tenant whose traffic has its own shape over time (a measured one: ``budgetpilot fit``
    writes it when a tenant's rate varies) gives it as ``rate_curve`` (:class:`RateCurveConfig`:
    its own blocks, from the same simulated time 0 as the workload's curve). The workload's rate
    (and its curve) stays the whole traffic's; the curve moves the tenant's part of it: at time
    ``t`` its share is ``share x m(t)`` over the sum of every tenant's, ``m`` the curve's rate
    over its mean (1 without a curve). So ``share`` is its part of the mean traffic, and a
    tenant's rate is exactly its curve's when the workload's curve is the tenants' total (as in
    a fitted fleet file). Synthetic workloads only: a replay follows its trace.
    """

    name: str
    share: float = Field(1.0, gt=0.0, description="relative share of the traffic")
    priority: int = Field(1, ge=0, description="higher is more important; shed below a level")
    weight: float = Field(1.0, gt=0.0, description="share of each waiting queue (fair queueing)")
    patience_s: float = Field(math.inf, gt=0.0, description="client timeout for the first token")
    tier: int = Field(0, ge=0, description="the tier its requests are meant for")
    rate_curve: RateCurveConfig | None = Field(
        None, description="its traffic's own shape over time (its share of the traffic moves)"
    )


#: Workload kinds that replay a trace, its own rate curve included.
REPLAY_KINDS = ("trace", "azure-conv", "azure-code")


class WorkloadConfig(_Strict):
    """The request source, the fleet's traffic (see :func:`envs.sim.workload.make_workload`).

    The rate is ``rate`` in requests/s or ``load``, a multiple of the fleet's measured capacity
    (:func:`envs.sim.capacity.with_load_resolved` turns it into a rate; the simulator does so
    itself), not both. Without either: :data:`REFERENCE_RATE` for synthetic workloads, the
    trace's own rate for replays. ``options`` passes the remaining make_workload parameters
    (``cv``, ``period_s``, ``flash_multiplier``...).

    A ``trace`` (kind ``trace``; its path relative to the fleet file) is a CSV whose
    ``columns`` name the timestamp (seconds or date-times), prompt-token and output-token
    columns, and whose times are multiplied by ``time_scale`` (0.001 for milliseconds) before
    any rescaling to ``rate`` or ``load``.

    A ``rate_curve`` (:class:`RateCurveConfig`, what ``budgetpilot fit`` writes for a rate that
    varies) makes a synthetic workload's rate follow a measured curve; its mean is the rate
    when neither ``rate`` nor ``load`` is given, and they rescale its shape when they are. A
    replay follows its trace and takes no curve.
    """

    kind: str = "poisson"
    rate: float | None = Field(None, gt=0.0)
    load: float | None = Field(None, gt=0.0, description="multiple of the measured capacity")
    lengths: Annotated[
        Annotated[str, Tag("name")] | Annotated[LengthDistributions, Tag("distributions")],
        Discriminator(lambda v: "name" if isinstance(v, str) else "distributions"),
    ] = "azure-conv"
    trace: str | None = None
    rate_curve: RateCurveConfig | None = None
    columns: TraceColumns = TraceColumns()
    time_scale: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    difficulty: tuple[float, float] = (2.0, 2.0)
    options: dict[str, float] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in WORKLOAD_NAMES:
            raise ValueError(f"unknown workload {kind!r}; known: {', '.join(WORKLOAD_NAMES)}")
        return kind

    @field_validator("lengths")
    @classmethod
    def _known_lengths(cls, name: str | LengthDistributions) -> str | LengthDistributions:
        if isinstance(name, str) and name not in LENGTH_MODELS:
            raise ValueError(f"unknown length model {name!r}; known: {', '.join(LENGTH_MODELS)}")
        return name

    @field_validator("trace")
    @classmethod
    def _trace_exists(cls, trace: str | None, info: ValidationInfo) -> str | None:
        return None if trace is None else _resolve_path(trace, info)

    @field_validator("rate_curve")
    @classmethod
    def _synthetic_only(
        cls, curve: RateCurveConfig | None, info: ValidationInfo
    ) -> RateCurveConfig | None:
        # kind and trace are declared first: here when they are valid.
        kind = info.data.get("kind")
        if curve is not None and (kind in REPLAY_KINDS or info.data.get("trace")):
            raise ValueError(
                f"a replay (kind {kind!r}) follows its trace's own rate: no rate_curve with it"
            )
        return curve

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, float]) -> dict[str, float]:
        fixed = {"name", "rate", "lengths", "trace", "tenants", "tenant_shares", "difficulty"}
        fixed |= {"trace_columns", "trace_time_scale", "trace_start", "rate_curve"}
        fixed |= {"tenant_curves"}
        known = set(inspect.signature(make_workload).parameters) - fixed
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return options

    @model_validator(mode="after")
    def _trace_given(self) -> WorkloadConfig:
        if self.kind == "trace" and not self.trace:
            raise ValueError("workload kind 'trace' needs trace: PATH")
        if self.trace and self.kind != "trace":
            raise ValueError(f"trace: a trace file needs kind 'trace', not {self.kind!r}")
        if self.rate is not None and self.load is not None:
            raise ValueError("give rate (requests/s) or load (of the capacity), not both")
        if self.trace:
            TraceReplay(self.trace, columns=self.columns.names())  # names file, row and column
        return self

    @property
    def length_model(self) -> LengthModel:
        """The prompt and output lengths of the synthetic workloads."""
        if isinstance(self.lengths, str):
            return get_length_model(self.lengths)
        return self.lengths.length_model()

    def curve_starting_at(self, start_s: float) -> WorkloadConfig:
        """This workload with its rate curve (if any) starting ``start_s`` simulated seconds
        later: after a warm-up of ``start_s``, the curve's first block starts with what follows
        (the warm-up sees the curve's last blocks, as the curve repeats)."""
        if self.rate_curve is None:
            return self
        return self.model_copy(update={"rate_curve": self.rate_curve.starting_at(start_s)})

    def build(
        self, tenant_shares: list[float], tenant_curves: Sequence[RateCurveConfig | None] = ()
    ) -> Workload:
        """Instantiate the workload for tenants with these traffic shares and, when some have
        one, rate curves (see :class:`TenantConfig`).

        A ``load`` must have been resolved into a ``rate`` first
        (:func:`envs.sim.capacity.with_load_resolved`).
        """
        if self.load is not None:
            raise ValueError(
                f"workload.load={self.load} is relative to the fleet's capacity: resolve it "
                "with envs.sim.capacity.with_load_resolved(config)"
            )
        replay = self.kind in REPLAY_KINDS
        rate = self.rate
        if rate is None and not replay:
            rate = REFERENCE_RATE if self.rate_curve is None else self.rate_curve.mean
        curve = None if self.rate_curve is None else self.rate_curve.modulation()
        return make_workload(
            self.kind,
            rate,
            lengths=self.length_model,
            trace=self.trace,
            trace_columns=self.columns.names(),
            trace_time_scale=self.time_scale,
            tenants=len(tenant_shares),
            tenant_shares=tenant_shares,
            difficulty=self.difficulty,
            rate_curve=curve,
            tenant_curves=[None if c is None else c.modulation() for c in tenant_curves],
            **self.options,
        )


class SimConfig(_Strict):
    """A whole simulated fleet and its traffic: the fleet file.

    Besides what the simulator runs, it carries what the environments and commands built from
    it need: ``slo_spec`` (path of the SLO spec, relative to the file; default
    :func:`slo.default_spec`), ``control_interval_s`` and ``episode_hours``; and
    ``capacity_rps``, the capacity loads are relative to when it is known (from a load test),
    instead of the one measured in simulation (:mod:`envs.sim.capacity`).
    """

    description: str = ""
    pools: list[PoolConfig] = Field(default_factory=lambda: [PoolConfig()], min_length=1)
    router: RouterConfig = RouterConfig()
    admission: AdmissionConfig = AdmissionConfig()
    tenants: list[TenantConfig] = Field(
        default_factory=lambda: [TenantConfig(name="default")], min_length=1
    )
    failures: list[ScheduledFailure] = Field(default_factory=list)
    workload: WorkloadConfig = WorkloadConfig()
    knobs: Knobs = Knobs()
    series_rows: int = Field(
        10_000, ge=1, description="rows of the fleet time series kept (one per advance call)"
    )
    capacity_rps: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="requests/s at saturation a workload.load is relative to (a load test's "
        "figure); default: measured in simulation",
    )
    slo_spec: str | None = Field(None, description="SLO spec file (default: the built-in spec)")
    control_interval_s: float = Field(30.0, gt=0.0, allow_inf_nan=False)
    episode_hours: float = Field(2.0, gt=0.0, allow_inf_nan=False)

    @field_validator("slo_spec")
    @classmethod
    def _spec_loads(cls, spec: str | None, info: ValidationInfo) -> str | None:
        if spec is None:
            return None
        from slo import load_spec

        path = _resolve_path(spec, info)
        load_spec(path)  # SpecError names the spec file, line and SLO
        return path

    @model_validator(mode="after")
    def _consistent(self) -> SimConfig:
        for kind, items in (("pool", self.pools), ("tenant", self.tenants)):
            names = [item.name for item in items]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind}s: duplicate {kind} name {duplicates[0]!r}")
        tiers = sorted({p.tier for p in self.pools})
        if tiers != list(range(len(tiers))):
            raise ValueError(f"pools: tiers must be numbered 0..n-1 without gaps, got {tiers}")
        for i, tenant in enumerate(self.tenants):
            if tenant.tier >= len(tiers):
                raise ValueError(f"tenants.{i}.tier: no pool serves tier {tenant.tier}")
        self._tenant_curves_on_synthetic_traffic()
        if self.router.cheap_tier is not None and self.router.cheap_tier >= len(tiers):
            raise ValueError(f"router.cheap_tier: no pool serves tier {self.router.cheap_tier}")
        by_name = {p.name: p for p in self.pools}
        for i, failure in enumerate(self.failures):
            pool = by_name.get(failure.pool)
            if pool is None:
                raise ValueError(f"failures.{i}.pool: no pool named {failure.pool!r}")
            if failure.replica >= pool.replica_slots:
                raise ValueError(
                    f"failures.{i}.replica: pool {pool.name!r} has {pool.replica_slots} replicas"
                )
        weights = self.knobs.tenant_weights
        if weights is not None and len(weights) != len(self.tenants):
            raise ValueError(
                f"knobs.tenant_weights: {len(weights)} weights for {len(self.tenants)} tenants"
            )
        return self

    def _tenant_curves_on_synthetic_traffic(self) -> None:
        kind = self.workload.kind
        if kind not in REPLAY_KINDS and not self.workload.trace:
            return
        for i, tenant in enumerate(self.tenants):
            if tenant.rate_curve is not None:
                raise ValueError(
                    f"tenants.{i}.rate_curve: a replay (workload kind {kind!r}) follows its "
                    "trace's own rate: no tenant rate_curve with it"
                )

    def build_workload(self) -> Workload:
        """The fleet's traffic: the workload over the tenants' shares and rate curves (a
        ``load`` resolved first: :func:`envs.sim.capacity.with_load_resolved`)."""
        return self.workload.build(
            [t.share for t in self.tenants], [t.rate_curve for t in self.tenants]
        )

    def curves_starting_at(self, start_s: float) -> SimConfig:
        """This fleet with every rate curve (the workload's and the tenants') starting
        ``start_s`` simulated seconds later (see :meth:`WorkloadConfig.curve_starting_at`)."""
        tenants = [
            t
            if t.rate_curve is None
            else t.model_copy(update={"rate_curve": t.rate_curve.starting_at(start_s)})
            for t in self.tenants
        ]
        workload = self.workload.curve_starting_at(start_s)
        return self.model_copy(update={"workload": workload, "tenants": tenants})

    def steady_tenants(self) -> list[TenantConfig]:
        """The tenants without their rate curves: at their shares of the mean traffic (a
        capacity is measured on a steady mix)."""
        return [t.model_copy(update={"rate_curve": None}) for t in self.tenants]

    @property
    def n_tiers(self) -> int:
        """Number of model tiers."""
        return 1 + max(p.tier for p in self.pools)

    @property
    def cheap_tier(self) -> int:
        """The tier that receives downgraded traffic."""
        return self.router.cheap_tier if self.router.cheap_tier is not None else self.n_tiers - 1

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimConfig:
        """Load a fleet file; ConfigError names the file, and the line and path of every invalid
        field. Relative paths in it (models, trace, SLO spec) are relative to its folder."""
        path = Path(path)
        try:
            text = read_text(path)
            data = yaml.safe_load(text)
            lines = yaml_lines(text)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except TextFileError as exc:
            raise ConfigError(str(exc)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return validated(cls, data or {}, str(path), lines, base_dir=path.parent)

    @classmethod
    def from_dict(cls, data: object, source: str = "config") -> SimConfig:
        """Validate a mapping; ConfigError names ``source`` and every invalid field."""
        return validated(cls, data, source)


Loc = tuple[str | int, ...]


def yaml_lines(text: str) -> dict[Loc, int]:
    """The line (from 1) where each key or list item of a YAML document starts, by its path."""
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, path: Loc) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of the deepest key of ``loc`` that the document has, past the names pydantic
    adds to a field's path (union members, validators), which the document does not have."""
    found, path = None, ()
    for key in loc:
        if (*path, key) in lines:
            path = (*path, key)
            found = lines[path]
    return found


#: A whole-model check's message that starts with the path it is about (``failures.0.pool: ...``).
_PATH_IN_MESSAGE = re.compile(r"(?:Value error, )?(\w+(?:\.\w+)*): (.*)", re.DOTALL)


def _located(loc: Loc, message: str) -> tuple[Loc, str]:
    """The path an error is about: its own, or for whole-model checks (an empty path) the one
    their message starts with."""
    match = _PATH_IN_MESSAGE.fullmatch(message) if not loc else None
    if match is None:
        return tuple(loc), message
    path = tuple(int(x) if x.isdigit() else x for x in match[1].split("."))
    return path, match[2]


def validated(
    model: type[_Model],
    data: object,
    source: str,
    lines: dict[Loc, int] | None = None,
    base_dir: Path | None = None,
) -> _Model:
    """``model`` validated from ``data``; ConfigError names ``source`` and every invalid field
    by its path (``pools.0.replicas``), and its line when ``lines`` (:func:`yaml_lines`) are
    given. Relative paths in ``data`` are relative to ``base_dir`` (default: the working
    directory)."""
    context = {"base_dir": base_dir} if base_dir is not None else None
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = _located(err["loc"], err["msg"])
            line = _line_of(loc, lines or {})
            where = f"line {line}, " if line is not None else ""
            field = ".".join(str(x) for x in loc) or "(top level)"
            problems.append(f"  {where}{field}: {message}")
        raise ConfigError(f"{source}: invalid {model.__name__}\n" + "\n".join(problems)) from None


def reference_config(replicas: int = REFERENCE_REPLICAS, rate: float | None = None) -> SimConfig:
    """The reference fleet: Llama-2-7B on A100-80GB replicas (vLLM defaults), Poisson arrivals
    with Azure-conversation lengths at :data:`REFERENCE_RATE` per 8 replicas.

    Parameters
    ----------
    replicas: replicas of the pool; the default rate scales with them.
    rate: requests/s (default ``REFERENCE_RATE * replicas / 8``).
    """
    if rate is None:
        rate = REFERENCE_RATE * replicas / REFERENCE_REPLICAS
    return SimConfig(
        pools=[PoolConfig(name="strong", replicas=replicas)],
        workload=WorkloadConfig(kind="poisson", rate=rate, lengths="azure-conv"),
    )
