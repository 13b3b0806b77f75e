"""Property-based fuzzing of the sidecar's inputs (hypothesis).

Metrics pages are vLLM pages, rendered and realistic (``tests/fixtures/metrics``), damaged at
random: values replaced by NaN (in every spelling C runtimes print), Inf, negatives or words,
lines dropped, duplicated, truncated or replaced by arbitrary text, pages from the past (counter
resets), engines down or timing out, clocks that jump. Whatever arrives, a decision is
made, every knob and observation feature stays within the contracts, the decision serialises to
JSON, and each problem is counted in ``/metrics``. Guardrails and configs are fuzzed too.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.contract import ActionContract
from eval.perf_sidecar import engine_pages, fleet_contracts, linear_policy, router_pages
from policies.sidecar.config import GuardrailSettings, SidecarConfigError, load_config
from policies.sidecar.guardrails import Guardrails
from policies.sidecar.loop import Sidecar
from policies.sidecar.parse import PageError, SeriesSelection, read_page
from policies.sidecar.scrape import ERROR_KINDS, ScrapeResult
from tests.metric_pages import fixture, grown

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")

ENGINES = {"strong-0": "strong", "strong-1": "strong", "cheap-0": "cheap"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Contracts, a policy and pages (engine and router) of growing counters: rendered ones
    and the realistic vLLM fixtures."""
    contracts = fleet_contracts()
    policy = linear_policy(tmp_path_factory.mktemp("zoo") / "linear.onnx", *contracts)
    rng = np.random.default_rng(1)
    realistic = [
        fixture(name, model="strong") for name in ("vllm-v1.txt", "vllm-v1-openmetrics.txt")
    ]
    pages = {
        "engine": engine_pages(contracts[2], 6, rng, 150)
        + [grown(page, factor) for page in realistic for factor in (1.0, 1.5, 2.0)],
        "router": router_pages(contracts[2], 6, rng, 450),
    }
    return policy, pages


def new_sidecar(policy) -> Sidecar:
    # The URLs are never fetched: rounds are fed through Sidecar.ingest (all but the socket).
    engines = [
        {"name": n, "url": f"http://127.0.0.1:9/{n}", "pool": p, "max_num_seqs": 64}
        for n, p in ENGINES.items()
    ]
    config = {
        "policy": str(policy),
        "engines": engines,
        "counters": [{"name": "router", "url": "http://127.0.0.1:9/router"}],
        "fallback": {"after_s": 60},
    }
    return Sidecar(load_config(None, config))


BAD_VALUES = (
    "NaN",
    "-nan(ind)",
    "nan(snan)",
    "+Inf",
    "-Inf",
    "-1",
    "1e308",
    "abc",
    "",
    "0x10",
    "1_0",
)


@st.composite
def damaged(draw, page: str) -> str:
    """A page with random damage."""
    lines = page.splitlines()
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(("value", "drop", "duplicate", "text", "truncate")))
        if action == "value":
            lines[i] = lines[i].rsplit(" ", 1)[0] + " " + draw(st.sampled_from(BAD_VALUES))
        elif action == "drop":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "text":
            lines[i] = draw(st.text(max_size=40))
        else:
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


