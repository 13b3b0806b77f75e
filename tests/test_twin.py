"""The engine twin over real HTTP on loopback: engine pages, control API, failures, CLI."""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from envs.contract import NEUTRAL_KNOB_VALUES
from envs.fleet_env import sim_knobs
from envs.scenarios import CHEAP_CAPABILITY
from envs.twin import EngineTwin
from envs.twin_cli import parse_listen
from slo.engine import BudgetEngine
from slo.events import Outcome
from slo.metrics import MetricsFeed
from tests.conftest import finish_process


def http(url: str, body: bytes | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, or of a POST when ``body`` is given."""
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def get_json(url: str) -> object:
    status, content_type, body = http(url)
    assert status == 200 and content_type == "application/json", (status, body)
    return json.loads(body)


def post_knobs(twin: EngineTwin, body: bytes) -> tuple[int, dict]:
    status, _, text = http(f"{twin.url}/v1/knobs", body)
    return status, json.loads(text)


def pages(twin: EngineTwin) -> dict[str, str]:
    """Every replica's metrics page and the router's, by name."""
    texts = {e["name"]: http(e["metrics_url"])[2] for e in twin.engines()}
    return texts | {"router": http(f"{twin.url}/router/metrics")[2]}


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def served_total(text: str) -> float:
    return sum(s.value for s in families(text)["vllm:request_success"].samples)


def ttft_count(text: str, model: str) -> float:
    """Requests of ``model`` in the page's TTFT histogram (0 before the first one)."""
    samples = families(text)["vllm:time_to_first_token_seconds"].samples
    return sum(
        s.value for s in samples if s.name.endswith("_count") and s.labels["model_name"] == model
    )


@pytest.fixture
def twin():
    with EngineTwin("steady", seed=1, speed=0) as engine_twin:
        engine_twin.start()
        yield engine_twin


@pytest.fixture(scope="module")
def idle_twin():
    """A twin whose state the tests using it never change."""
    with EngineTwin("steady", seed=2, speed=0) as engine_twin:
        engine_twin.start()
        engine_twin.step(30)
        yield engine_twin


SCHEDULER = {
    "vllm": ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting",
             "vllm:num_requests_running", "vllm:num_preemptions"),
    "vllm-legacy": ("vllm:gpu_cache_usage_perc", "vllm:num_requests_waiting",
                    "vllm:num_requests_running", "vllm:num_preemptions"),
    "sglang": ("sglang:token_usage", "sglang:num_queue_reqs", "sglang:num_running_reqs",
               "sglang:num_retracted_requests"),
}  # fmt: skip
SCHEDULER["sglang-legacy"] = SCHEDULER["sglang"]
HISTOGRAMS = {
    "vllm": ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
             "vllm:e2e_request_latency_seconds", "vllm:request_time_per_output_token_seconds"),
    "vllm-legacy": ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
                    "vllm:e2e_request_latency_seconds"),
    "sglang": ("sglang:time_to_first_token_seconds", "sglang:inter_token_latency_seconds",
               "sglang:e2e_request_latency_seconds"),
    "sglang-legacy": ("sglang:time_to_first_token_seconds", "sglang:time_per_output_token_seconds",
                      "sglang:e2e_request_latency_seconds"),
}  # fmt: skip
LABELS = {"vllm": {"model_name", "engine"}} | dict.fromkeys(
    ("vllm-legacy", "sglang", "sglang-legacy"), {"model_name"}
)


