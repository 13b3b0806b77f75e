"""Fit a fleet file to a real fleet's metrics (``budgetpilot fit``).

From the counters a fleet's engines export over an interval (:mod:`slo.series`: Prometheus or
saved scrapes) :func:`fit_fleet` makes a fleet file (:class:`envs.sim.SimConfig`):

* **traffic**: the arrival rate per model (and per tenant when the request counters carry a
  tenant label) from the finished-request counter (``vllm:request_success_total``, SGLang's
  ``sglang:num_requests_total``), as a Poisson workload at the interval's mean rate whose tenants
  split it per model and tenant; when the rate varies, the workload follows the fleet's measured
  rate curve in blocks of about :data:`RATE_BLOCK_S` (``workload.rate_curve``); when the mix
  changes too (a tenant's share varies as much), each tenant whose own rate varies follows its
  own curve in the same blocks (``tenants[].rate_curve``), the others keeping their shares;
* **lengths**: prompt and output length distributions (:class:`envs.sim.config.
  LengthDistributions`) from the length histograms (``vllm:request_prompt_tokens`` and
  ``vllm:request_generation_tokens``, SGLang's ``*_tokens_histogram``): the histogram's exact
  mean (``_sum / _count``), its CDF at the bucket bounds, and the spread of the lognormal whose
  CDF is closest to the buckets' (for the tails beyond them);
* **pools and replicas** from the series' labels: a pool per value of the pool label (default
  ``pool``), its model from the model label, its replicas the distinct values of the replica
  label (the first of ``pod``, ``replica``, ``instance`` the series carry).

What the metrics cannot tell is named in :attr:`FleetFit.notes` with what was used instead
(the GPU, a missing pool label, missing length histograms...), never silently defaulted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from envs.sim.catalog import resolve_model
from envs.sim.config import ConfigError, LengthDistributions, RateCurveConfig, SimConfig
from envs.sim.workload import get_length_model
from slo.metrics import MetricMapping
from slo.series import MetricsSource, Series

#: Labels that name a replica, tried in this order (Kubernetes pods, the twin's targets,
#: Prometheus's own target label).
REPLICA_LABELS = ("pod", "replica", "instance")
#: Spread (standard deviation of the log length) assumed when only token counters are known.
ASSUMED_SIGMA = 1.0
#: Length model whose mean and spread stand in when neither length histograms nor token
#: counters are exported.
FALLBACK_LENGTHS = "azure-conv"
#: Blocks in which the rate curves are measured (about this long; they tile the interval), and
#: the spread of their rates (relative to the mean) above which a rate (or a tenant's share) is
#: said to vary and the fleet file follows its curve. Blocks, not scrape steps: completions are
#: bursty (a batch finishes together), so single steps would carry that noise into the simulated
#: arrivals.
RATE_BLOCK_S = 300.0
VARYING_RANGE = 0.25
#: Fewest blocks in which a rate can be said to vary (two could be a single ramp's halves).
VARYING_BLOCKS = 3
#: The whole traffic's name among the fitted rates and curves (:meth:`FleetFit.rate_curves`).
ALL = "all"


class FitError(ValueError):
    """The metrics cannot give a fleet file; the message says what is missing."""


@dataclass(frozen=True)
class FitOptions:
    """How to read the metrics.

    Parameters
    ----------
    mapping: the engines' metric names.
    pool_label: the label naming a replica's pool.
    replica_label: the label naming a replica (None: the first of :data:`REPLICA_LABELS`).
    tenant_label: the label naming a tenant on the request counters, when there is one.
    models: model label value -> catalog model or ``config.json`` path (default: the label
        value itself, when the catalog knows it).
    gpu: the accelerator of every pool (metrics do not name it).
    """

    mapping: MetricMapping
    pool_label: str = "pool"
    replica_label: str | None = None
    tenant_label: str = "tenant"
    models: Mapping[str, str] = field(default_factory=dict)
    gpu: str = "a100-80gb"


@dataclass(frozen=True)
class LengthFit:
    """One length distribution (:class:`envs.sim.config.LengthDistribution`): its ``mean``, its
    lognormal ``sigma``, the histogram's ``cdf`` when there is one, and where they come from."""

    mean: float
    sigma: float
    source: str
    cdf: dict[float, float] | None = None


