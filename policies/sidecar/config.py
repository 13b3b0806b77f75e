"""Sidecar settings: a YAML file plus command-line overrides, validated by pydantic.

Every problem is reported as a :class:`SidecarConfigError` naming the field (``engines[2].pool:
...``). Checks that need the policy (knob names, pools of the contract, SLOs the metrics can
feed) are made when the :class:`~policies.sidecar.loop.Sidecar` is built, with the same error.

Example: ``policies/sidecar/example.yaml``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slo.files import TextFileError, read_text
from slo.metrics import load_mapping

#: Environment variable holding the token of the actuation and kill-switch endpoints.
TOKEN_ENV = "BUDGETPILOT_SIDECAR_TOKEN"


class SidecarConfigError(ValueError):
    """The configuration (or its fit to the policy) is invalid; the message names the field."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    return value


URL = Annotated[str, AfterValidator(_check_url)]


class EngineEndpoint(_Settings):
    """One serving engine (a replica) whose ``/metrics`` the sidecar scrapes.

    Parameters
    ----------
    name:
        Unique name (used in logs, the audit log and ``/metrics`` labels).
    url:
        Its metrics URL, e.g. ``http://10.0.0.7:8000/metrics`` (not needed when read from
        Prometheus).
    pool:
        The pool it serves in; one of the policy contract's pools (``strong``, ``cheap``).
    max_num_seqs:
        Its batch limit (vLLM ``--max-num-seqs``; engines do not export it).
    tier:
        Its pool's model tier (0 the strongest): the role a policy of observation contract v3
        sees it in (``strong`` for 0, ``cheap`` for the others); ``None``: the pool's name
        says (``strong`` or ``cheap``).
    """

    name: str = Field(min_length=1)
    url: URL | None = None
    pool: str
    max_num_seqs: int = Field(gt=0)
    tier: int | None = Field(default=None, ge=0)


class CounterEndpoint(_Settings):
    """An endpoint exporting budgetpilot counters (a budget-aware router, the engine twin)."""

    name: str = Field(default="router", min_length=1)
    url: URL | None = None


#: Signals named by the metric mapping (no longer in ``signals``).
_MAPPING_SIGNALS = {"waiting", "running", "preemptions", "finished"}


class SignalNames(_Settings):
    """Metric names of the fleet signals beyond the engines' own.

    The engines' scheduler metrics (``waiting``, ``running``, ``preemptions``, ``finished``) are
    named by the metric ``mapping`` (see :class:`slo.metrics.MetricMapping`). Their
    ``finished`` counter plus the change of queued and running requests estimates arrivals;
    ``arrivals`` (a counter, e.g. a router's requests, which also sees requests refused at
    admission) replaces the estimate.
    """

    arrivals: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _engine_names_belong_to_the_mapping(cls, data: Any) -> Any:
        moved = sorted(set(data) & _MAPPING_SIGNALS) if isinstance(data, Mapping) else []
        if moved:
            example = ", ".join(f"{name}: ..." for name in moved)
            raise ValueError(
                f"{', '.join(moved)}: engine metric names are set in the metric mapping, e.g. "
                f"mapping: {{base: <built-in>, {example}}} (null: the engine has none)"
            )
        return data


class ScrapeSettings(_Settings):
    """How endpoints are scraped.

    Parameters
    ----------
    timeout_s:
        Deadline of one endpoint's scrape (connect, send, read).
    max_workers:
        Concurrent scrapes.
    max_page_bytes:
        Larger pages are refused (a runaway exporter must not exhaust memory).
    stale_after_s:
        A replica whose last readable page is older is not healthy, and metrics count as stale
        when the last complete scrape is older (default: half the interval, so one failed scrape
        makes them stale).
    per_interval:
        Scrapes per decision interval: gauges such as KV-cache usage are averaged over them (the
        environment observes time-weighted means), counters accumulate.
    """

    timeout_s: float = Field(default=2.0, gt=0)
    max_workers: int = Field(default=16, gt=0, le=256)
    max_page_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    stale_after_s: float | None = Field(default=None, ge=0)
    per_interval: int = Field(default=1, ge=1, le=60)