@pytest.mark.parametrize("mapping", ["vllm", "vllm-legacy", "sglang", "sglang-legacy"])
def test_replica_pages_parse_and_carry_the_engine_metric_names(mapping):
    with EngineTwin("steady", seed=3, speed=0, mapping=mapping) as engine_twin:
        engine_twin.start()
        events = engine_twin.step(60)
        engines = get_json(f"{engine_twin.url}/engines")
        assert [(e["name"], e["pool"], e["model"]) for e in engines] == [
            ("strong-0", "strong", "strong"),
            ("strong-1", "strong", "strong"),
            ("cheap-0", "cheap", "fast"),
        ]
        status, content_type, text = http(engines[0]["metrics_url"])
        stats = engine_twin.stats
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    found = families(text)
    kv, waiting, running, preemptions = SCHEDULER[mapping]
    types = {n: "histogram" for n in HISTOGRAMS[mapping]}
    types |= {kv: "gauge", waiting: "gauge", running: "gauge", preemptions: "counter"}
    assert {n: found[n].type for n in types} == types
    for family in found.values():
        for sample in family.samples:
            assert set(sample.labels) - {"le", "finished_reason"} == LABELS[mapping], sample
            assert sample.labels["model_name"] == "strong"
    values = {n: found[n].samples[0].value for n in (kv, waiting, running)}
    assert values == {kv: stats.kv_usage[0], waiting: stats.waiting[0], running: stats.running[0]}
    assert values[running] > 0
    ttft_count = next(s for s in found[HISTOGRAMS[mapping][0]].samples if s.name.endswith("count"))
    mine = events[events["replica"] == 0]
    assert ttft_count.value == np.count_nonzero(~np.isnan(mine["ttft_s"])) > 0


def test_sglang_pages_count_finished_requests_as_vllm_counts_its_request_success():
    """SGLang has no request_success counter: its pages count the requests each engine finished
    (``sglang:num_requests_total``), the sum of what vLLM's pages count by finished reason."""
    found = {}
    for mapping in ("vllm", "sglang"):
        with EngineTwin("steady", seed=3, speed=0, mapping=mapping) as engine_twin:
            engine_twin.step(60)
            found[mapping] = {
                r.name: families(engine_twin.metrics_text(r.name)) for r in engine_twin.replicas
            }
    counted = []
    for name, sglang in found["sglang"].items():
        assert sglang["sglang:num_requests"].type == "counter"
        (finished,) = sglang["sglang:num_requests"].samples
        vllm = found["vllm"][name]
        assert finished.value == sum(s.value for s in vllm["vllm:request_success"].samples)
        assert "vllm:num_requests" not in vllm  # request_success is vLLM's finished counter
        counted.append(finished.value)
    assert counted[0] > 0


