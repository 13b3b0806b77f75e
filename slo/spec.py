"""SLO specifications: Sloth's ``prometheus/v1`` format plus LLM-serving SLIs.

A spec file is a valid Sloth file (``version``, ``service``, ``labels``, ``slos[]`` with ``name``,
``objective``, ``description``, ``sli``, ``alerting``). Sloth's PromQL SLIs (``sli.events``,
``sli.raw``) are parsed and kept for rule generation. Our extension, ignored by Sloth, declares
LLM-serving SLIs without PromQL (``sli.llm: {kind: ttft, threshold_s: 1.0}``), per-SLO ``period``,
``selectors`` and ``dimension``, and engine settings under a top-level ``budgetpilot:`` key.

Objectives follow Sloth's percent convention when they are >= 1 (``99.9`` means 0.999) and are
ratios when they lie in (0, 1); both are stored as ratios. Latency thresholds that the metrics feed
must reproduce from engine histograms (``ttft``, ``e2e``, ``itl``, ``streaming``) have to lie on
the vLLM bucket boundaries of :mod:`slo.events`; other values are refused, not approximated.

Every problem is raised as one :class:`SpecError` naming the SLO, the field and the YAML line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from slo.durations import format_duration, parse_duration
from slo.events import E2E_BUCKETS_S, ITL_BUCKETS_S, TTFT_BUCKETS_S
from slo.files import TextFileError, read_text

#: The period the SRE Workbook's alert windows are defined for; other periods scale them.
REFERENCE_PERIOD_S = 30 * 86400.0
DEFAULT_SPEC_PATH = Path(__file__).resolve().parent / "specs" / "default.yaml"
SLOTH_VERSION = "prometheus/v1"


class SpecError(ValueError):
    """A spec is malformed: the message names the source, line, SLO and field when known.

    Attributes
    ----------
    slo, field, line:
        The SLO name, the dotted field path and the 1-based YAML line of the first problem.
    """

    def __init__(
        self,
        message: str,
        *,
        slo: str | None = None,
        field: str | None = None,
        line: int | None = None,
        source: str | None = None,
        located: bool = False,
    ) -> None:
        self.slo, self.field, self.line, self.source = slo, field, line, source
        if not located:
            message = _locate(message, source=source, line=line, slo=slo, field=field)
        super().__init__(message)


def _locate(message: str, *, source=None, line=None, slo=None, field=None) -> str:
    where = ":".join(str(p) for p in (source, line) if p is not None)
    parts = [where] if where else []
    if slo is not None:
        parts.append(f"SLO {slo!r}")
    if field:
        parts.append(f"field {field!r}")
    parts.append(message)
    return ": ".join(parts)


# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------

Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _optional_duration(value: Any) -> float | None:
    return None if value is None else parse_duration(value)


OptionalSeconds = Annotated[float | None, BeforeValidator(_optional_duration)]


def _as_str_dict(value: Any) -> Any:
    """Sloth labels are strings; YAML turns ``tier: 2`` into an int, so stringify values."""
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    return value


def _as_tuple(value: Any) -> Any:
    """Let a selector be written as a scalar (``tier: 0``) or a list (``tier: [0, 1]``)."""
    if value is None or isinstance(value, list | tuple):
        return value
    return (value,)


Labels = Annotated[dict[str, str], BeforeValidator(_as_str_dict)]


def snap_to_boundary(value: float, buckets: Sequence[float], metric: str) -> float:
    """Return the bucket boundary equal to ``value`` or raise ValueError naming the neighbours."""
    for bound in buckets:
        if math.isclose(value, bound, rel_tol=1e-9, abs_tol=0.0):
            return bound
    below = max((b for b in buckets if b < value), default=None)
    above = min((b for b in buckets if b > value), default=None)
    raise ValueError(
        f"threshold {value} is not a bucket boundary of {metric} (nearest: {below}, {above}); "
        "thresholds must lie on boundaries so that engine metrics give the exact SLI"
    )


def bucket_validator(field: str, buckets: Sequence[float], metric: str) -> Any:
    """A pydantic validator that snaps ``field`` to a bucket boundary of histogram ``metric``."""

    def snap(cls: type, value: float) -> float:
        return snap_to_boundary(value, buckets, metric)

    return field_validator(field)(snap)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# LLM-serving SLIs
# --------------------------------------------------------------------------------------------


class TTFTSLI(_Model):
    """Good: the first token arrived within ``threshold_s`` (requests that produced one)."""

    kind: Literal["ttft"]
    threshold_s: float

    _on_bucket = bucket_validator("threshold_s", TTFT_BUCKETS_S, "vllm:time_to_first_token_seconds")


class ITLSLI(_Model):
    """Good: an inter-token gap within ``threshold_s`` (``per: token``), or a request whose
    largest gap is within it (``per: request``)."""

    kind: Literal["itl"]
    threshold_s: float
    per: Literal["token", "request"] = "token"

    _on_bucket = bucket_validator("threshold_s", ITL_BUCKETS_S, "vllm:inter_token_latency_seconds")


class E2ESLI(_Model):
    """Good: the request finished within ``threshold_s`` of its arrival."""

    kind: Literal["e2e"]
    threshold_s: float

    _on_bucket = bucket_validator("threshold_s", E2E_BUCKETS_S, "vllm:e2e_request_latency_seconds")


class NormalizedLatencySLI(_Model):
    """Good: end-to-end latency per output token within ``threshold_s`` (seconds per token)."""

    kind: Literal["normalized_latency"]
    threshold_s: float = Field(gt=0)


OutcomeName = Literal["rejected", "aborted", "failed"]


class AvailabilitySLI(_Model):
    """Good: served. Bad: an outcome listed in ``bad_outcomes``; other outcomes are not counted."""

    kind: Literal["availability"]
    bad_outcomes: tuple[OutcomeName, ...] = Field(
        default=("rejected", "aborted", "failed"), min_length=1
    )


class QualitySLI(_Model):
    """Good: served by the intended tier (``mode: tier``) or with ``quality_loss <= max_loss``."""

    kind: Literal["quality"]
    mode: Literal["tier", "loss"] = "tier"
    max_loss: float = Field(default=0.0, ge=0.0, le=1.0)


class ContextSLI(_Model):
    """Good: a served request whose context was kept: not truncated (``truncation``), preempted
    at most ``max_preemptions`` times (None: not checked), not cut by the length limit."""

    kind: Literal["context"]
    truncation: bool = True
    max_preemptions: int | None = Field(default=1, ge=0)
    length_cut: bool = True

    @model_validator(mode="after")
    def _checks_something(self) -> ContextSLI:
        if not (self.truncation or self.length_cut or self.max_preemptions is not None):
            raise ValueError("a context SLI must check truncation, preemptions or length cuts")
        return self


class StreamingSLI(_Model):
    """Good: after the first token, tokens arrived no slower than ``pace_s`` seconds per token on
    average, i.e. ``(e2e - ttft) / (output_tokens - 1) <= pace_s`` (Andes-style reading pace)."""

    kind: Literal["streaming"]
    pace_s: float

    _on_bucket = bucket_validator(
        "pace_s", ITL_BUCKETS_S, "vllm:request_time_per_output_token_seconds"
    )


#: Every SLI that judges requests one by one (a fairness SLI judges slices of one of them).
_RequestSLIs = (
    TTFTSLI
    | ITLSLI
    | E2ESLI
    | NormalizedLatencySLI
    | AvailabilitySLI
    | QualitySLI
    | ContextSLI
    | StreamingSLI
)
RequestSLI = Annotated[_RequestSLIs, Field(discriminator="kind")]


class FairnessSLI(_Model):
    """Fairness between tenants, budgeted in time slices.

    Each ``slice`` is judged from the tenants' attainment of the ``base`` SLI in it (good /
    total, tenants with fewer than ``min_requests`` requests left out, slices with fewer than
    two such tenants not counted). ``method: gap``: the slice is bad when some tenant's attainment
    is more than ``max_gap`` below the best tenant's. ``method: jain``: bad when Jain's index
    ``(sum a)^2 / (n sum a^2)`` is below ``min_jain``. The error ratio over a window is the
    fraction of bad slices among the counted ones.
    """

    kind: Literal["fairness"]
    base: RequestSLI
    method: Literal["gap", "jain"] = "gap"
    max_gap: float = Field(default=0.05, gt=0.0, lt=1.0)
    min_jain: float = Field(default=0.95, gt=0.0, le=1.0)
    slice: Seconds = 300.0
    min_requests: int = Field(default=10, ge=1)
    max_tenants: int = Field(default=64, ge=2, le=4096)


LLMSLI = Annotated[_RequestSLIs | FairnessSLI, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------
# Sloth structures
# --------------------------------------------------------------------------------------------


class SlothEvents(_Model):
    """Sloth's ratio SLI: PromQL for the bad and the total events (with ``{{.window}}``)."""

    error_query: str = Field(validation_alias=AliasChoices("error_query", "errorQuery"))
    total_query: str = Field(validation_alias=AliasChoices("total_query", "totalQuery"))