@dataclass
class FleetFit:
    """What :func:`fit_fleet` found: the fleet file and how it was made."""

    config: SimConfig
    start: float
    end: float
    source: str
    rates: dict[str, float]  # requests/s per tenant of the fleet file (model or model/tenant)
    curve_times: np.ndarray  # end of each step
    curve: dict[str, np.ndarray]  # requests/s per step, per tenant of the fleet file
    lengths: dict[str, LengthFit]  # "prompt", "output"
    notes: list[str] = field(default_factory=list)
    block_s: float = RATE_BLOCK_S  # length of a block of the fleet's rate curve
    block_rates: np.ndarray = field(default_factory=lambda: np.empty(0))  # requests/s per block
    # requests/s per block, per tenant of the fleet file
    tenant_block_rates: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Requests per second of the whole fleet."""
        return sum(self.rates.values())

    def rate_curves(self) -> dict[str, RateCurveConfig]:
        """The rate curves written in the fleet file: each tenant's own by its name, the
        workload's (the whole traffic's) as :data:`ALL`."""
        config = self.config
        curves = {t.name: t.rate_curve for t in config.tenants if t.rate_curve is not None}
        if config.workload.rate_curve is not None:
            curves[ALL] = config.workload.rate_curve
        return curves


def fit_fleet(source: MetricsSource, options: FitOptions) -> FleetFit:
    """Fit a fleet file to the metrics of ``source`` over its range.

    Raises
    ------
    FitError
        No finished-request counter in the range, series without the model or replica label,
        a pool serving two models, a model the catalog does not know (``options.models``).
    slo.series.SourceError
        The source cannot be read.
    """
    notes: list[str] = []
    requests = _request_series(source, options.mapping)
    pools = _pools(requests, options, notes)
    groups = _traffic_groups(requests, options, notes)
    times, curve = _rate_curve(groups)
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    if span <= 0:
        raise FitError(f"{source.describe()}: one sample per series; increases need two")
    increases = {key: sum(s.increase() for s in series) for key, series in groups.items()}
    traffic = {key: n / span for key, n in increases.items() if n > 0}
    if not traffic:
        raise FitError(
            f"{source.describe()}: no request finished between {source.start:.0f} and "
            f"{source.end:.0f} ({options.mapping.finished} did not grow)"
        )
    fitted = _fit_traffic(times, curve, traffic, notes)
    counts = sum(increases.values())
    lengths = {
        which: _fit_length(source, options.mapping, which, counts, notes)
        for which in ("prompt", "output")
    }
    config = _fleet_config(source, options, pools, fitted, lengths, notes)
    rates = {_tenant_name(*key): rate for key, rate in traffic.items()}
    named_curve = {_tenant_name(*key): c for key, c in curve.items()}
    named_blocks = {_tenant_name(*key): b for key, b in fitted.tenant_blocks.items()}
    return FleetFit(
        config, source.start, source.end, source.describe(), rates, times[1:], named_curve,
        lengths, notes, fitted.block_s, fitted.block_rates, named_blocks,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Requests, pools, tenants


def _request_series(source: MetricsSource, mapping: MetricMapping) -> list[Series]:
    name = mapping.finished
    if name is None:
        raise FitError(f"metric mapping {mapping.name!r} names no finished-request counter")
    series = [s for s in source.series(name) if len(s.times) > 0]
    if not series:
        raise FitError(
            f"{source.describe()}: no samples of {name} between {source.start:.0f} and "
            f"{source.end:.0f} (an empty range, or engines that do not speak the "
            f"{mapping.name!r} mapping: --mapping)"
        )
    return series


#: A tenant of the fitted fleet file: ``(model, tenant label value or None)``.
_Key = tuple[str, str | None]


@dataclass
class _Pool:
    model: str
    replicas: set[str] = field(default_factory=set)


def _pools(series: list[Series], options: FitOptions, notes: list[str]) -> dict[str, _Pool]:
    model_label = options.mapping.model_label
    replica_label = _replica_label(series, options)
    pool_label = _pool_label(series, options, notes)
    pools: dict[str, _Pool] = {}
    for s in series:
        model = s.labels.get(model_label)
        if model is None:
            raise FitError(f"a series has no {model_label!r} label: {dict(s.labels)}")
        pool = pools.setdefault(s.labels[pool_label], _Pool(model))
        if pool.model != model:
            raise FitError(
                f"pool {s.labels[pool_label]!r} serves two models ({pool.model!r}, {model!r}): "
                f"a pool is one model's replicas (--pool-label names the label)"
            )
        pool.replicas.add(s.labels[replica_label])
    return pools


def _replica_label(series: list[Series], options: FitOptions) -> str:
    candidates = (options.replica_label,) if options.replica_label else REPLICA_LABELS
    for label in candidates:
        if all(label in s.labels for s in series):
            return label
    raise FitError(
        f"no label names the replicas on every series (tried {', '.join(candidates)}): "
        "--replica-label"
    )


def _pool_label(series: list[Series], options: FitOptions, notes: list[str]) -> str:
    label = options.pool_label
    carrying = sum(label in s.labels for s in series)
    if carrying == len(series):
        return label
    if carrying:
        missing = next(dict(s.labels) for s in series if label not in s.labels)
        raise FitError(
            f"{carrying} of {len(series)} series carry the pool label {label!r}, not this one: "
            f"{missing}"
        )
    model_label = options.mapping.model_label
    notes.append(
        f"pools: no series carries the pool label {label!r} (--pool-label); one pool per "
        f"{model_label!r} value instead"
    )
    return model_label


def _traffic_groups(
    series: list[Series], options: FitOptions, notes: list[str]
) -> dict[_Key, list[Series]]:
    """The request series by tenant of the fleet file: per model, and per tenant label value
    when the counters carry one (``(model, tenant)`` keys)."""
    model_label, tenant_label = options.mapping.model_label, options.tenant_label
    with_tenant = all(tenant_label in s.labels for s in series)
    if not with_tenant:
        notes.append(
            f"tenants: the request counters carry no {tenant_label!r} label (--tenant-label); "
            "one tenant per model"
        )
    groups: dict[_Key, list[Series]] = defaultdict(list)
    for s in series:
        groups[(s.labels[model_label], s.labels.get(tenant_label))].append(s)
    return dict(groups)


def _tenant_name(model: str, tenant: str | None) -> str:
    return model if tenant is None else f"{model}/{tenant}"


def _rate_curve(
    groups: Mapping[_Key, list[Series]],
) -> tuple[np.ndarray, dict[_Key, np.ndarray]]:
    """Requests/s per step of the union of the series' sample times, per group."""
    times = np.unique(np.concatenate([s.times for ss in groups.values() for s in ss]))
    curve = {}
    for name, series in groups.items():
        increase = np.zeros(len(times))
        for s in series:
            np.add.at(increase, np.searchsorted(times, s.times[1:]), s.increases())
        curve[name] = increase[1:] / np.diff(times)
    return times, curve