class GuardrailSettings(_Settings):
    """Limits every published action respects.

    Parameters
    ----------
    max_step:
        Largest change of a knob per interval, as a fraction of its range (log knobs: of their
        log range). Integer knobs may always move by one.
    hysteresis:
        A knob only changes when the proposal is at least this fraction of its range away from
        the value in force (integer knobs: half a step more than that).
    bounds:
        Tighter ranges than the action contract's, per knob name.
    """

    max_step: float = Field(default=0.25, gt=0, le=1)
    hysteresis: float = Field(default=0.02, ge=0, lt=0.5)
    bounds: dict[str, tuple[float, float]] = {}

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for knob, (low, high) in value.items():
            if not low <= high:
                raise ValueError(f"knob {knob!r}: low {low} must not exceed high {high}")
        return value


class FallbackSettings(_Settings):
    """The heuristic that acts when metrics stay stale (a baseline of :mod:`agents.baselines`).

    Parameters
    ----------
    baseline:
        Baseline name (``reactive``, ``sre-policy``, ``pid``, ``static``, ``vllm-defaults``).
    params:
        Its parameters (fields of its params dataclass; knob values for ``static``).
    after_s:
        Seconds of stale metrics after which the baseline replaces holding the last safe action
        (default: four intervals).
    """

    baseline: str = "reactive"
    params: dict[str, Any] = {}
    after_s: float | None = Field(default=None, ge=0)


class MissingDataSettings(_Settings):
    """What the sidecar does about SLOs it cannot measure (see :mod:`policies.sidecar.observe`).

    Parameters
    ----------
    after_cycles:
        Decision intervals an SLO the policy observes may go without data (no complete series
        in any scrape) before the policy stops deciding; until then its last observed figures
        stand.
    action:
        Then: ``hold`` the last safe action, or hand over to the ``fallback`` baseline.
    min_coverage:
        Share of a burn-rate window that must hold data for an alert on it to fire, and of the
        period for its budget to leave warm-up.
    """

    after_cycles: int = Field(default=3, ge=1)
    action: Literal["hold", "fallback"] = "hold"
    min_coverage: float = Field(default=0.9, ge=0, le=1)


class EnvelopeSettings(_Settings):
    """What the sidecar does when discovery shows the fleet leaving the policy's envelope (the
    fleets it was trained on; see :mod:`policies.sidecar.envelope`). A fleet outside it at
    start is refused.

    Parameters
    ----------
    action:
        ``hold`` the last safe action, or hand over to the ``fallback`` baseline, until the
        fleet is back inside.
    """

    action: Literal["hold", "fallback"] = "hold"


class FileActuatorSettings(_Settings):
    """Kubernetes manifests for an llm-d / Gateway API Inference Extension router.

    The file (written atomically) holds an ``InferenceModelRewrite`` splitting ``model`` between
    the strong and the cheap model by the ``cheap_tier_share`` knob, one ``InferenceObjective``
    per objective whose priority drops to ``sheddable_priority`` when the
    ``shed_priority_below`` knob sheds it, and a ConfigMap with every knob value.
    """

    path: Path
    namespace: str = "default"
    pool: str = Field(min_length=1, description="InferencePool name (poolRef)")
    model: str = Field(min_length=1, description="client-facing model name to match")
    strong_model: str = Field(min_length=1)
    cheap_model: str = Field(min_length=1)
    objectives: dict[str, int] = Field(default={}, description="objective name -> priority")
    sheddable_priority: int = -1
    name_prefix: str = "budgetpilot"


class ScaleActuatorSettings(_Settings):
    """Deployment scale manifests of an elastic policy's desired replicas.

    One file per pool in ``directory``, named ``<namespace>.<deployment>.scale.yaml`` after the
    pool's ``scaling`` entry: a ``Deployment`` with only ``spec.replicas`` (written atomically;
    see :mod:`policies.sidecar.actuators` for how to apply it).
    """

    directory: Path


class WebhookActuatorSettings(_Settings):
    """POST each decision as JSON."""

    url: URL
    timeout_s: float = Field(default=2.0, gt=0)
    headers: dict[str, str] = {}


class TwinActuatorSettings(_Settings):
    """The engine twin's control API (``POST <url>/v1/knobs``; an elastic twin's desired
    replicas: ``POST <url>/v1/replicas``)."""

    url: URL
    timeout_s: float = Field(default=2.0, gt=0)