class SlothRaw(_Model):
    """Sloth's raw SLI: PromQL returning the error ratio directly."""

    error_ratio_query: str = Field(
        validation_alias=AliasChoices("error_ratio_query", "errorRatioQuery")
    )


class SLISpec(_Model):
    """An SLO's indicator: our ``llm`` SLI and/or Sloth's ``events``, ``raw`` or ``plugin``."""

    llm: LLMSLI | None = None
    events: SlothEvents | None = None
    raw: SlothRaw | None = None
    plugin: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_promql_form(self) -> SLISpec:
        promql = [k for k in ("events", "raw", "plugin") if getattr(self, k) is not None]
        if self.llm is None and not promql:
            raise ValueError("needs one of 'llm', 'events', 'raw' or 'plugin'")
        if len(promql) > 1:
            raise ValueError(f"Sloth allows one SLI type, got {' and '.join(promql)}")
        return self


class AlertSpec(_Model):
    """One of Sloth's two alerts (``page_alert`` or ``ticket_alert``)."""

    disable: bool = False
    labels: Labels = {}
    annotations: Labels = {}
    for_: OptionalSeconds = Field(default=None, alias="for")


class AlertingSpec(_Model):
    """Sloth's ``alerting`` block."""

    name: str | None = None
    labels: Labels = {}
    annotations: Labels = {}
    page_alert: AlertSpec = AlertSpec()
    ticket_alert: AlertSpec = AlertSpec()