@dataclass(frozen=True)
class _Traffic:
    """The fitted traffic: requests/s per tenant of the fleet file over the interval and in
    blocks (the fleet's and each tenant's), and the rate curves to write (the workload's, None
    when steady; the tenants' own, by tenant)."""

    rates: Mapping[_Key, float]
    block_s: float
    block_rates: np.ndarray
    tenant_blocks: Mapping[_Key, np.ndarray]
    curve: Mapping[str, object] | None
    tenant_curves: Mapping[_Key, Mapping[str, object]]


def _fit_traffic(
    times: np.ndarray,
    curve: Mapping[_Key, np.ndarray],
    rates: Mapping[_Key, float],
    notes: list[str],
) -> _Traffic:
    """The traffic of the tenants with requests (``rates``) in blocks, and the curves that vary
    (named in ``notes``), from their requests/s per scrape step (``curve``, ending at
    ``times[1:]``)."""
    block_s, block_rates = _rate_blocks(times, sum(curve.values()))
    tenant_blocks = {key: _rate_blocks(times, curve[key])[1] for key in rates}
    fleet_curve = _varying_rate(block_s, block_rates, notes)
    tenant_curves = _tenant_curves(block_s, tenant_blocks, fleet_curve is not None, notes)
    return _Traffic(rates, block_s, block_rates, tenant_blocks, fleet_curve, tenant_curves)


