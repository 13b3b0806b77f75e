"""The sidecar reading its metrics from a real Prometheus that scrapes the engine twin.

The twin is stepped by the test; after each step the test waits until Prometheus has scraped
every target again, then a sidecar reading Prometheus and one scraping the twin itself decide
on the same pages: their budgets must be equal. Prometheus down, slow or answering errors: the
sidecar reports it, holds and falls back, and reads again once Prometheus is back.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs.twin import EngineTwin
from eval.perf_sidecar import PageServer
from policies.sidecar.config import SidecarConfigError, load_config, load_twin_config
from policies.sidecar.loop import Sidecar
from policies.sidecar.prometheus import PrometheusAPI
from slo.prometheus_server import free_port, scrape_configs
from tests.conftest import stop_process

ZOO_POLICY = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-standard.onnx"
INTERVAL_S = 30.0
DEADLINE_S = 60.0
#: How far behind the clock the sidecars read Prometheus (``prometheus.settle_s``).
SETTLE_S = 0.5


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``condition()`` until it holds (generous deadline)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def scraped_since(server, wall: float, targets: int = 4) -> bool:
    """Whether Prometheus has scraped every target (the twin's three replicas and its router)
    since ``wall`` (Unix seconds)."""
    try:
        scrapes = server.query("timestamp(up)")
    except OSError:
        return False
    return len(scrapes) == targets and all(float(s["value"][1]) > wall for s in scrapes)


def wait_until_read(server, wall: float, what: str) -> None:
    """Wait until a sidecar reading ``SETTLE_S`` behind the clock sees scrapes of every target
    taken after ``wall``."""
    wait_for(lambda: scraped_since(server, wall), what)
    scraped = time.time()
    wait_for(lambda: time.time() - SETTLE_S > scraped, f"{what} ({SETTLE_S} s behind)")


def sidecar_config(twin: EngineTwin, tmp_path: Path, prometheus: dict | None, **extra):
    settings = {}
    if prometheus is not None:
        settings["actuators"] = {}  # the twin is actuated by the sidecar that scrapes it
        settings["prometheus"] = {
            "endpoint_label": "replica",
            "bootstrap": False,
            "settle_s": SETTLE_S,
            **prometheus,
        }
    return load_twin_config(
        None,
        {"policy": str(ZOO_POLICY), "port": 0, "interval_s": INTERVAL_S, **settings, **extra},
        twin.url,
    )


@pytest.fixture
def fleet(prometheus_server):
    """A stepped twin and a real Prometheus scraping its replicas and router every second."""
    twin = EngineTwin("steady", seed=5, speed=0.0)
    twin.start()
    server = prometheus_server(scrape_configs(twin.url, twin.engines()))
    wait_until_read(server, 0.0, "Prometheus's first scrapes")
    yield twin, server
    twin.close()


def step_and_scrape(twin: EngineTwin, server, seconds: float) -> None:
    twin.step(seconds)
    wait_until_read(server, time.time(), "Prometheus to scrape the new pages")


@pytest.mark.slow
@pytest.mark.parametrize("restart", [False, True], ids=["steady", "replica-restart"])
def test_budgets_read_from_prometheus_equal_the_scraped_ones(fleet, tmp_path, restart):
    """Prometheus sums the fleet's counters; the budgets are still those of scraping every
    engine, a replica whose counters restart from zero included (a sum of the raw counters
    would lose what it had counted, or, with the others growing, not even drop)."""
    twin, server = fleet
    reading = Sidecar(sidecar_config(twin, tmp_path, {"url": server.url}))
    scraping = Sidecar(sidecar_config(twin, tmp_path, None))
    try:
        assert type(reading.scraper).__name__ == "PrometheusSource"
        for i in range(6):
            ours = reading.cycle(twin.now)
            theirs = scraping.cycle(twin.now)
            assert ours.mode == theirs.mode == "policy", ours.reason
            assert reading.last_report.complete and reading.last_report.engines_ok == 3
            assert_same_counts(reading, scraping)
            np.testing.assert_allclose(
                ours.observation.snapshot.burn_rates, theirs.observation.snapshot.burn_rates
            )
            assert ours.observation.healthy_replicas == 3
            if restart and i == 3:
                assert "counter_reset" in {p.kind for p in theirs.problems}  # it happened
            if restart and i == 2:
                twin.inject_fault({"replica": "strong-0", "kind": "counter_reset"})
            step_and_scrape(twin, server, INTERVAL_S)
        good, total = reading.observer.engine.cumulative_counts()
        assert total.sum() > 0 and good.sum() > 0
    finally:
        reading.close()
        scraping.close()


def assert_same_counts(reading: Sidecar, scraping: Sidecar) -> None:
    """The budget engines of both sidecars counted the same events."""
    for mine, reference in zip(
        reading.observer.engine.cumulative_counts(),
        scraping.observer.engine.cumulative_counts(),
        strict=True,
    ):
        np.testing.assert_array_equal(mine, reference)


@pytest.mark.slow
def test_prometheus_down_holds_falls_back_and_recovers(fleet, tmp_path):
    twin, server = fleet
    sidecar = Sidecar(sidecar_config(twin, tmp_path, {"url": server.url, "timeout_s": 2.0}))
    try:
        assert sidecar.cycle(twin.now).mode == "policy"
        stop_process(server.process)
        modes, kinds = [], set()
        for _ in range(6):
            step_and_wait = twin.now + INTERVAL_S
            twin.step(INTERVAL_S)
            decision = sidecar.cycle(step_and_wait)
            modes.append(decision.mode)
            kinds |= {p.kind for p in decision.problems}
            assert_within_contract(sidecar, decision.knobs)
        assert modes[0] == "hold" and modes[-1] == "fallback", modes
        assert kinds == {"prometheus_connection"}
        # The same server again (same port and storage): the sidecar reads again.
        log = (Path(server.config_path).parent / "prometheus-restart.log").open("w")
        server.process = subprocess.Popen(server.process.args, stdout=log, stderr=log)
        wait_for(lambda: _ready(server.url), "Prometheus to restart")
        wait_until_read(server, time.time(), "Prometheus to scrape again")
        decision = sidecar.cycle(twin.now)
        assert decision.mode == "policy", decision.reason
        assert sidecar.last_report.complete
    finally:
        sidecar.close()


@pytest.mark.parametrize("failure", ["slow", "error"])
def test_prometheus_slow_or_erroring_is_reported_and_held(fleet, tmp_path, failure):
    """A server that accepts but never answers times out; a query Prometheus refuses (a bad
    selector in the config) comes back as its error: either way, reported and held."""
    twin, server = fleet
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        prometheus = {
            "slow": {"url": f"http://127.0.0.1:{silent.getsockname()[1]}", "timeout_s": 0.5},
            "error": {"url": server.url, "selector": 'job=~"('},
        }[failure]
        sidecar = Sidecar(sidecar_config(twin, tmp_path, prometheus))
        try:
            sidecar.cycle(twin.now)
            twin.step(INTERVAL_S)
            decision = sidecar.cycle(twin.now)
        finally:
            sidecar.close()
    kind = {"slow": "prometheus_timeout", "error": "prometheus_http_status"}[failure]
    assert decision.mode == "hold"
    assert {p.kind for p in decision.problems} == {kind}
    detail = decision.problems[0].detail
    assert ("no answer within 0.5 s" if failure == "slow" else "parse error") in detail, detail
    assert_within_contract(sidecar, decision.knobs)


@pytest.mark.slow
def test_a_replica_prometheus_cannot_scrape_is_down_the_others_are_read(
    prometheus_server, tmp_path
):
    """Prometheus's last scrape of strong-1 failed (``up == 0``): that replica is down this
    cycle, with the reason; the others' gauges and the fleet's counters are read."""
    twin = EngineTwin("steady", seed=5, speed=0.0)
    twin.start()
    try:
        scraped = [e for e in twin.engines() if e["name"] != "strong-1"]
        dead = {"targets": [f"127.0.0.1:{free_port()}"], "labels": {"replica": "strong-1"}}
        configs = [
            *scrape_configs(twin.url, scraped),
            {"job_name": "dead", "static_configs": [dead]},
        ]
        server = prometheus_server(configs)
        wait_until_read(server, 0.0, "Prometheus's first scrapes")
        sidecar = Sidecar(sidecar_config(twin, tmp_path, {"url": server.url}))
        try:
            sidecar.cycle(twin.now)
            step_and_scrape(twin, server, INTERVAL_S)
            decision = sidecar.cycle(twin.now)
        finally:
            sidecar.close()
    finally:
        twin.close()
    assert [(p.endpoint, p.kind) for p in decision.problems] == [
        ("strong-1", "prometheus_target_down")
    ]
    assert sidecar.last_report.engines_ok == 2 and sidecar.last_report.complete
    assert decision.observation.healthy_replicas == 2
    assert sidecar.observer.engine.cumulative_counts()[1].sum() > 0  # the fleet's counters
    assert_within_contract(sidecar, decision.knobs)


class PrometheusInTrouble(dict):
    """Routes of a :class:`PageServer` that forward every request to a real Prometheus, or
    answer ``failure`` (status, body) instead: the error shapes a real Prometheus cannot be
    made to produce on demand."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.failure: tuple[int, str] | None = None

    def get(self, path: str, default=None):
        return lambda: self.failure or _forward(self.upstream + path)


def _forward(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, answer.read().decode()


#: Answers of a Prometheus in trouble (or of what stands in front of it), the problem each is
#: reported as and what the detail says.
BAD_ANSWERS = {
    "overloaded": (
        503,
        '{"status": "error", "errorType": "unavailable", "error": "too many queries"}',
        "prometheus_http_status",
        "HTTP 503: too many queries",
    ),
    "error-status": (
        200,
        '{"status": "error", "errorType": "execution", "error": "query timed out"}',
        "prometheus_response",
        "query timed out",
    ),
    "partial": (
        200,
        '{"status": "success", "data": {"resultType": "vector", "result": []}, '
        '"warnings": ["remote store eu-1 did not answer"]}',
        "prometheus_partial",
        "remote store eu-1 did not answer",
    ),
    "not-json": (200, "<html>sign in</html>", "prometheus_response", "not JSON"),
    "wrong-shape": (
        200,
        '{"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}',
        "prometheus_response",
        "unexpected series",
    ),
}


@pytest.mark.slow
def test_prometheus_answering_errors_is_reported_held_and_recovered(fleet, tmp_path):
    """Each bad answer fails the round for every endpoint with its reason, the sidecar holds
    (then falls back) within its bounds; once Prometheus answers again, the events counted
    meanwhile are all counted: the budgets equal those of scraping the engines."""
    twin, server = fleet
    proxy = PageServer()
    proxy.routes = routes = PrometheusInTrouble(server.url)
    reading = Sidecar(sidecar_config(twin, tmp_path, {"url": proxy.url}))
    scraping = Sidecar(sidecar_config(twin, tmp_path, None))
    try:
        assert reading.cycle(twin.now).mode == scraping.cycle(twin.now).mode == "policy"
        for name, (status, body, kind, detail) in BAD_ANSWERS.items():
            routes.failure = (status, body)
            step_and_scrape(twin, server, INTERVAL_S)
            decision = reading.cycle(twin.now)
            scraping.cycle(twin.now)
            assert decision.mode in ("hold", "fallback"), (name, decision.mode)
            assert {p.kind for p in decision.problems} == {kind}, name
            assert all(detail in p.detail for p in decision.problems), decision.problems[0]
            assert_within_contract(reading, decision.knobs)
        routes.failure = None
        step_and_scrape(twin, server, INTERVAL_S)
        decision = reading.cycle(twin.now)
        scraping.cycle(twin.now)
        assert decision.mode == "policy", decision.reason
        assert reading.last_report.complete and not decision.problems
        assert_same_counts(reading, scraping)
    finally:
        reading.close()
        scraping.close()
        proxy.close()


@pytest.mark.parametrize("answer", ["down", *BAD_ANSWERS])
def test_a_history_prometheus_cannot_give_leaves_the_budgets_fresh(answer, tmp_path):
    """At start, a Prometheus down or answering badly cannot bootstrap the budgets: the
    sidecar starts with fresh ones, counts the failure and logs it; nothing is half-read."""
    twin = EngineTwin("steady", seed=5, speed=0.0)
    twin.start()
    proxy = PageServer()
    proxy.routes = routes = PrometheusInTrouble("")
    routes.failure = BAD_ANSWERS.get(answer, (0, ""))[:2]
    url = f"http://127.0.0.1:{free_port()}" if answer == "down" else proxy.url
    try:
        overrides = {
            "policy": str(ZOO_POLICY),
            "port": 0,
            "prometheus": {"url": url, "read": False},
        }
        sidecar = Sidecar(load_twin_config(None, overrides, twin.url))
        sidecar.close()
    finally:
        proxy.close()
        twin.close()
    assert sidecar.bootstrap is None
    errors = sidecar.metrics.registry.get_sample_value
    assert errors("budgetpilot_sidecar_state_errors_total", {"operation": "bootstrap"}) == 1
    good, total = sidecar.observer.engine.cumulative_counts()
    assert total.sum() == good.sum() == 0


def assert_within_contract(sidecar: Sidecar, knobs: dict[str, float]) -> None:
    for knob in sidecar.action_contract.knobs:
        assert knob.low <= knobs[knob.name] <= knob.high


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_example_configs_prometheus_section_is_valid():
    text = (Path(__file__).resolve().parents[1] / "policies/sidecar/example.yaml").read_text()
    lines = text.splitlines()
    start = lines.index("# prometheus:")
    section = list(itertools.takewhile(lambda line: line.startswith("# "), lines[start:]))
    data = yaml.safe_load(text) | yaml.safe_load("\n".join(line[2:] for line in section))
    config = load_config(None, data)
    assert config.prometheus.endpoint_label == "pod"
    assert config.prometheus.read and config.prometheus.bootstrap


def test_engine_urls_are_needed_only_without_prometheus():
    engines = [{"name": "strong-0", "pool": "strong", "max_num_seqs": 256}]
    base = {"policy": str(ZOO_POLICY), "engines": engines}
    prometheus = {"url": "http://127.0.0.1:9090"}
    assert load_config(None, base | {"prometheus": prometheus}).engines[0].url is None
    with pytest.raises(SidecarConfigError, match=r"engines\[0\]\.url: required"):
        load_config(None, base | {"prometheus": prometheus | {"read": False}})


def test_a_selector_naming_tens_of_thousands_of_replicas_is_read(fleet):
    """The sidecar's selectors name every replica it reads: queries go as a POST form, which
    Prometheus reads whatever their length, where a URL of more than 1 MB of headers is
    refused by Prometheus itself (and one of 8 KB by many proxies in front of it)."""
    twin, server = fleet
    names = ["strong-0", *(f"replica-{i:05d}.llm-serving.svc" for i in range(40_000))]
    promql = f'up{{replica=~"{"|".join(names)}"}}'
    assert len(promql) > 2**20
    answer = PrometheusAPI(server.url).query(promql)
    assert [s["metric"]["replica"] for s in answer] == ["strong-0"]
    url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with pytest.raises(urllib.error.HTTPError, match="431"):
        urllib.request.urlopen(url, timeout=30)