class Selectors(_Model):
    """Which requests an SLO counts. ``tier`` is the serving tier (rejected requests have none:
    select availability by ``intended_tier``); ``model`` names tiers through ``budgetpilot.models``.
    """

    tenant: Annotated[tuple[int, ...] | None, BeforeValidator(_as_tuple)] = None
    tier: Annotated[tuple[int, ...] | None, BeforeValidator(_as_tuple)] = None
    intended_tier: Annotated[tuple[int, ...] | None, BeforeValidator(_as_tuple)] = None
    model: Annotated[tuple[str, ...] | None, BeforeValidator(_as_tuple)] = None

    @property
    def is_empty(self) -> bool:
        """True when the SLO counts every request."""
        return all(v is None for v in (self.tenant, self.tier, self.intended_tier, self.model))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SLOSpec(_Model):
    """One SLO (a Sloth ``slos[]`` item plus our ``period``, ``selectors`` and ``dimension``)."""

    name: str
    objective: float
    description: str = ""
    labels: Labels = {}
    sli: SLISpec
    alerting: AlertingSpec | None = None
    period: OptionalSeconds = None
    selectors: Selectors = Selectors()
    dimension: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name {value!r} must match {_NAME.pattern}")
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _ratio(cls, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"objective must be a number, got {value!r}")
        if 0.0 < value < 1.0:
            return float(value)
        if 1.0 <= value < 100.0:
            return float(value) / 100.0  # Sloth's percent convention
        raise ValueError(
            f"objective {value} is outside (0, 1) (or (0, 100) in Sloth's percent convention)"
        )

    @property
    def dimension_name(self) -> str:
        """The budget dimension: ``dimension`` if given, else the SLI kind (``promql`` for
        Sloth-only SLOs)."""
        if self.dimension:
            return self.dimension
        return self.sli.llm.kind if self.sli.llm is not None else "promql"


class AlertWindow(_Model):
    """A multi-window burn-rate condition: both windows must burn faster than ``burn_rate``.
    Windows are given for a 30-day period and scaled to the SLO's period."""

    long: Seconds
    short: Seconds
    burn_rate: float = Field(gt=0)

    @model_validator(mode="after")
    def _short_below_long(self) -> AlertWindow:
        if not self.short < self.long:
            raise ValueError(
                f"windows not increasing: short window {format_duration(self.short)} must be "
                f"shorter than long window {format_duration(self.long)}"
            )
        return self


_SRE_PAGE = (
    AlertWindow(long=3600, short=300, burn_rate=14.4),
    AlertWindow(long=6 * 3600, short=1800, burn_rate=6.0),
)
_SRE_TICKET = (
    AlertWindow(long=86400, short=2 * 3600, burn_rate=3.0),
    AlertWindow(long=3 * 86400, short=6 * 3600, burn_rate=1.0),
)