class ActuatorSettings(_Settings):
    """Where decisions go (any combination; none: decide and publish on /v1/decision only)."""

    file: FileActuatorSettings | None = None
    scale: ScaleActuatorSettings | None = None
    webhook: WebhookActuatorSettings | None = None
    twin: TwinActuatorSettings | None = None


class PodDiscoverySettings(_Settings):
    """How a Kubernetes Pod listed by discovery becomes an engine.

    Parameters
    ----------
    pool_label:
        The Pod label naming its pool (one of the policy contract's pools).
    port, path, scheme:
        Where its engine serves metrics: ``<scheme>://<status.podIP>:<port><path>``.
    max_num_seqs:
        Batch limit of each pool's engines (vLLM ``--max-num-seqs``; engines do not export it).
    """

    pool_label: str = Field(default="budgetpilot.io/pool", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    path: str = Field(default="/metrics", pattern=r"^/")
    scheme: Literal["http", "https"] = "http"
    max_num_seqs: dict[str, Annotated[int, Field(gt=0)]] = Field(min_length=1)


class DiscoverySettings(_Settings):
    """Where the engines are listed, with their lifecycle (replicas come and go).

    ``url`` answers JSON: a list of engines as the engine twin's ``GET /engines`` gives them
    (``name``, ``pool``, ``metrics_url``, ``max_num_seqs``, and ``state``:
    ``provisioning|serving|draining``, or ``pod``: the engine's Kubernetes Pod object; optional
    ``desired_replicas`` of its pool), or Kubernetes Pods (a ``PodList``, e.g. the pods API
    through ``kubectl proxy``: ``http://127.0.0.1:8001/api/v1/namespaces/llm/pods?
    labelSelector=budgetpilot.io/pool``), read with ``pods``.

    Parameters
    ----------
    url:
        The listing.
    refresh_s:
        Seconds between two listings (default: every scrape round).
    timeout_s:
        Deadline of one listing.
    pods:
        How Pods become engines (needed when the listing holds Pods).
    token_file:
        A bearer token sent with every listing, read anew each time (service-account tokens
        rotate): in a cluster, ``/var/run/secrets/kubernetes.io/serviceaccount/token`` with
        ``url: https://kubernetes.default.svc/api/v1/namespaces/NS/pods?labelSelector=...``.
        Only over https, or http to a loopback host.
    ca_file:
        CA bundle that verifies an https listing's certificate (in a cluster, the service
        account's ``ca.crt``); default: the system's.
    """

    url: URL
    refresh_s: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    pods: PodDiscoverySettings | None = None
    token_file: Path | None = None
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _credentials(self) -> DiscoverySettings:
        for name in ("token_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        parts = urlsplit(self.url)
        in_clear = parts.scheme != "https" and not is_loopback(parts.hostname or "")
        if self.token_file is not None and in_clear:
            raise ValueError(
                f"token_file: the token would travel in clear to {parts.hostname}; use https"
            )
        if self.ca_file is not None and parts.scheme != "https":
            raise ValueError("ca_file: the discovery url is not https")
        return self


class ScalingSettings(_Settings):
    """The Deployment of one pool and the bounds of its desired replicas (elastic policies).

    Parameters
    ----------
    deployment, namespace:
        The pool's Deployment (label of the desired-replicas gauge, name of the scale manifest).
    min_replicas, max_replicas:
        Bounds of the published desired replicas (``max_replicas`` at most the policy
        contract's cap for the pool).
    max_step:
        Most replicas added or removed in one interval.
    """

    deployment: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    max_step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}"
            )
        return self