def test_scraped_pages_give_the_budgets_of_the_raw_events(twin):
    """Every replica page and the router page, scraped every 30 s into a MetricsFeed, give the
    SLO counts, burn rates and alerts of a BudgetEngine fed the twin's raw events (the default
    spec's thresholds sit on vLLM bucket boundaries), through a knob change that moves them."""
    direct = BudgetEngine(twin.spec)
    feed = MetricsFeed(twin.spec, "vllm")
    direct.advance_to(twin.now)
    feed.update(twin.now, pages(twin))
    squeeze = {"cheap_tier_share": 0.5, "admission_limit": 0.5, "max_context_tokens": 1024}
    for i in range(40):
        if i == 20:
            assert post_knobs(twin, json.dumps(squeeze).encode())[0] == 200
        direct.ingest_events(twin.step(30.0))
        direct.advance_to(twin.now)
        report = feed.update(twin.now, pages(twin))
        assert report.clean, report
        np.testing.assert_allclose(feed.engine.burn_rates(), direct.burn_rates(), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(feed.engine.alert_states(), direct.alert_states())
    good, total = direct.period_counts()
    np.testing.assert_allclose(feed.engine.period_counts(), (good, total), rtol=0, atol=1e-9)
    spending = dict(zip(direct.slo_names, (total - good) > 0, strict=True))
    assert sum(spending.values()) >= 5, spending  # the comparison is not vacuous
    assert spending["availability"] and spending["quality-intended-tier"], spending


def test_posting_knobs_changes_the_simulator(twin):
    assert get_json(f"{twin.url}/v1/knobs") == NEUTRAL_KNOB_VALUES
    arrivals = twin.sim.arrivals
    before = twin.step(60)
    router = families(pages(twin)["router"])["budgetpilot:arrivals"]
    assert router.samples[0].value == twin.sim.arrivals - arrivals > len(before) / 2
    assert np.count_nonzero(before["tier"] == 1) == 0
    assert ttft_count(pages(twin)["cheap-0"], "fast") == 0
    status, knobs = post_knobs(twin, b'{"cheap_tier_share": 0.5}')
    assert status == 200
    assert knobs == NEUTRAL_KNOB_VALUES | {"cheap_tier_share": 0.5}
    assert twin.sim.knobs == sim_knobs(knobs)
    after = twin.step(60)
    served = after[after["outcome"] == Outcome.SERVED]
    assert 0.3 < np.mean(served["tier"] == 1) < 0.7
    assert ttft_count(pages(twin)["cheap-0"], "fast") == np.count_nonzero(served["tier"] == 1)
    assert get_json(f"{twin.url}/v1/state")["knobs"] == knobs


@pytest.mark.parametrize(
    ("body", "knob", "words"),
    [
        (b'{"cheap_tier_share": 0.95}', "cheap_tier_share", "is outside [0, 0.8]"),
        (b'{"cheap_tier_share": 0.2, "no_such_knob": 1}', "no_such_knob", "unknown knob"),
        (b'{"admission_limit": "fast"}', "admission_limit", "expected a finite number"),
        (b'{"offload_fraction": true}', "offload_fraction", "expected a finite number"),
        (b'{"max_num_seqs_scale": NaN}', "max_num_seqs_scale", "expected a finite number"),
        (b'{"shed_priority_below": 0.5}', "shed_priority_below", "takes whole values"),
        (b"[0.1, 0.2]", None, "expected a JSON object"),
        (b"{not json", None, "not valid JSON"),
    ],
)
def test_bad_knob_json_gets_400_naming_the_knob_and_changes_nothing(idle_twin, body, knob, words):
    status, error = post_knobs(idle_twin, body)
    assert status == 400
    assert error["knob"] == knob and words in error["error"], error
    if knob is not None:
        assert repr(knob) in error["error"]
    assert idle_twin.knobs() == NEUTRAL_KNOB_VALUES


def test_state_health_and_unknown_endpoints(idle_twin):
    base = idle_twin.url
    assert get_json(f"{base}/healthz") == {"status": "ok"}
    state = get_json(f"{base}/v1/state")
    assert state["scenario"] == "steady" and state["seed"] == 2 and state["speed"] == 0
    assert state["time_s"] == idle_twin.now == 630.0
    assert state["knobs"] == NEUTRAL_KNOB_VALUES
    assert state["healthy"] == {"strong-0": True, "strong-1": True, "cheap-0": True}
    status, _, body = http(f"{base}/engines/strong-7/metrics")
    assert status == 404 and "strong-0, strong-1, cheap-0" in json.loads(body)["error"]
    assert http(f"{base}/v2/anything")[0] == 404
    assert http(f"{base}/v1/state", b"{}")[0] == 404


def test_same_seed_gives_the_same_metrics_text():
    texts = []
    for seed, steps in ((7, (120.0,)), (7, (50.0, 70.0)), (8, (120.0,))):
        with EngineTwin("steady", seed=seed, speed=0) as engine_twin:
            engine_twin.start()
            for seconds in steps:
                engine_twin.step(seconds)
            texts.append(pages(engine_twin))
    assert texts[0] == texts[1]
    assert texts[0]["strong-0"] != texts[2]["strong-0"]


def test_a_failed_replica_is_down_then_restarts_with_fresh_counters():
    # Seed 0 draws the failure of strong-0 about 1400 s after the warm-up, for about 650 s.
    with EngineTwin("replica-failure", seed=0, speed=0) as engine_twin:
        url = engine_twin.start()
        at = engine_twin.setup.parameters["failure_at_s"]
        end = at + engine_twin.setup.parameters["failure_duration_s"]
        feed = MetricsFeed(engine_twin.spec, "vllm")
        engine_twin.step(math.floor(at) - engine_twin.now)
        before = pages(engine_twin)
        feed.update(engine_twin.now, {"strong-0": before["strong-0"]})
        engine_twin.step(2.0)
        status, _, body = http(f"{url}/engines/strong-0/metrics")
        assert status == 503 and "down" in json.loads(body)["error"]
        assert http(f"{url}/engines/strong-1/metrics")[0] == 200
        assert http(f"{url}/healthz")[0] == 200
        assert [e["healthy"] for e in get_json(f"{url}/engines")] == [False, True, True]
        engine_twin.step(math.ceil(end) + 60.0 - engine_twin.now)
        status, _, after = http(f"{url}/engines/strong-0/metrics")
        assert get_json(f"{url}/v1/state")["healthy"]["strong-0"]
    assert status == 200
    assert 0 < served_total(after) < served_total(before["strong-0"])
    assert feed.update(end + 60.0, {"strong-0": after}).resets  # the feed reads a restart


def test_the_model_rollout_changes_the_cheap_tiers_quality():
    with EngineTwin("model-rollout", seed=0, speed=0) as engine_twin:
        engine_twin.start()
        at, capability = engine_twin.setup.rollout_at_s, engine_twin.setup.rollout_capability
        engine_twin.step(math.floor(at) - 60.0 - engine_twin.now)
        assert post_knobs(engine_twin, b'{"cheap_tier_share": 0.8}')[0] == 200
        events = engine_twin.step(180.0)
    cheap = events[(events["outcome"] == Outcome.SERVED) & (events["tier"] == 1)]
    for part, tier_capability in (
        (cheap["t_end"] <= at, CHEAP_CAPABILITY),
        (cheap["t_end"] > at, capability),
    ):
        served = cheap[part]
        expected = (served["difficulty"] - tier_capability) / (1.0 - tier_capability)
        np.testing.assert_allclose(served["quality_loss"], np.clip(expected, 0, 1), atol=1e-5)
    # Seed 0 rolls out a weaker model: requests it now serves worse than the old one would.
    after = cheap[cheap["t_end"] > at]
    assert np.any((after["difficulty"] < CHEAP_CAPABILITY) & (after["quality_loss"] > 0))


@pytest.mark.timeout(180)
def test_the_cli_serves_in_accelerated_time_and_stops_on_ctrl_c():
    command = [sys.executable, "-m", "eval.cli", "twin", "--scenario", "steady",
               "--listen", "127.0.0.1:0", "--speed", "60"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1] != "Ctrl-C to stop.":
            line = proc.stdout.readline()
            assert line, (lines, proc.stderr.read())
            lines.append(line.strip())
        urls = dict(line.split() for line in lines[1:-1])
        assert set(urls) == {"strong-0", "strong-1", "cheap-0", "router", "engines", "knobs",
                             "state", "health"}  # fmt: skip
        t0 = get_json(urls["state"])["time_s"]
        deadline = time.monotonic() + 60.0
        while get_json(urls["state"])["time_s"] < t0 + 30.0:  # half a wall second at 60x
            assert time.monotonic() < deadline, "simulated time does not advance"
            time.sleep(0.05)
        assert "vllm:num_requests_running" in families(http(urls["strong-0"])[2])
    finally:
        out, err = finish_process(proc, signal.SIGINT, grace_s=90.0)  # a loaded machine
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("stopped at t=")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mapping": "triton"}, "unknown mapping 'triton'; the twin speaks vllm"),
        ({"speed": -1.0}, "speed must be a finite number >= 0"),
        ({"speed": math.inf}, "speed must be a finite number >= 0"),
        ({"tick_s": 0.0}, "tick_s must be > 0"),
    ],
)
def test_bad_twin_settings_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        EngineTwin("steady", seed=0, **{"speed": 0.0, **kwargs})


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:8000", ("127.0.0.1", 8000)), ("[::1]:0", ("::1", 0)), ("localhost", None),
     (":8000", None), ("127.0.0.1:http", None), ("127.0.0.1:70000", None)],
)  # fmt: skip
def test_listen_addresses_are_parsed_or_refused(listen, expected):
    if expected is None:
        with pytest.raises(ValueError, match="--listen: expected HOST:PORT"):
            parse_listen(listen)
    else:
        assert parse_listen(listen) == expected


def test_the_cli_names_an_address_it_cannot_listen_on():
    from typer.testing import CliRunner

    from eval.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        result = CliRunner().invoke(app, ["twin", "--scenario", "steady", "--listen", listen])
    assert result.exit_code == 2
    assert f"error: cannot listen on {listen}" in result.output
