"""The sidecar never shows a budget it cannot see: no data, warm-up and unknown signals.

Engine pages are the realistic fixtures of ``tests/fixtures/metrics`` (growing as traffic
does), the router's are rendered by the exposition renderer; rounds are fed through
:meth:`Sidecar.ingest` and the decisions read back over real HTTP (``/v1/decision``,
``/metrics``, ``/readyz``) and from the audit log.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from eval.perf_sidecar import fleet_contracts, linear_policy, router_pages
from policies.sidecar.config import SidecarConfigError, load_config
from policies.sidecar.loop import Sidecar
from policies.sidecar.scrape import ScrapeResult
from policies.sidecar.server import SidecarServer
from tests.metric_pages import fixture, grown, with_value, without

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")

ENGINES = {
    "strong-0": ("strong", "strong"),
    "strong-1": ("strong", "strong"),
    "cheap-0": ("cheap", "fast"),
}
T0 = 1_765_000_000.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    contracts = fleet_contracts()
    policy = linear_policy(tmp_path_factory.mktemp("zoo") / "linear.onnx", *contracts)
    return policy, router_pages(contracts[2], 40, np.random.default_rng(3), 300)


def new_sidecar(policy, tmp_path, **extra) -> Sidecar:
    engines = [
        {"name": n, "url": f"http://127.0.0.1:9/{n}", "pool": pool, "max_num_seqs": 64}
        for n, (pool, _) in ENGINES.items()
    ]
    config = {
        "policy": str(policy),
        "port": 0,
        "engines": engines,
        "counters": [{"name": "router", "url": "http://127.0.0.1:9/router"}],
        "audit_log": str(tmp_path / "audit.jsonl"),
        **extra,
    }
    return Sidecar(load_config(None, config))


def run_rounds(sidecar: Sidecar, router: list[str], page: str, times: list[float], edit=None):
    """Feed one round per time (engine pages from ``page`` growing, ``edit`` applied) and
    decide; the decisions."""
    decisions = []
    for i, now in enumerate(times):
        pages = {
            n: grown(page.replace('"strong"', f'"{m}"'), 1.0 + i) for n, (_, m) in ENGINES.items()
        }
        pages = {n: edit(p) if edit else p for n, p in pages.items()}
        pages["router"] = router[min(i, len(router) - 1)]
        results = {n: ScrapeResult(n, sidecar.observer.parse(n, p)) for n, p in pages.items()}
        sidecar.ingest(now, results)
        decisions.append(sidecar.publish(sidecar.decide(now)))
    return decisions


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def served(sidecar: Sidecar) -> SidecarServer:
    server = SidecarServer(sidecar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def metric(text: str, prefix: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(prefix)).split()[-1])


VLLM = fixture("vllm-v1.txt", model="strong")
#: An older vLLM: no inter_token_latency_seconds, no per-request TPOT histogram.
OLD_VLLM = fixture("vllm-v1-tpot.txt", model="strong").replace("gpu_cache_usage", "kv_cache_usage")


@pytest.mark.parametrize("action", ["hold", "fallback"])
def test_an_slo_whose_series_never_appears_stops_the_policy_and_says_why(world, tmp_path, action):
    """Before: burn 0, budget 100 %, a clean report, ready in policy mode."""
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path, missing_data={"after_cycles": 3, "action": action})
    server = served(sidecar)
    try:
        times = [T0 + 30.0 * i for i in range(5)]
        decisions = run_rounds(sidecar, router, OLD_VLLM, times)
        assert [d.mode for d in decisions[:3]] == ["policy"] * 3  # its last figures stand a while
        assert decisions[-1].mode == action
        assert (
            "itl-100ms" in decisions[-1].reason and "streaming-reading-pace" in decisions[-1].reason
        )
        assert "ttft-1s" not in decisions[-1].reason
        status, body = http(f"{server.url}/readyz")
        assert status == 503 and "itl-100ms" in json.loads(body)["problem"]
        shown = json.loads(http(f"{server.url}/v1/decision")[1])["observation"]["slos"]
        assert shown["itl-100ms"]["state"] == "no_data"
        assert set(shown["itl-100ms"]["burn_rates"].values()) == {None}
        assert shown["itl-100ms"]["budget_remaining"] is None
        assert (
            shown["ttft-1s"]["state"] == "warming_up" and shown["ttft-1s"]["burn_rates"]["5m"] > 0
        )
        text = http(f"{server.url}/metrics")[1]
        assert (
            metric(text, 'budgetpilot_sidecar_budget_state{slo="itl-100ms",state="no_data"}') == 1
        )
        assert math.isnan(metric(text, 'budgetpilot_sidecar_budget_remaining{slo="itl-100ms"}'))
        assert math.isnan(
            metric(text, 'budgetpilot_sidecar_burn_rate{slo="itl-100ms",window="5m"}')
        )
        assert (
            metric(text, 'budgetpilot_sidecar_scrape_errors_total{endpoint="feed",kind="no_data"}')
            >= 5
        )
        audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert audit[-1]["observation"]["slos"]["itl-100ms"]["state"] == "no_data"
        assert audit[-1]["mode"] == action
    finally:
        server.shutdown()
        sidecar.close()


def test_a_policy_decides_again_once_the_data_comes_back(world, tmp_path):
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path)
    times = [T0 + 30.0 * i for i in range(6)]
    decisions = run_rounds(sidecar, router, OLD_VLLM, times[:4])
    assert decisions[-1].mode == "hold"
    later = run_rounds(sidecar, router, VLLM, [t + 150.0 for t in times[4:]])
    assert later[-1].mode == "policy"
    sidecar.close()


def test_a_cold_start_shows_budgets_warming_up_and_raises_no_alert(world, tmp_path):
    """Before: 20 s after a start without saved state, budgets of -1.7 and ticket alerts."""
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path, interval_s=1.0)
    decisions = run_rounds(sidecar, router, VLLM, [T0 + i for i in range(21)])
    last = decisions[-1]
    snapshot = last.observation.snapshot
    ttft = snapshot.slo_names.index("ttft-1s")
    assert snapshot.burn_rates[ttft, 0] > 6  # the pages' 9 % of slow first tokens burn fast...
    assert not snapshot.page.any() and not snapshot.ticket.any()  # ...but 20 s prove nothing
    shown = last.to_dict(sidecar)["observation"]["slos"]["ttft-1s"]
    assert shown["state"] == "warming_up" and shown["budget_remaining"] is None
    assert shown["alert"] == "none" and 0 < shown["coverage"]["5m"] < 0.1
    budget = sidecar.observation_contract.feature_names.index("slo.ttft-1s.budget_remaining")
    assert last.observation.vector[budget] > 0.99  # the unseen period counts as unspent
    sidecar.close()


def test_a_missing_finished_counter_is_unknown_not_zero(world, tmp_path):
    """Before: arrivals and load at 0 in every decision, no problem reported."""
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path)
    times = [T0 + 30.0 * i for i in range(6)]
    before = run_rounds(sidecar, router, VLLM, times[:3])
    arrivals = before[-1].observation.arrivals
    assert arrivals > 0
    after = run_rounds(
        sidecar, router, VLLM, times[3:], edit=lambda p: without(p, "vllm:request_success_total")
    )
    assert after[-1].observation.arrivals == arrivals
    assert after[-1].observation.unknown_signals == ("finished",)
    assert any(
        p.kind == "missing_series" and "request_success" in p.detail for p in after[-1].problems
    )


def test_burn_rates_are_rounded_for_display_only(world, tmp_path):
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path)
    decision = run_rounds(sidecar, router, VLLM, [T0 + 30.0 * i for i in range(3)])[-1]
    shown = decision.to_dict(sidecar)["observation"]["slos"]["ttft-1s"]["burn_rates"]["5m"]
    exact = decision.observation.snapshot.burn_rates[0, 0]
    assert shown == float(f"{exact:.6g}") and len(repr(shown)) <= 9
    sidecar.close()


# --------------------------------------------------------------------------------------------
# llama.cpp and TGI: what their metrics can feed, and a refusal naming what they cannot


@pytest.mark.parametrize(
    ("mapping", "refused"),
    [
        ("llamacpp", ["ttft-1s (mapping 'llamacpp' names no ttft histogram)", "finished-requests"]),
        ("tgi", ["itl-100ms (mapping 'tgi' names no itl histogram)", "KV-cache usage"]),
    ],
)
def test_engines_without_histograms_are_refused_naming_each_slo(world, tmp_path, mapping, refused):
    policy, _ = world
    with pytest.raises(SidecarConfigError) as error:
        new_sidecar(policy, tmp_path, mapping=mapping, counters=[])
    for words in refused:
        assert words in str(error.value)
    assert "streaming-reading-pace" in str(error.value)


def test_a_llamacpp_fleet_feeds_its_gauges_and_the_routers_budgets(world, tmp_path):
    policy, router = world
    sidecar = new_sidecar(
        policy, tmp_path, mapping="llamacpp", signals={"arrivals": "budgetpilot:arrivals_total"}
    )
    page = fixture("llamacpp.txt")
    decisions = run_rounds(sidecar, router, page, [T0 + 30.0 * i for i in range(3)])
    signals = decisions[-1].observation
    assert decisions[-1].mode == "policy" and signals.healthy_replicas == 3
    assert sidecar.observer.replicas.values["running"].tolist() == [3.0, 3.0, 3.0]
    assert sidecar.observer.replicas.values["kv"].tolist() == [0.27, 0.27, 0.27]
    assert signals.arrivals > 0 and not signals.snapshot.no_data.any()
    sidecar.close()


def test_kv_usage_mean_is_time_weighted_like_the_environments(world, tmp_path):
    """Scrapes at 10 s (KV 0.2) and 30 s (KV 0.8), the one at 20 s failed: the 0.8 stood for
    20 s of the interval, so the mean is 0.6 (a mean of scrapes would say 0.5)."""
    policy, router = world
    sidecar = new_sidecar(policy, tmp_path, scrape={"per_interval": 3})
    run_rounds(sidecar, router, VLLM, [T0])
    kv = "vllm:kv_cache_usage_perc"
    for now, usage in ((T0 + 10.0, "0.2"), (T0 + 20.0, None), (T0 + 30.0, "0.8")):
        results = {}
        for name, (_, model) in ENGINES.items():
            page = with_value(VLLM.replace('"strong"', f'"{model}"'), kv, usage or "0")
            results[name] = (
                ScrapeResult(name, sidecar.observer.parse(name, page))
                if usage
                else ScrapeResult(name, error="timeout", detail="injected")
            )
        results["router"] = ScrapeResult("router", sidecar.observer.parse("router", router[0]))
        sidecar.ingest(now, results)
    observation = sidecar.decide(T0 + 30.0).observation
    assert observation.signals.pools["strong"]["kv_usage_mean"] == pytest.approx(0.6)
    sidecar.close()