class PrometheusSettings(_Settings):
    """A Prometheus server that already scrapes the engines (and the router).

    With ``read`` the sidecar queries it over the HTTP API instead of scraping the engines:
    one instant query per metric it needs per cycle, the engines and counter endpoints told
    apart by ``endpoint_label``, the counters summed over them by Prometheus. With
    ``bootstrap`` a sidecar that starts without a saved state reads the budgets' history over
    each SLO's period (or all Prometheus holds, reported as coverage), from either source.

    Parameters
    ----------
    url:
        The server, e.g. ``http://prometheus:9090``.
    endpoint_label:
        The label whose value names the engine (``engines[].name``, a discovered replica) or
        the counters endpoint (``counters[].name``) a series was scraped from.
    selector:
        Extra label matchers of every query, e.g. ``job=~"vllm|router"``.
    read:
        Read the metrics from Prometheus (else scrape the engines, and only bootstrap).
    bootstrap:
        Bootstrap the budgets from Prometheus's history when no state was restored.
    timeout_s:
        Deadline of one query (a slow server counts as down for the cycle).
    settle_s:
        How far behind the clock each round reads: Prometheus stamps a scrape when it starts
        and shows it when it ends, and a scrape still under way when it is read loses its
        increase (the next round starts from it).
    """

    url: URL
    endpoint_label: str = Field(default="pod", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    selector: str = ""
    read: bool = True
    bootstrap: bool = True
    timeout_s: float = Field(default=5.0, gt=0)
    settle_s: float = Field(default=2.0, ge=0)


class StateSettings(_Settings):
    """Where the burn-rate window state is persisted (restored at start)."""

    directory: Path | None = None
    save_every_s: float = Field(default=60.0, ge=0)


class SidecarConfig(_Settings):
    """Everything the sidecar needs besides the policy's manifest.

    Parameters
    ----------
    policy:
        The exported policy (``NAME.onnx``; its manifest ``NAME.json`` beside it).
    host, port:
        Where the HTTP endpoints listen. Binding beyond loopback requires a token.
    token_file:
        File holding the token of the actuation and kill-switch endpoints (else the
        ``BUDGETPILOT_SIDECAR_TOKEN`` environment variable).
    interval_s:
        Seconds between decisions.
    mapping:
        Metric names of the engines (request histograms, KV-cache usage, scheduler gauges and
        counters): ``vllm``, ``vllm-legacy``, ``sglang``, ``sglang-legacy``, a mapping file or
        overrides (``{base: sglang, preemptions: null}``), see
        :class:`slo.metrics.MetricMapping`.
    signals:
        Names of fleet-signal metrics besides the engines' (``arrivals``).
    engines:
        The engines scraped, each with its pool and ``max_num_seqs`` (a fixed list; or
        ``discovery``).
    fleet_capacity:
        Requests per second each role of the fleet serves saturated (``strong``: the fleet's
        nominal capacity; ``cheap`` when it has a cheap tier), which a policy of observation
        contract v3 observes load and queues relative to (``budgetpilot simulate --fleet F
        --capacity`` measures them for a fleet file; the engine twin reports its own). A v2
        policy's contract carries its fleet's.
    prometheus:
        A Prometheus server to read the metrics from (instead of scraping the engines) and to
        bootstrap the budgets from at start.
    discovery:
        Where the engines are listed with their lifecycle, refreshed as replicas come and go
        (an elastic policy needs it).
    scaling:
        Per pool, its Deployment and the bounds of its desired replicas (an elastic policy
        needs one per pool of its contract).
    counters:
        Endpoints exporting budgetpilot counters (router); needed by SLOs engines cannot feed.
    missing_data:
        Holding or falling back when an SLO has had no data for some cycles; the coverage
        alerts and budgets need.
    envelope:
        Holding or falling back while the fleet is outside the policy's envelope.
    initial_knobs:
        Knob values in force when the sidecar starts (others: neutral).
    kill_knobs:
        Knob values published when the kill switch is engaged (others: neutral).
    kill_switch_file:
        The kill switch is also engaged while this file exists.
    shadow:
        Decide and log, never actuate.
    audit_log:
        JSONL file receiving every decision.
    rbac:
        Kubernetes manifest files whose ``Role`` objects are what the pod's ServiceAccount is
        granted (in a cluster: the Roles the cluster was given); a config whose actuators or
        discovery need more is refused at start (see :mod:`policies.sidecar.rbac`).
    """

    policy: Path
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    token_file: Path | None = None
    interval_s: float = Field(default=30.0, gt=0)
    mapping: str | dict[str, Any] = "vllm"
    signals: SignalNames = SignalNames()
    engines: list[EngineEndpoint] = []
    fleet_capacity: dict[Literal["strong", "cheap"], Annotated[float, Field(gt=0)]] = {}
    discovery: DiscoverySettings | None = None
    prometheus: PrometheusSettings | None = None
    scaling: dict[str, ScalingSettings] = {}
    counters: list[CounterEndpoint] = []
    scrape: ScrapeSettings = ScrapeSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    fallback: FallbackSettings = FallbackSettings()
    missing_data: MissingDataSettings = MissingDataSettings()
    envelope: EnvelopeSettings = EnvelopeSettings()
    actuators: ActuatorSettings = ActuatorSettings()
    state: StateSettings = StateSettings()
    initial_knobs: dict[str, float] = {}
    kill_knobs: dict[str, float] = {}
    kill_switch_file: Path | None = None
    shadow: bool = False
    audit_log: Path | None = None
    rbac: list[Path] = []
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _engines_or_discovery(self) -> SidecarConfig:
        if bool(self.engines) == (self.discovery is not None):
            raise ValueError(
                "engines: give the engines (a fixed list) or a discovery source, exactly one"
            )
        return self

    @model_validator(mode="after")
    def _urls_unless_prometheus_reads(self) -> SidecarConfig:
        if self.prometheus is not None and self.prometheus.read:
            return self
        for section, endpoints in (("engines", self.engines), ("counters", self.counters)):
            for i, endpoint in enumerate(endpoints):
                if endpoint.url is None:
                    raise ValueError(
                        f"{section}[{i}].url: required, unless the metrics are read from "
                        "Prometheus (prometheus.read)"
                    )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> SidecarConfig:
        names = [e.name for e in self.engines] + [c.name for c in self.counters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique, repeated: {duplicates}")
        return self

    @field_validator("mapping")
    @classmethod
    def _loadable_mapping(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        load_mapping(value)  # a ValueError naming what is wrong
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> SidecarConfig:
        if not is_loopback(self.host) and self.token() is None:
            raise ValueError(
                f"host {self.host!r} is not a loopback address: the actuation and kill-switch "
                f"endpoints then need a token (token_file, or the {TOKEN_ENV} variable)"
            )
        return self

    def token(self) -> str | None:
        """The endpoints' token: ``token_file``'s content, else ``$BUDGETPILOT_SIDECAR_TOKEN``."""
        if self.token_file is not None:
            try:
                text = self.token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"token_file: cannot read {self.token_file}: {exc}") from None
            if not text:
                raise ValueError(f"token_file: {self.token_file} is empty")
            return text
        return os.environ.get(TOKEN_ENV) or None

    @property
    def stale_after_s(self) -> float:
        given = self.scrape.stale_after_s
        return 0.5 * self.interval_s if given is None else given

    @property
    def fallback_after_s(self) -> float:
        given = self.fallback.after_s
        return 4.0 * self.interval_s if given is None else given


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> SidecarConfig:
    """Read a YAML config and apply overrides (nested dicts merge, other values replace).

    Raises
    ------
    SidecarConfigError
        The file is unreadable or not YAML (with the line), or a field is invalid (named).
    """
    data: dict[str, Any] = {}
    source = "<overrides>"
    if path is not None:
        source = str(path)
        data = _read_yaml(Path(path))
    merged = _merge(data, dict(overrides or {}))
    try:
        return SidecarConfig.model_validate(merged)
    except ValidationError as exc:
        raise SidecarConfigError(f"{source}: invalid sidecar config:\n{describe(exc)}") from None


def twin_settings(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Config entries for an engine twin at ``url``: its engines (``GET /engines``; an elastic
    twin's, whose replicas come and go, as the discovery source), its router counters, its
    arrivals counter and its control API as actuator.

    Raises
    ------
    SidecarConfigError
        The twin cannot be reached or lists no engines.
    """
    base = url.rstrip("/")
    try:
        replicas = _get_json(f"{base}/engines", timeout_s)
        keys = {
            "name": "name",
            "url": "metrics_url",
            "pool": "pool",
            "max_num_seqs": "max_num_seqs",
            "tier": "tier",
        }
        engines = [{ours: r[theirs] for ours, theirs in keys.items()} for r in replicas]
        elastic = any("state" in r for r in replicas)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SidecarConfigError(f"twin {url}: cannot list its engines: {exc}") from None
    listing: dict[str, Any] = {"engines": engines}
    if elastic:
        listing = {"engines": [], "discovery": {"url": f"{base}/engines"}}
    return {
        **listing,
        "counters": [{"name": "router", "url": f"{base}/router/metrics"}],
        "signals": {"arrivals": "budgetpilot:arrivals_total"},
        "actuators": {"twin": {"url": base}},
    }


def load_twin_config(
    path: str | Path | None, overrides: Mapping[str, Any], url: str
) -> SidecarConfig:
    """A config governing the engine twin at ``url``: :func:`twin_settings` under ``overrides``
    (and the file at ``path``), plus what the policy needs that the config lacks: the twin's
    pools as ``scaling`` (:func:`twin_scaling`) and its ``fleet_capacity``
    (:func:`twin_capacity`).

    Raises
    ------
    SidecarConfigError
        The twin cannot be reached, or the config is invalid.
    """
    overrides = twin_settings(url) | dict(overrides)
    config = load_config(path, overrides)
    scaling = twin_scaling(config, url)
    if scaling:
        config = load_config(path, {**overrides, "scaling": scaling})
    capacity = twin_capacity(config, url)
    if capacity:
        config = config.model_copy(update={"fleet_capacity": capacity})
    return config


def twin_scaling(config: SidecarConfig, url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The ``scaling`` entries an elastic policy needs against the engine twin at ``url``, when
    ``config`` has none (else, or for a policy that does not scale: empty, the config wins).

    Per pool the twin runs (``GET /v1/replicas``) that the policy scales (a v2 contract's pools;
    under v3, every pool): deployment = the pool's name, ``min_replicas`` 1, ``max_replicas``
    the twin's cap (at most the v2 contract's, the twin refusing more), ``max_step`` 1.

    Raises
    ------
    SidecarConfigError
        The twin cannot be reached, or runs a fixed fleet (its pools do not scale).
    policies.runtime.PolicyFileError
        The policy's manifest is unusable.
    """
    from policies.runtime import read_manifest

    contract = read_manifest(config.policy).observation_contract
    if config.scaling or not contract.elastic:
        return {}
    base = url.rstrip("/")
    try:
        twin_caps = _get_json(f"{base}/v1/replicas", timeout_s)["max_replicas"]
    except urllib.error.HTTPError as exc:
        fixed = exc.code == HTTPStatus.CONFLICT
        why = "runs a fixed fleet (its pools do not scale)" if fixed else f"HTTP {exc.code}"
        raise SidecarConfigError(
            f"twin {url}: {why}; the policy scales pools ({contract.version}: "
            f"{list(contract.pools)}): run the twin on an elastic scenario or with --elastic, or "
            "the sidecar with a config"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SidecarConfigError(f"twin {url}: cannot read its replicas: {exc}") from None
    if contract.by_role:
        caps = dict(twin_caps)
    else:
        caps = dict(zip(contract.pools, contract.max_replicas, strict=True))
    return {
        pool: {
            "deployment": pool,
            "min_replicas": 1,
            "max_replicas": min(cap, twin_caps[pool]),
            "max_step": 1,
        }
        for pool, cap in caps.items()
        if pool in twin_caps
    }


def twin_capacity(config: SidecarConfig, url: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The ``fleet_capacity`` a policy of observation contract v3 needs against the engine twin
    at ``url`` (``GET /fleet``), when ``config`` has none (else, or for a v2 policy: empty).
    The twin measures its cheap tier's capacity when first asked (seconds; then cached), hence
    the long default deadline.

    Raises
    ------
    SidecarConfigError
        The twin cannot be reached.
    policies.runtime.PolicyFileError
        The policy's manifest is unusable.
    """
    from policies.runtime import read_manifest

    if config.fleet_capacity or not read_manifest(config.policy).observation_contract.by_role:
        return {}
    try:
        capacity = _get_json(f"{url.rstrip('/')}/fleet", timeout_s)["capacity_rps"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SidecarConfigError(f"twin {url}: cannot read its capacity: {exc}") from None
    return {role: rps for role, rps in capacity.items() if rps > 0}


def _get_json(url: str, timeout_s: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = read_text(path)
    except OSError as exc:
        raise SidecarConfigError(f"{path}: cannot read the config: {exc.strerror}") from None
    except TextFileError as exc:
        raise SidecarConfigError(str(exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SidecarConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SidecarConfigError(f"{path}: the config must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def describe(error: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for item in error.errors():
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
        where = where.lstrip(".") or "config"
        message = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] == "missing" else f" (got {item.get('input')!r:.60})"
        lines.append(f"  {where}: {message}{got}")
    return "\n".join(lines)