def _rate_blocks(times: np.ndarray, rates: np.ndarray) -> tuple[float, np.ndarray]:
    """Requests/s per scrape step (``rates``, ending at ``times[1:]``) in equal blocks of about
    :data:`RATE_BLOCK_S` that tile the interval: ``(block length, rate per block)``. A block
    edge inside a scrape step takes the step's requests in proportion (they are spread evenly
    over it), so scrapes need not be regular nor divide the blocks."""
    span = float(times[-1] - times[0])
    blocks = max(1, round(span / RATE_BLOCK_S))
    block_s = span / blocks
    counted = np.concatenate([[0.0], np.cumsum(rates * np.diff(times))])
    edges = times[0] + block_s * np.arange(blocks + 1)
    return block_s, np.diff(np.interp(edges, times, counted)) / block_s


def _varies(values: np.ndarray) -> bool:
    """Whether block values (rates, shares) vary by more than :data:`VARYING_RANGE` of their
    mean over at least :data:`VARYING_BLOCKS` blocks: below, the block-to-block differences are
    the counters' noise."""
    if len(values) < VARYING_BLOCKS or values.mean() <= 0:
        return False
    return (values.max() - values.min()) / values.mean() > VARYING_RANGE


def _curve_entry(block_s: float, rates: np.ndarray) -> dict[str, object]:
    """A fleet file's ``rate_curve`` of these block rates (rounded for the file: a millisecond of
    block, a millionth of a request/s)."""
    return {"step_s": round(block_s, 3), "rates": [round(float(r), 6) for r in rates]}


def _span(rates: np.ndarray, block_s: float) -> str:
    return f"{rates.min():.3g} to {rates.max():.3g} requests/s in {block_s / 60:.3g}-minute blocks"


def _varying_rate(block_s: float, rates: np.ndarray, notes: list[str]) -> dict[str, object] | None:
    """The fleet file's ``workload.rate_curve`` when the block rates vary (:func:`_varies`;
    named in ``notes``), else None: a steady rate stays a plain Poisson workload at its mean."""
    if not _varies(rates):
        return None
    notes.append(
        f"traffic: the arrival rate varies over the interval ({_span(rates, block_s)}): the "
        f"fleet file follows its curve (workload.rate_curve, {len(rates)} blocks repeating after "
        f"{len(rates) * block_s / 60:.3g} minutes) around its mean"
    )
    return _curve_entry(block_s, rates)


def _tenant_curves(
    block_s: float, blocks: Mapping[_Key, np.ndarray], fleet_varies: bool, notes: list[str]
) -> dict[_Key, dict[str, object]]:
    """The tenants' own ``rate_curve`` (their requests/s in the fleet's blocks) when the mix
    changes, i.e. some tenant's share of the blocks' traffic varies (:func:`_varies`): then
    every tenant whose own rate varies follows its curve, and a steady one keeps its share of
    the mean, which the simulator's mix (:class:`envs.sim.config.TenantConfig`) turns into its
    steady rate. A mix that stays put needs no tenant curve: the fleet's moves every tenant
    alike. Named in ``notes`` (and that every tenant keeps its share when the rate varies)."""
    total = sum(blocks.values())
    served = total > 0
    mix_changes = any(_varies(b[served] / total[served]) for b in blocks.values())
    curves = {key: _curve_entry(block_s, b) for key, b in blocks.items() if _varies(b)}
    if not (mix_changes and curves):
        if fleet_varies:
            notes.append(
                "tenants: every tenant keeps its share of the whole interval (no share varies "
                f"by more than {VARYING_RANGE:.0%} between blocks)"
            )
        return {}
    own = "; ".join(f"{_tenant_name(*key)} ({_span(blocks[key], block_s)})" for key in curves)
    steady = [_tenant_name(*key) for key in blocks if key not in curves]
    notes.append(
        f"tenants: the traffic's mix changes over the interval; these tenants follow their own "
        f"rate curve (tenants[].rate_curve), their share moving with it: {own}"
        + (f"; the others keep a steady rate: {', '.join(steady)}" if steady else "")
    )
    return curves


# ---------------------------------------------------------------------------------------------
# Lengths