class AlertWindows(_Model):
    """Page and ticket conditions (defaults: the SRE Workbook's multi-window multi-burn-rate)."""

    page: tuple[AlertWindow, ...] = _SRE_PAGE
    ticket: tuple[AlertWindow, ...] = _SRE_TICKET


class PolicySpec(_Model):
    """Budget-policy thresholds on the remaining budget: ``exhausted`` at or below
    ``exhausted_at``, ``at_risk`` below ``at_risk_below``, ``ok`` otherwise."""

    at_risk_below: float = 0.25
    exhausted_at: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> PolicySpec:
        if not self.exhausted_at < self.at_risk_below:
            raise ValueError("exhausted_at must be below at_risk_below")
        return self


DEFAULT_WINDOWS = (300.0, 1800.0, 3600.0, 7200.0, 6 * 3600.0, 86400.0, 3 * 86400.0)


class EngineSpec(_Model):
    """Engine settings (top-level ``budgetpilot:`` key; Sloth ignores it).

    ``windows`` are the burn-rate windows for a 30-day period (scaled for other periods),
    ``resolution`` the time bucket of the burn-rate rings, ``period_resolution`` the coarser
    bucket of the period ring, ``models`` maps model names to tier indices.
    """

    period: Seconds = REFERENCE_PERIOD_S
    resolution: Seconds = 30.0
    period_resolution: Seconds = 3600.0
    windows: tuple[Seconds, ...] = DEFAULT_WINDOWS
    alert_windows: AlertWindows = AlertWindows()
    policy: PolicySpec = PolicySpec()
    models: dict[str, int] = {}

    @field_validator("windows")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("at least one window is needed")
        for a, b in zip(value, value[1:], strict=False):
            if not a < b:
                raise ValueError(
                    f"windows not increasing: {format_duration(a)} then {format_duration(b)}"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        ratio = self.period_resolution / self.resolution
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError("period_resolution must be a multiple of resolution")
        known = {round(w) for w in self.windows}
        for severity in ("page", "ticket"):
            for cond in getattr(self.alert_windows, severity):
                for w in (cond.long, cond.short):
                    if round(w) not in known:
                        raise ValueError(
                            f"alert_windows.{severity}: window {format_duration(w)} is not one "
                            "of the burn-rate windows"
                        )
        if len(set(self.models.values())) != len(self.models):
            raise ValueError("models: two model names map to the same tier")
        return self


class ServiceSpec(_Model):
    """A whole spec file: Sloth's service with its SLOs, plus our engine settings."""

    version: Literal["prometheus/v1"] = SLOTH_VERSION
    service: str
    labels: Labels = {}
    slos: tuple[SLOSpec, ...]
    budgetpilot: EngineSpec = EngineSpec()
    slo_plugins: dict[str, Any] | None = None

    @field_validator("slos", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and not value:
            raise ValueError("a spec needs at least one SLO")
        return value

    @property
    def engine_slos(self) -> tuple[SLOSpec, ...]:
        """The SLOs with an ``llm`` SLI: the ones the error-budget engine computes."""
        return tuple(s for s in self.slos if s.sli.llm is not None)

    def period_of(self, slo: SLOSpec) -> float:
        """The SLO's period in seconds (its own or the engine default)."""
        return slo.period if slo.period is not None else self.budgetpilot.period

    def windows_for(self, slo: SLOSpec) -> tuple[float, ...]:
        """The burn-rate windows of ``slo`` in seconds: the reference (30-day) windows scaled to
        its period and rounded to whole ``resolution`` buckets (at least one)."""
        scale = self.period_of(slo) / REFERENCE_PERIOD_S
        res = self.budgetpilot.resolution
        return tuple(max(1, round(w * scale / res)) * res for w in self.budgetpilot.windows)

    def tier_of_model(self, name: str) -> int:
        """The tier index serving model ``name``."""
        return self.budgetpilot.models[name]

    def model_of_tier(self, tier: int) -> str:
        """The model name of tier ``tier`` (``tier<k>`` when ``models`` does not name it)."""
        for name, index in self.budgetpilot.models.items():
            if index == tier:
                return name
        return f"tier{tier}"


def _check_service(spec: ServiceSpec) -> list[tuple[int, str, str]]:
    """Cross-field checks pydantic cannot express per field: (slo index, field, message)."""
    problems = []
    seen: set[str] = set()
    engine = spec.budgetpilot
    for i, slo in enumerate(spec.slos):
        if slo.name in seen:
            problems.append((i, "name", f"duplicate SLO name {slo.name!r}"))
        seen.add(slo.name)
        for model in slo.selectors.model or ():
            if model not in engine.models:
                problems.append(
                    (
                        i,
                        "selectors.model",
                        f"unknown model {model!r} (add it to budgetpilot.models)",
                    )
                )
        period = spec.period_of(slo)
        if period < engine.period_resolution:
            problems.append((i, "period", "period is shorter than budgetpilot.period_resolution"))
        llm = slo.sli.llm
        if isinstance(llm, FairnessSLI):
            slices = llm.slice / engine.resolution
            if abs(slices - round(slices)) > 1e-9:
                problems.append((i, "sli.llm.slice", "slice must be a multiple of resolution"))
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_spec(source: str | Path | Mapping[str, Any] | ServiceSpec) -> ServiceSpec:
    """Load a spec from a file path, a parsed mapping or a spec (returned unchanged).

    Sloth ``prometheus/v1`` files and OpenSLO ``openslo/v1`` multi-document files are both
    accepted. Raises :class:`SpecError` on any problem.
    """
    if isinstance(source, ServiceSpec):
        return source
    if isinstance(source, Mapping):
        return validate_spec(source, LineIndex.empty(), source_name="<mapping>")
    if not isinstance(source, str | os.PathLike):
        kind = type(source).__name__
        raise TypeError(f"load_spec expects a file path, a mapping or a ServiceSpec, got {kind}")
    path = Path(source)
    try:
        text = read_text(path)
    except OSError as err:
        raise SpecError(f"cannot read spec: {err.strerror}", source=str(path)) from err
    except TextFileError as err:
        raise SpecError(str(err)) from None
    return parse_spec(text, source_name=str(path))


def default_spec() -> ServiceSpec:
    """The project's default LLM-serving spec (``slo/specs/default.yaml``)."""
    return load_spec(DEFAULT_SPEC_PATH)


def parse_spec(text: str, source_name: str = "<string>") -> ServiceSpec:
    """Parse YAML text holding a Sloth or an OpenSLO spec. Raises :class:`SpecError`."""
    documents, lines = read_yaml_documents(text, source_name)
    if any(
        isinstance(d, Mapping) and str(d.get("apiVersion", "")).startswith("openslo/")
        for d in documents
    ):
        from slo.openslo import openslo_to_sloth  # OpenSLO import is a translation to our model

        return openslo_to_sloth(documents, lines, source_name)
    if len(documents) != 1 or not isinstance(documents[0], Mapping):
        raise SpecError(
            "expected one YAML mapping (a Sloth prometheus/v1 spec)", source=source_name
        )
    return validate_spec(documents[0], lines.document(0), source_name=source_name)


class LineIndex:
    """Line numbers of YAML nodes by path (document index, then keys and list indices)."""

    def __init__(self, lines: dict[tuple, int]) -> None:
        self._lines = lines

    @classmethod
    def empty(cls) -> LineIndex:
        """An index without line information (specs given as mappings)."""
        return cls({})

    def document(self, index: int) -> LineIndex:
        """The index of one document, with paths relative to it."""
        return LineIndex({p[1:]: n for p, n in self._lines.items() if p and p[0] == index})

    def line(self, path: Sequence[Any]) -> int | None:
        """The line of the deepest known node on ``path``."""
        path = tuple(path)
        while path not in self._lines and path:
            path = path[:-1]
        return self._lines.get(path)


def read_yaml_documents(text: str, source_name: str) -> tuple[list[Any], LineIndex]:
    """Parse all YAML documents of ``text`` and index their nodes' line numbers."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(
            f"malformed YAML: {problem}",
            source=source_name,
            line=mark.line + 1 if mark is not None else None,
        ) from err
    lines: dict[tuple, int] = {}
    for i, node in enumerate(nodes):
        _index_node(node, (i,), lines)
    documents = [d for d in documents if d is not None]
    return documents, LineIndex(lines)


def _index_node(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            _index_node(value, child, lines)
            lines[child] = key.start_mark.line + 1  # a key's line, not its block's first line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_node(item, path + (i,), lines)


def validate_spec(
    data: Mapping[str, Any],
    lines: LineIndex,
    source_name: str,
    origins: Sequence[tuple[LineIndex, tuple]] | None = None,
) -> ServiceSpec:
    """Validate parsed YAML into a :class:`ServiceSpec`, turning every problem into one
    :class:`SpecError` whose message lists all problems with SLO, field and line.

    ``origins`` (used by the OpenSLO import) gives, per SLO, the line index and path where it was
    declared, so that errors point to the file the user wrote.
    """
    try:
        spec = ServiceSpec.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e["loc"], e, data) for e in err.errors()]
    else:
        problems = [(("slos", i, *field.split(".")), msg) for i, field, msg in _check_service(spec)]
        if not problems:
            return spec
        problems = [(path, {"msg": msg, "type": "check"}) for path, msg in problems]
        problems = [_describe(path, e, data) for path, e in problems]
    errors = []
    for path, slo, field, message in problems:
        index, rel = lines, path
        if origins is not None and slo is not None and len(path) > 1:
            index, prefix = origins[path[1]]
            rel = prefix
        errors.append(
            SpecError(message, slo=slo, field=field, line=index.line(rel), source=source_name)
        )
    first = errors[0]
    if len(errors) == 1:
        raise first
    summary = "\n".join(str(e) for e in errors)
    raise SpecError(
        f"{len(errors)} problems in {source_name}:\n{summary}",
        slo=first.slo,
        field=first.field,
        line=first.line,
        source=source_name,
        located=True,
    )


def _describe(loc: Sequence[Any], error: Mapping[str, Any], data: Any) -> tuple:
    """Map a pydantic error location onto the data: (path, slo name, field, message)."""
    path: list[Any] = []
    shown: list[str] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_list or (isinstance(node, Mapping) and part in node):
            node = node[part]
        elif isinstance(node, Mapping) and part == node.get("kind"):
            continue  # pydantic puts the union tag in the location: not a field
        elif isinstance(part, str) and ("[" in part or "(" in part):
            continue  # a union member's type name, not a field
        else:
            node = None
        path.append(part)
        shown.append(str(part))
    slo = None
    if len(path) >= 2 and path[0] == "slos" and isinstance(path[1], int):
        slos = data.get("slos") if isinstance(data, Mapping) else None
        item = slos[path[1]] if isinstance(slos, list) and path[1] < len(slos) else None
        slo = str(item.get("name", f"#{path[1]}")) if isinstance(item, Mapping) else f"#{path[1]}"
        shown = shown[2:]
    return tuple(path), slo, ".".join(shown) or None, _message(error)


def _message(error: Mapping[str, Any]) -> str:
    kind, msg = error.get("type"), str(error.get("msg", ""))
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"unknown SLI kind {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


def describe_sli(slo: SLOSpec) -> str:
    """A one-line human description of an SLO's indicator (for ``budgetpilot slo check``)."""
    sli = slo.sli
    if sli.llm is None:
        return "PromQL events" if sli.events else "PromQL raw ratio" if sli.raw else "Sloth plugin"
    return _describe_llm(sli.llm)


def _describe_llm(sli: Any) -> str:
    if isinstance(sli, FairnessSLI):
        rule = f"gap <= {sli.max_gap}" if sli.method == "gap" else f"Jain >= {sli.min_jain}"
        return f"fairness {rule} of ({_describe_llm(sli.base)}) per {format_duration(sli.slice)}"
    if isinstance(sli, ITLSLI):
        return f"itl <= {sli.threshold_s} s per {sli.per}"
    if isinstance(sli, TTFTSLI | E2ESLI):
        return f"{sli.kind} <= {sli.threshold_s} s"
    if isinstance(sli, NormalizedLatencySLI):
        return f"e2e per output token <= {sli.threshold_s} s"
    if isinstance(sli, StreamingSLI):
        return f"stream pace <= {sli.pace_s} s/token"
    if isinstance(sli, AvailabilitySLI):
        return f"served (bad: {', '.join(sli.bad_outcomes)})"
    if isinstance(sli, QualitySLI):
        return (
            "served by intended tier" if sli.mode == "tier" else f"quality loss <= {sli.max_loss}"
        )
    checks = [
        name for name, on in (("truncation", sli.truncation), ("length cut", sli.length_cut)) if on
    ]
    if sli.max_preemptions is not None:
        checks.append(f"preemptions > {sli.max_preemptions}")
    return f"context kept (bad: {', '.join(checks)})"
