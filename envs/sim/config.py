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

Unknown keys are errors; :meth:`SimConfig.from_yaml` names the file and the field of every
problem.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from envs.sim.catalog import Deployment, get_gpu, get_model
from envs.sim.knobs import Knobs
from envs.sim.workload import LENGTH_MODELS, WORKLOAD_NAMES, Workload, make_workload
from slo.files import TextFileError, read_text

GiB = 1024**3

#: Poisson rate (req/s) of the reference workload: ~80% of the reference fleet's capacity as
#: measured by :func:`envs.sim.simulator.measure_capacity` (tests/test_sim_capacity.py checks it).
REFERENCE_RATE = 30.0
#: Replicas of the reference fleet.
REFERENCE_REPLICAS = 8


class ConfigError(ValueError):
    """A configuration is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Model = TypeVar("_Model", bound=BaseModel)


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
    the pool between 0 and ``max_replicas`` (default: ``replicas``, a fixed pool), with the
    delays and interruptions of ``autoscaling``.

    ``max_num_seqs``, ``max_num_batched_tokens``, ``chunked_prefill``, ``block_tokens``,
    ``gpu_memory_utilization``, ``swap_space_gib`` and ``preemption_mode`` are vLLM's engine
    settings of the same names.
    """

    name: str = "strong"
    model: str = "llama-2-7b"
    gpu: str = "a100-80gb"
    tp: int = Field(1, ge=1)
    replicas: int = Field(REFERENCE_REPLICAS, ge=0, description="replicas serving at the start")
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
    def _known_model(cls, name: str) -> str:
        get_model(name)
        return name.lower()

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, name: str) -> str:
        get_gpu(name)
        return name.lower()

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
        return self.autoscaling.nominal_provisioning_s(get_model(self.model).weight_bytes)

    def deployment(self) -> Deployment:
        """The catalog deployment of one replica."""
        return Deployment(
            get_model(self.model),
            get_gpu(self.gpu),
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


class TenantConfig(_Strict):
    """One tenant: its traffic share, priority (for shedding), queue weight and patience."""

    name: str
    share: float = Field(1.0, gt=0.0, description="relative share of the traffic")
    priority: int = Field(1, ge=0, description="higher is more important; shed below a level")
    weight: float = Field(1.0, gt=0.0, description="share of each waiting queue (fair queueing)")
    patience_s: float = Field(math.inf, gt=0.0, description="client timeout for the first token")
    tier: int = Field(0, ge=0, description="the tier its requests are meant for")


class ScheduledFailure(_Strict):
    """A replica failure at a given time (in addition to random MTBF failures). ``replica``
    numbers the pool's replica slots (``0 .. max_replicas - 1``); a failure of a stopped slot
    has no effect."""

    pool: str
    replica: int = Field(ge=0)
    at_s: float = Field(ge=0.0)
    duration_s: float = Field(gt=0.0)


class WorkloadConfig(_Strict):
    """The request source (see :func:`envs.sim.workload.make_workload`).

    ``rate`` is in requests/s: default :data:`REFERENCE_RATE` for synthetic workloads, the
    trace's own rate for replays. ``options`` passes the remaining make_workload parameters
    (``cv``, ``period_s``, ``flash_multiplier``...).
    """

    kind: str = "poisson"
    rate: float | None = Field(None, gt=0.0)
    lengths: str = "azure-conv"
    trace: str | None = None
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
    def _known_lengths(cls, name: str) -> str:
        if name not in LENGTH_MODELS:
            raise ValueError(f"unknown length model {name!r}; known: {', '.join(LENGTH_MODELS)}")
        return name

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, float]) -> dict[str, float]:
        fixed = {"name", "rate", "lengths", "trace", "tenants", "tenant_shares", "difficulty"}
        known = set(inspect.signature(make_workload).parameters) - fixed
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return options

    @model_validator(mode="after")
    def _trace_given(self) -> WorkloadConfig:
        if self.kind == "trace" and not self.trace:
            raise ValueError("workload kind 'trace' needs trace: PATH")
        return self

    def build(self, tenant_shares: list[float]) -> Workload:
        """Instantiate the workload for tenants with these traffic shares."""
        replay = self.kind in ("trace", "azure-conv", "azure-code")
        rate = self.rate if self.rate is not None or replay else REFERENCE_RATE
        return make_workload(
            self.kind,
            rate,
            lengths=self.lengths,
            trace=self.trace,
            tenants=len(tenant_shares),
            tenant_shares=tenant_shares,
            difficulty=self.difficulty,
            **self.options,
        )


class SimConfig(_Strict):
    """A whole simulated fleet and its traffic."""

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

    @model_validator(mode="after")
    def _consistent(self) -> SimConfig:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pools: duplicate pool name {duplicates[0]!r}")
        tiers = sorted({p.tier for p in self.pools})
        if tiers != list(range(len(tiers))):
            raise ValueError(f"pools: tiers must be numbered 0..n-1 without gaps, got {tiers}")
        for i, tenant in enumerate(self.tenants):
            if tenant.tier >= len(tiers):
                raise ValueError(f"tenants.{i}.tier: no pool serves tier {tenant.tier}")
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
        """Load a fleet file; ConfigError names the file and every invalid field."""
        path = Path(path)
        try:
            data = yaml.safe_load(read_text(path))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except TextFileError as exc:
            raise ConfigError(str(exc)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_dict(cls, data: object, source: str = "config") -> SimConfig:
        """Validate a mapping; ConfigError names ``source`` and every invalid field."""
        return validated(cls, data, source)


def validated(model: type[_Model], data: object, source: str) -> _Model:
    """``model`` validated from ``data``; ConfigError names ``source`` and every invalid field
    by its path (``pools.0.replicas``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: invalid {model.__name__}\n" + "\n".join(lines)) from None


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