def _fit_length(
    source: MetricsSource, mapping: MetricMapping, which: str, requests: float, notes: list[str]
) -> LengthFit:
    """The lognormal of prompt (``which="prompt"``) or output lengths: from the histogram, else
    the token counter's mean with :data:`ASSUMED_SIGMA`, else the mean and spread of the
    :data:`FALLBACK_LENGTHS` model (named in ``notes``)."""
    histogram = mapping.prompt_tokens if which == "prompt" else mapping.generation_tokens
    counter = mapping.prompt_tokens_total if which == "prompt" else mapping.generation_tokens_total
    if histogram is not None:
        bounds, counts, total = histogram_increase(source, histogram)
        n = counts.sum()
        if n > 0 and total > 0:
            mean = total / n
            sigma = _lognormal_sigma(mean, bounds, counts)
            return LengthFit(mean, sigma, histogram, _cdf_knots(bounds, counts))
    what = f"{which} lengths: no {histogram or 'length'} histogram in the range"
    tokens = sum(s.increase() for s in source.series(counter)) if counter else 0.0
    if tokens > 0 and requests > 0:
        notes.append(
            f"{what}; mean from {counter} / requests, spread sigma={ASSUMED_SIGMA:g} assumed "
            "(the counter has no distribution)"
        )
        return LengthFit(tokens / requests, ASSUMED_SIGMA, f"{counter} (sigma assumed)")
    fallback = _length_model_fit(which)
    notes.append(
        f"{what} nor token counter; the mean and spread of the {FALLBACK_LENGTHS!r} length "
        f"model used instead ({fallback.mean:.0f} tokens, sigma {fallback.sigma:.2f})"
    )
    return fallback


def _length_model_fit(which: str) -> LengthFit:
    """The mean and log-length spread of :data:`FALLBACK_LENGTHS`'s prompt or output lengths."""
    model = get_length_model(FALLBACK_LENGTHS)
    quantiles = model.prompt_quantiles if which == "prompt" else model.output_quantiles
    weights = np.exp(-0.5 * model.z_grid**2)
    weights /= weights.sum()
    logs = np.log(np.maximum(quantiles, 1.0))
    spread = math.sqrt(float(weights @ (logs - weights @ logs) ** 2))
    return LengthFit(float(weights @ quantiles), spread, f"{FALLBACK_LENGTHS} (fallback)")