@st.composite
def rounds(draw, pages: dict[str, list[str]]) -> list[tuple[float, dict[str, tuple]]]:
    """Scrape rounds: per endpoint an error or a (possibly damaged, possibly old) page."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        gap = draw(st.sampled_from((30.0, 30.0, 60.0, 1.0, 3600.0, -5.0)))
        endpoints = {}
        for name in (*ENGINES, "router"):
            kind = "router" if name == "router" else "engine"
            if draw(st.integers(0, 5)) == 0:
                endpoints[name] = ("error", draw(st.sampled_from(ERROR_KINDS)))
                continue
            page = pages[kind][draw(st.integers(0, len(pages[kind]) - 1))]
            endpoints[name] = ("page", draw(damaged(page)) if draw(st.booleans()) else page)
        out.append((gap, endpoints))
    return out


def scrape_result(sidecar: Sidecar, name: str, entry: tuple) -> ScrapeResult:
    kind, payload = entry
    if kind == "error":
        return ScrapeResult(name, error=payload, detail="injected")
    try:
        return ScrapeResult(name, sidecar.observer.parse(name, payload))
    except PageError as exc:  # the only exception parsing may raise
        return ScrapeResult(name, error="parse", detail=str(exc))


def counted_problems(sidecar: Sidecar) -> float:
    text = sidecar.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("budgetpilot_sidecar_scrape_errors_total{")
    )


@FUZZ
@given(data=st.data())
def test_any_metrics_input_gives_a_bounded_decision(world, data):
    policy, pages = world
    sidecar = new_sidecar(policy)
    low, high = sidecar.observation_contract.bounds()
    now, reported = 1_700_000_010.0, 0
    for gap, endpoints in data.draw(rounds(pages)):
        now += gap
        results = {n: scrape_result(sidecar, n, e) for n, e in endpoints.items()}
        report = sidecar.ingest(now, results)
        decision = sidecar.publish(sidecar.decide(now))
        reported += len(report.problems)
        vector = decision.observation.vector
        assert np.all(np.isfinite(vector)) and np.all((vector >= low) & (vector <= high))
        for knob in sidecar.action_contract.knobs:
            value = decision.knobs[knob.name]
            assert math.isfinite(value) and knob.low <= value <= knob.high
        json.dumps(decision.to_dict(sidecar, vector=True), allow_nan=False)
        if any(r.error for r in results.values()):
            assert report.problems
        assert counted_problems(sidecar) == reported
    sidecar.close()


SELECTION = SeriesSelection.of(
    [
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:e2e_request_latency_seconds_count",
    ],
    {"vllm:time_to_first_token_seconds_bucket": [1.0]},
)


@FUZZ
@given(text=st.text(max_size=400))
def test_reading_any_text_returns_samples_or_a_page_error(text):
    try:
        samples = read_page(text, SELECTION)
    except PageError:
        return
    for name, labels, value in samples:
        assert isinstance(name, str) and isinstance(labels, dict) and isinstance(value, float)


CONTRACT = ActionContract()
finite_unit = st.floats(-1.0, 1.0, allow_nan=False)


@FUZZ
@given(
    max_step=st.floats(0.01, 1.0),
    hysteresis=st.floats(0.0, 0.49),
    current=st.lists(finite_unit, min_size=7, max_size=7),
    proposed=st.lists(finite_unit, min_size=7, max_size=7),
)
def test_guardrails_respect_range_and_step(max_step, hysteresis, current, proposed):
    guardrails = Guardrails(CONTRACT, GuardrailSettings(max_step=max_step, hysteresis=hysteresis))
    in_force = CONTRACT.decode(current)
    values, _ = guardrails.apply(guardrails.decode(np.array(proposed)), in_force)
    for knob in CONTRACT.knobs:
        value, before = values[knob.name], in_force[knob.name]
        assert knob.low <= value <= knob.high
        if knob.integer:
            assert value == round(value)
            assert abs(value - before) <= max(1.0, max_step * (knob.high - knob.low)) + 0.5
        else:
            assert abs(knob.to_unit(value) - knob.to_unit(before)) <= 2 * max_step + 1e-9


config_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
config_keys = st.sampled_from(
    ("policy", "engines", "counters", "host", "port", "interval_s", "mapping", "signals", "scrape",
     "guardrails", "fallback", "actuators", "state", "shadow", "audit_log", "unknown")
)  # fmt: skip


@FUZZ
@given(data=st.dictionaries(config_keys, config_values, max_size=8))
def test_any_config_loads_or_fails_with_a_config_error(data):
    try:
        load_config(None, data)
    except SidecarConfigError as exc:
        assert "invalid sidecar config" in str(exc)