def histogram_increase(
    source: MetricsSource, base: str, where: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """A histogram's increase over the range, summed over its series (those whose labels
    include ``where``): finite bucket bounds, per-bucket counts (the last one ``+Inf``) and the
    increase of ``_sum``."""
    cumulative: dict[float, float] = defaultdict(float)
    for s in _matching(source.series(f"{base}_bucket"), where):
        cumulative[float(s.labels["le"])] += s.increase()
    total = sum(s.increase() for s in _matching(source.series(f"{base}_sum"), where))
    if not cumulative:
        return np.empty(0), np.empty(0), total
    bounds = np.array(sorted(cumulative))
    counts = np.diff(np.array([cumulative[b] for b in bounds]), prepend=0.0)
    finite = np.isfinite(bounds)
    if finite.all():  # a histogram without +Inf: nothing above its last bound
        counts = np.append(counts, 0.0)
    return bounds[finite], np.maximum(counts, 0.0), total


def _cdf_knots(bounds: np.ndarray, counts: np.ndarray) -> dict[float, float]:
    """The histogram's CDF at its bounds, without the flat ends (the last bound with no length
    at or below it and the first with every length are kept: they bound the lengths)."""
    shares = np.cumsum(counts)[: len(bounds)] / counts.sum()
    inner = (shares > 0) & (shares < 1)
    keep = inner | np.append(inner[1:], False) | np.insert(inner[:-1], 0, False)
    return {float(b): round(float(p), 6) for b, p, k in zip(bounds, shares, keep, strict=True) if k}


def _matching(series: Iterable[Series], where: Mapping[str, str] | None) -> list[Series]:
    if not where:
        return list(series)
    return [s for s in series if all(s.labels.get(k) == v for k, v in where.items())]


def _lognormal_sigma(mean: float, bounds: np.ndarray, counts: np.ndarray) -> float:
    """The sigma whose lognormal of this mean has the CDF closest (least squares) to the
    histogram's at its bucket bounds."""
    observed = np.cumsum(counts)[: len(bounds)] / counts.sum()
    sigmas = np.linspace(0.05, 3.0, 296)
    mu = math.log(mean) - 0.5 * sigmas[:, None] ** 2
    z = (np.log(bounds)[None, :] - mu) / sigmas[:, None]
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    errors = ((cdf - observed[None, :]) ** 2).sum(axis=1)
    return float(sigmas[int(np.argmin(errors))])


_erf = np.vectorize(math.erf, otypes=[float])


# ---------------------------------------------------------------------------------------------
# The fleet file


def _fleet_config(
    source: MetricsSource,
    options: FitOptions,
    pools: Mapping[str, _Pool],
    traffic: _Traffic,
    lengths: Mapping[str, LengthFit],
    notes: list[str],
) -> SimConfig:
    catalog = {model: _catalog_model(model, options.models) for model in _models(pools)}
    by_size = sorted(catalog, key=lambda m: -resolve_model(catalog[m]).weight_bytes)
    tier_of = {model: tier for tier, model in enumerate(by_size)}
    notes.append(f"gpu: the metrics do not name the accelerator; {options.gpu} (--gpu)")
    if len(by_size) > 1:
        notes.append(
            "tiers: by model size, largest first; capability of the lower tiers 1.0 (quality is "
            "not in the metrics)"
        )
    pool_entries = [
        {
            "name": name,
            "tier": tier_of[pool.model],
            "model": catalog[pool.model],
            "gpu": options.gpu,
            "replicas": len(pool.replicas),
        }
        for name, pool in sorted(pools.items(), key=lambda kv: (tier_of[kv[1].model], kv[0]))
    ]
    total = sum(traffic.rates.values())
    tenants = [
        {
            "name": _tenant_name(model, tenant),
            "share": round(rate / total, 6),
            "tier": tier_of[model],
        }
        | _curve_field(traffic.tenant_curves.get((model, tenant)))
        for (model, tenant), rate in traffic.rates.items()
    ]
    workload = {"kind": "poisson", "rate": round(total, 6)} | _curve_field(traffic.curve)
    workload["lengths"] = _lengths_entry(lengths)
    data = {
        "description": f"fitted to {source.describe()} from {source.start:.0f} to {source.end:.0f}",
        "pools": pool_entries,
        "tenants": tenants,
        "workload": workload,
    }
    try:
        return SimConfig.from_dict(data, "the fitted fleet")
    except ConfigError as err:
        raise FitError(str(err)) from None


def _curve_field(curve: Mapping[str, object] | None) -> dict[str, object]:
    """A fleet file entry's ``rate_curve`` field, none for a steady rate (left unset: the
    written file shows only the curves that were fitted)."""
    return {} if curve is None else {"rate_curve": curve}


def _models(pools: Mapping[str, _Pool]) -> list[str]:
    return sorted({pool.model for pool in pools.values()})


def _catalog_model(label: str, models: Mapping[str, str]) -> str:
    """The catalog model (or config.json path) of a model label value."""
    reference = models.get(label, label)
    try:
        resolve_model(reference)
    except (ValueError, OSError) as err:
        given = f"--model {label}={reference}" if label in models else f"model {label!r}"
        raise FitError(
            f"{given}: {err}; name the served model's catalog entry or config.json with "
            f"--model {label}=NAME"
        ) from None
    return reference


def _lengths_entry(lengths: Mapping[str, LengthFit]) -> dict[str, object]:
    entry = {
        which: {"mean": round(fit.mean, 3), "sigma": round(fit.sigma, 3)}
        | ({"cdf": fit.cdf} if fit.cdf else {})
        for which, fit in lengths.items()
    }
    return LengthDistributions.model_validate(entry).model_dump()


def parse_model_options(values: Sequence[str]) -> dict[str, str]:
    """``--model LABEL=REF`` options as a dict; ValueError naming a malformed one."""
    models = {}
    for value in values:
        label, sep, reference = value.partition("=")
        if not sep or not label or not reference:
            raise ValueError(f"--model: expected LABEL=MODEL, got {value!r}")
        models[label] = reference
    return models
