"""``budgetpilot perf sidecar``: decision latency, 64-endpoint cycle, memory and start-up.

The fleet is a local HTTP server (another process, as engines are) serving 64 realistic vLLM
pages (request histograms rendered by :class:`slo.exposition.ExpositionRenderer` from synthetic
request events, scheduler gauges, and the other families a vLLM v1 server exposes) plus a
router page of budgetpilot counters. The policy is a linear ONNX policy over the environment's
contracts (or a zoo policy, timed from a copy whose envelope is widened to the benchmark's fleet:
a sidecar refuses a fleet of 64 replicas for a policy trained on 3). Figures:

* ``decision_p99_ms``: observation vector, policy (onnxruntime) and guardrails (and
  ``decision_p99_cpu_ms``, the deciding thread's CPU time, which other processes do not inflate);
* ``cycle_ms_64_endpoints`` (median; ``cycle_p99_ms``): scrape, parse, budgets and decision;
* ``rss_mb`` (peak) and ``startup_s`` (launch to ``/readyz``: imports, policy, first cycle;
  ``startup_cpu_s`` its CPU time) of a real ``budgetpilot sidecar`` process, and
  ``forbidden_imports`` found in the measuring sidecar process;
* ``load_average_1m``: the machine's load when the benchmark ended (wall times grow with it);
* with Prometheus installed (:func:`prometheus_figures`): ``cycle_ms_prometheus_256`` (median;
  ``cycle_cpu_ms_prometheus_256`` its CPU time), one cycle reading 256 replicas' signals from a
  real Prometheus scraping the page server, and ``bootstrap_s_30d``, the budgets bootstrapped
  from 30 days of history every 30 s (backfilled with promtool first: ``history_write_s``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from slo.prometheus_server import free_port

#: This module run as a script: the fleet server and the measuring sidecar are processes of it.
_SELF = (sys.executable, "-m", "eval.perf_sidecar")
#: Modules that must never be imported by a sidecar process.
FORBIDDEN_MODULES = ("torch", "ray", "stable_baselines3", "numba", "envs.sim")
#: Filler families of a vLLM v1 page (name, kind, bucket bounds): what the sidecar skips.
_FILLER_HISTOGRAMS = {
    "vllm:request_prompt_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
    "vllm:request_generation_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    "vllm:iteration_tokens_total": (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
    "vllm:request_params_n": (1, 2, 5, 10, 20),
    "vllm:request_params_max_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    "vllm:request_max_num_generation_tokens": (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    "vllm:request_queue_time_seconds": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0),
    "vllm:request_inference_time_seconds": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0),
    "vllm:request_prefill_time_seconds": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0),
    "vllm:request_decode_time_seconds": (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0),
}
_FILLER_COUNTERS = (
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "python_gc_objects_collected",
    "python_gc_collections",
    "process_cpu_seconds",
)


# ------------------------------------------------------------------------------------------------
# A policy over the environment's contracts


def linear_policy(
    path: Path,
    observation_contract: Any,
    action_contract: Any,
    spec: Any,
    *,
    seed: int = 0,
    scale: float = 0.3,
    bias: np.ndarray | None = None,
    squash: bool = True,
    weights: np.ndarray | None = None,
    envelope: Any = None,
) -> Path:
    """Write a linear ONNX policy ``tanh(obs @ W + b)`` and its manifest (needs ``onnx``, of the
    train extra: a stand-in for an exported PPO actor, with the same file format).

    ``W`` and ``b`` are drawn from ``seed`` (times ``scale``); ``weights`` (``[n_obs,
    n_knobs]``) replaces ``W`` and ``bias`` replaces ``b`` (e.g. a policy scaling a pool by its
    replica features); ``squash=False`` leaves out the tanh (outputs may leave [-1, 1], for
    guardrail tests); ``envelope`` (a :class:`policies.manifest.Envelope`) replaces the
    reference fleet's.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from policies.manifest import (
        Envelope,
        Normalisation,
        PolicyManifest,
        Provenance,
        spec_to_json,
    )

    rng = np.random.default_rng(seed)
    n_obs, n_act = observation_contract.size, len(action_contract.knobs)
    drawn_weights = rng.standard_normal((n_obs, n_act)) * scale
    weights = np.asarray(drawn_weights if weights is None else weights, dtype=np.float32)
    drawn = rng.standard_normal(n_act) * scale
    bias = np.asarray(drawn if bias is None else bias, dtype=np.float32)
    last = "action" if not squash else "y"
    nodes = [
        helper.make_node("MatMul", ["observation", "W"], ["z"]),
        helper.make_node("Add", ["z", "b"], [last]),
    ]
    if squash:
        nodes.append(helper.make_node("Tanh", ["y"], ["action"]))
    graph = helper.make_graph(
        nodes,
        "linear_policy",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", n_obs])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", n_act])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    fingerprint = _spec_fingerprint(spec)
    manifest = PolicyManifest(
        observation_contract=observation_contract,
        action_contract=action_contract,
        spec=spec_to_json(spec),
        spec_hash=fingerprint,
        normalisation=Normalisation((0.0,) * n_obs, (1.0,) * n_obs, None, 0.0),
        onnx_sha256=hashlib.sha256(data).hexdigest(),
        opset=17,
        provenance=Provenance(
            preset="linear-stand-in",
            seed=seed,
            scenarios=("steady",),
            env_kwargs={},
            timesteps=0,
            commit=None,
            metrics={},
            export={"kind": "linear tanh(obs @ W + b), random weights"},
        ),
        envelope=envelope
        or Envelope.reference(observation_contract, spec.service, fingerprint, assumed=False),
    )
    path.with_suffix(".json").write_text(manifest.to_json())
    return path


def benchmark_envelope(policy_envelope: Any, endpoints: int) -> Any:
    """``policy_envelope`` widened to the benchmark's fleet of :func:`sidecar_config` (up to
    ``endpoints - 1`` strong replicas and one cheap): the benchmark times a policy, it does not
    deploy one, and a policy trained on 3 replicas would be refused by a sidecar of 64."""
    from dataclasses import replace

    roles = {"strong": (1, max(endpoints - 1, 1)), "cheap": (1, 1)}
    fleets = (f"perf-sidecar-{endpoints}",)
    return replace(policy_envelope, roles=roles, fleets=fleets, assumed=False)


def timed_policy(work: Path, endpoints: int, policy: Path | None = None) -> Path:
    """The policy a benchmark of ``endpoints`` endpoints times: ``policy`` (copied into
    ``work`` with its envelope widened by :func:`benchmark_envelope`) or a linear stand-in over
    the environment's contracts."""
    import shutil
    from dataclasses import replace

    from policies.manifest import Envelope, PolicyManifest

    if policy is None:
        observation, action, spec = fleet_contracts()
        fingerprint = _spec_fingerprint(spec)
        reference = Envelope.reference(observation, spec.service, fingerprint, assumed=False)
        envelope = benchmark_envelope(reference, endpoints)
        return linear_policy(work / "linear.onnx", observation, action, spec, envelope=envelope)
    manifest = PolicyManifest.from_json(policy.with_suffix(".json").read_text())
    widened = replace(manifest, envelope=benchmark_envelope(manifest.envelope, endpoints))
    copy = work / policy.name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(policy, copy)
    copy.with_suffix(".json").write_text(widened.to_json())
    return copy


def _spec_fingerprint(spec: Any) -> str:
    from slo.engine import BudgetEngine

    return BudgetEngine(spec).spec_fingerprint()


def fleet_contracts() -> tuple[Any, Any, Any]:
    """``(observation contract, action contract, SLO spec)`` of the fleet environment."""
    from envs.fleet_env import LLMFleetEnv

    env = LLMFleetEnv("steady")
    return env.observation_contract, env.action_contract, env.slo_spec


# ------------------------------------------------------------------------------------------------
# Realistic pages


def engine_pages(spec: Any, n_pages: int, rng: np.random.Generator, requests: int = 600) -> list:
    """Successive vLLM v1 pages of one engine (counters growing ``requests`` per page)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    from slo.exposition import ExpositionRenderer
    from slo.synthetic import synthetic_events

    renderer = ExpositionRenderer(spec, "vllm", labels={"engine": "0"}, budget_counters=False)
    labels = ["model_name", "engine"]
    values = ["strong", "0"]
    pages = []
    for page in range(n_pages):
        renderer.add(synthetic_events(rng, requests, page * 30.0, (page + 1) * 30.0, n_tiers=1))
        served = (page + 1) * requests

        def families(served: int = served) -> list:
            out = []
            for name, value in (
                ("vllm:num_requests_running", rng.integers(10, 60)),
                ("vllm:num_requests_waiting", rng.integers(0, 8)),
                ("vllm:kv_cache_usage_perc", rng.uniform(0.2, 0.95)),
            ):
                family = GaugeMetricFamily(name, "scheduler gauge", labels=labels)
                family.add_metric(values, float(value))
                out.append(family)
            for name in ("vllm:num_preemptions", *_FILLER_COUNTERS):
                family = CounterMetricFamily(name, "counter", labels=labels)
                family.add_metric(values, float(served * (3 if "tokens" in name else 0.01)))
                out.append(family)
            for name, bounds in _FILLER_HISTOGRAMS.items():
                family = HistogramMetricFamily(name, "histogram", labels=labels)
                buckets = [
                    (str(float(b)), float(served * i / len(bounds))) for i, b in enumerate(bounds)
                ]
                family.add_metric(values, [*buckets, ("+Inf", float(served))], float(served))
                out.append(family)
            return out

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(families))
        pages.append(renderer.render() + generate_latest(registry).decode())
    return pages


def router_pages(spec: Any, n_pages: int, rng: np.random.Generator, requests: int) -> list:
    """Successive router pages (budgetpilot counters, arrivals) for a fleet's traffic."""
    from slo.exposition import ExpositionRenderer
    from slo.synthetic import synthetic_events

    renderer = ExpositionRenderer(spec, "vllm", engine_metrics=False)
    pages = []
    for page in range(n_pages):
        renderer.add(synthetic_events(rng, requests, page * 30.0, (page + 1) * 30.0))
        arrivals = f"budgetpilot:arrivals_total {float((page + 1) * requests)}\n"
        pages.append(renderer.render() + "# TYPE budgetpilot:arrivals counter\n" + arrivals)
    return pages


class _Collector:
    def __init__(self, families: Callable[[], list]) -> None:
        self._families = families

    def collect(self) -> list:
        return self._families()


# ------------------------------------------------------------------------------------------------
# A page server


class PageServer(ThreadingHTTPServer):
    """Serves pages over HTTP/1.1 on loopback: ``routes[path]()`` gives ``(status, text)``
    (``path`` with its query string, or with a POST's form as one).

    Routes may be replaced while serving (tests inject garbage, NaN, failures or delays).
    """

    daemon_threads = True

    def __init__(self, routes: Mapping[str, Callable[[], tuple[int, str]]] | None = None) -> None:
        self.routes: dict[str, Callable[[], tuple[int, str]]] = dict(routes or {})
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def set_text(self, path: str, text: str, status: int = 200) -> None:
        self.routes[path] = lambda: (status, text)

    def set_sequence(self, path: str, texts: list[str]) -> None:
        """Serve ``texts`` one after another (the last one from then on)."""
        served = iter(texts)
        last = [texts[-1]]

        def next_page() -> tuple[int, str]:
            last[0] = next(served, last[0])
            return 200, last[0]

        self.routes[path] = next_page

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a scrape timeout) is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._answer(self.path)

    def do_POST(self) -> None:
        """A form posted is the same resource as its fields in the URL (as Prometheus's API
        takes them): routed by ``path?form``."""
        form = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self._answer(f"{self.path}?{form}")

    def _answer(self, key: str) -> None:
        route = self.server.routes.get(key)
        status, text = (404, "not found\n") if route is None else route()
        data = text.encode("utf-8", errors="surrogateescape")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _serve_fleet(endpoints: int, ready_file: Path) -> None:
    """Subprocess entry: serve ``endpoints`` engine pages and a router page until killed."""
    from slo.spec import default_spec

    spec = default_spec()
    rng = np.random.default_rng(0)
    engine = engine_pages(spec, 12, rng)
    router = router_pages(spec, 12, rng, 600 * endpoints)
    server = PageServer()
    for i in range(endpoints):
        server.set_sequence(f"/engines/strong-{i}/metrics", engine)
    server.set_sequence("/router/metrics", router)
    ready_file.write_text(server.url)
    threading.Event().wait()


# ------------------------------------------------------------------------------------------------
# The benchmark


def sidecar_config(policy: Path, base_url: str, endpoints: int, **extra: Any) -> dict[str, Any]:
    """A config for ``endpoints`` engines (the last one cheap) served at ``base_url``."""
    engines = [
        {
            "name": f"strong-{i}",
            "url": f"{base_url}/engines/strong-{i}/metrics",
            "pool": "cheap" if i == endpoints - 1 else "strong",
            "max_num_seqs": 256,
        }
        for i in range(endpoints)
    ]
    return {
        "policy": str(policy),
        "engines": engines,
        "counters": [{"name": "router", "url": f"{base_url}/router/metrics"}],
        "signals": {"arrivals": "budgetpilot:arrivals_total"},
        "fleet_capacity": benchmark_capacity(endpoints),
        **extra,
    }


def benchmark_capacity(endpoints: int) -> dict[str, float]:
    """The ``fleet_capacity`` of :func:`sidecar_config`'s fleet (a policy of observation
    contract v3 observes load relative to it): the reference fleet's per strong replica times
    ``endpoints - 1`` strong replicas, and its cheap replica's."""
    from envs.scenarios import REFERENCE_FLEET

    strong, cheap = REFERENCE_FLEET.role_capacity_rps
    per_replica = strong / REFERENCE_FLEET.role_replicas()["strong"][1]
    return {"strong": per_replica * max(endpoints - 1, 1), "cheap": cheap}


def _measure(config_path: Path, cycles: int, decisions: int) -> dict[str, Any]:
    """Subprocess entry: time cycles and decisions of a sidecar built from ``config_path``."""
    from policies.sidecar.config import load_config
    from policies.sidecar.loop import Sidecar

    sidecar = Sidecar(load_config(config_path))
    gc.freeze()  # as `budgetpilot sidecar` does after start-up
    cycle_s, cycle_cpu_s = [], []
    now = 1.7e9
    for _ in range(cycles):
        start, cpu = time.perf_counter(), time.process_time()
        sidecar.scrape(now)
        sidecar.decide(now)
        cycle_s.append(time.perf_counter() - start)
        cycle_cpu_s.append(time.process_time() - cpu)
        now += 30.0
    sidecar.scrape(now)
    decision_s, decision_cpu_s = [], []
    for _ in range(decisions):
        start, cpu = time.perf_counter(), time.thread_time()
        decision = sidecar.decide(now)
        decision_s.append(time.perf_counter() - start)
        decision_cpu_s.append(time.thread_time() - cpu)
    sidecar.close()
    return {
        "decision_p50_ms": float(np.percentile(decision_s, 50) * 1e3),
        "decision_p99_ms": float(np.percentile(decision_s, 99) * 1e3),
        # CPU time of the deciding thread: what the decision costs when no other process
        # preempts it (the wall-clock p99 also measures the machine's load).
        "decision_p99_cpu_ms": float(np.percentile(decision_cpu_s, 99) * 1e3),
        "cycle_ms_64_endpoints": float(np.median(cycle_s[1:]) * 1e3),
        "cycle_p99_ms": float(np.percentile(cycle_s[1:], 99) * 1e3),
        # CPU time of the process (every thread) per cycle: the cost without other processes
        "cycle_cpu_ms": float(np.median(cycle_cpu_s[1:]) * 1e3),
        "last_mode": decision.mode,
        "forbidden_imports": sorted(m for m in FORBIDDEN_MODULES if m in sys.modules),
    }


def _start_and_watch(config_path: Path, port: int, watch_s: float) -> dict[str, float]:
    """Launch ``budgetpilot sidecar``; seconds to ``/readyz`` and its peak RSS after ``watch_s``."""
    command = [sys.executable, "-m", "eval.cli", "sidecar", "--config", str(config_path)]
    log_path = config_path.with_suffix(".log")
    with log_path.open("wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        startup = _wait_ready(f"http://127.0.0.1:{port}/readyz", process, start, log_path)
        ticks = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        startup_cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(watch_s)
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {
        "startup_s": startup,
        "startup_cpu_s": startup_cpu,  # user + system CPU of the process until ready
        "rss_mb": int(peak.split()[1]) / 1024.0,
    }


def _wait_ready(
    url: str, process: subprocess.Popen, start: float, log: Path, timeout_s: float = 60.0
) -> float:
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"the sidecar was not ready within {timeout_s} s: {log.read_text()[-2000:]}")


def run(
    endpoints: int = 64, cycles: int = 40, decisions: int = 3000, policy: Path | None = None
) -> dict:
    """Run the whole benchmark (see the module docstring) and return its figures."""
    with tempfile.TemporaryDirectory(prefix="budgetpilot-perf-sidecar-") as tmp:
        work = Path(tmp)
        timed = timed_policy(work / "timed", endpoints, policy)
        ready = work / "fleet.url"
        fleet = subprocess.Popen([*_SELF, "serve", str(endpoints), str(ready)])
        try:
            base_url = _wait_file(ready, fleet)
            port = free_port()
            config = sidecar_config(timed, base_url, endpoints, port=port, interval_s=1.0)
            config_path = work / "sidecar.yaml"
            config_path.write_text(yaml.safe_dump(config))
            measured = json.loads(
                subprocess.run(
                    [
                        *_SELF,
                        "measure",
                        str(config_path),
                        str(cycles),
                        str(decisions),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            measured.update(_start_and_watch(config_path, port, watch_s=3.0))
            measured.update(prometheus_figures(policy, work))
        finally:
            fleet.terminate()
            fleet.wait(timeout=10)
    return {
        "endpoints": endpoints,
        **measured,
        "policy": "linear stand-in" if policy is None else policy.name,
        "load_average_1m": os.getloadavg()[0],  # other work on the machine inflates wall times
        "cpus": os.cpu_count(),
    }


# ------------------------------------------------------------------------------------------------
# Reading from Prometheus


#: Replicas whose signals one cycle reads from Prometheus.
PROMETHEUS_REPLICAS = 256
#: Days of history the bootstrap reads, and the seconds between its samples (the default spec's
#: resolution).
HISTORY_DAYS, HISTORY_STEP_S = 30, 30.0


def prometheus_figures(policy: Path | None, work: Path) -> dict[str, Any]:
    """``cycle_ms_prometheus_256`` and ``bootstrap_s_30d`` (with what they read), or why they
    could not be measured; ``policy`` as for :func:`timed_policy`."""
    import shutil

    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        reason = "prometheus and promtool (Debian package `prometheus`) are not installed"
        return {"cycle_ms_prometheus_256": None, "bootstrap_s_30d": None, "prometheus": reason}
    timed = timed_policy(work / "timed-256", PROMETHEUS_REPLICAS, policy)
    return {**_prometheus_cycle(timed, work), **_bootstrap_30d(work)}


def prometheus_cycle() -> dict[str, Any]:
    """``cycle_ms_prometheus_256`` and its companions alone (about a minute, where the whole
    benchmark takes minutes), with the machine's load: ``python -m eval.perf_sidecar
    prometheus-cycle``."""
    with tempfile.TemporaryDirectory(prefix="budgetpilot-perf-sidecar-") as tmp:
        work = Path(tmp)
        figures = _prometheus_cycle(timed_policy(work / "timed", PROMETHEUS_REPLICAS), work)
    return {**figures, "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}


def _prometheus_cycle(policy: Path, work: Path) -> dict[str, Any]:
    """Median cycle of a sidecar reading 256 replicas' signals from a real Prometheus that
    scrapes them (the realistic pages of :func:`engine_pages`)."""
    from slo.prometheus_server import scrape_configs, start_prometheus

    replicas = PROMETHEUS_REPLICAS
    ready = work / "fleet-256.url"
    fleet = subprocess.Popen([*_SELF, "serve", str(replicas), str(ready)])
    server = None
    try:
        base_url = _wait_file(ready, fleet)
        engines = [
            {"name": f"strong-{i}", "metrics_url": f"{base_url}/engines/strong-{i}/metrics"}
            for i in range(replicas)
        ]
        scrape = scrape_configs(base_url, engines)
        server = start_prometheus(
            work / "cycle.yml", work / "tsdb-cycle", scrape, scrape_interval="5s"
        )
        deadline = time.monotonic() + 120.0
        while _targets_up(server) < replicas + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("Prometheus did not scrape the 256 replicas within 120 s")
            time.sleep(0.5)
        prometheus = {"url": server.url, "endpoint_label": "replica", "bootstrap": False}
        config = sidecar_config(policy, base_url, replicas, prometheus=prometheus, port=0)
        config_path = work / "sidecar-prometheus.yaml"
        config_path.write_text(yaml.safe_dump(config))
        measured = json.loads(
            subprocess.run(
                [*_SELF, "measure", str(config_path), "30", "10"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    finally:
        if server is not None:
            server.process.terminate()
            server.process.wait(timeout=30)
        fleet.terminate()
        fleet.wait(timeout=10)
    return {
        "cycle_ms_prometheus_256": measured["cycle_ms_64_endpoints"],
        "cycle_p99_ms_prometheus_256": measured["cycle_p99_ms"],
        "cycle_cpu_ms_prometheus_256": measured["cycle_cpu_ms"],
    }


def _targets_up(server: Any) -> int:
    try:
        result = server.query("count(up == 1)")
    except OSError:
        return 0
    return int(float(result[0]["value"][1])) if result else 0


def _bootstrap_30d(work: Path) -> dict[str, Any]:
    """Seconds to bootstrap the default spec's budgets from 30 days of one replica's and its
    router's history, sampled every 30 s and backfilled with promtool."""
    from concurrent.futures import ThreadPoolExecutor

    from policies.sidecar.prometheus import PrometheusAPI, bootstrap_budgets
    from slo import BudgetEngine
    from slo.history import backfill
    from slo.metrics import load_mapping
    from slo.prometheus_server import start_prometheus
    from slo.spec import default_spec

    spec = default_spec()
    end = float(np.floor(time.time() / HISTORY_STEP_S) * HISTORY_STEP_S)
    start = time.perf_counter()
    tsdb = work / "tsdb-history"

    def backfilled(chunk: Path) -> None:
        backfill(chunk, tsdb)
        chunk.unlink()

    with ThreadPoolExecutor(2) as pool:  # promtool works on a block while the next is written
        list(pool.map(backfilled, _write_history_30d(work / "history", spec, end)))
    written_s = time.perf_counter() - start
    retention = ["--storage.tsdb.retention.time=90d"]
    server = start_prometheus(
        work / "history.yml", tsdb, [], extra_args=retention, ready_within_s=300
    )
    try:
        engine = BudgetEngine(spec)
        api = PrometheusAPI(server.url, timeout_s=60.0)
        report = bootstrap_budgets(api, engine, load_mapping("vllm"), end)
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
    return {
        "bootstrap_s_30d": report.seconds,
        "bootstrap_coverage_min": min(report.coverage.values()),
        "bootstrap_events": sum(report.events.values()),
        "history_write_s": written_s,  # OpenMetrics and promtool: the setup, not the figure
    }


#: promtool writes blocks of two hours and reads its whole input for each: the history is
#: written one block per file.
_BLOCK_S = 7200.0


def _write_history_30d(directory: Path, spec: Any, end: float) -> Iterator[Path]:
    """Write 30 days of one replica's and its router's SLI series (every 30 s, ending at
    ``end``), one OpenMetrics file per two-hour block, yielding each file once written: the
    counters of 12 successive realistic pages, repeated as traffic that keeps coming."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    from slo.history import SLISeries, write_family

    rng = np.random.default_rng(0)
    wanted = SLISeries.of(spec, "vllm")
    sources = (
        (engine_pages(spec, 12, rng), {"replica": "strong-0", "pool": "strong"}),
        (router_pages(spec, 12, rng, 600), {"replica": "router"}),
    )
    families: dict[str, tuple[str, dict[tuple, list[float]]]] = {}
    for pages, labels in sources:
        for page in pages:
            for family in text_string_to_metric_families(page):
                for sample in family.samples:
                    if wanted.keeps(sample.name, sample.labels):
                        key = (sample.name, tuple(sorted({**sample.labels, **labels}.items())))
                        kind, series = families.setdefault(family.name, (family.type, {}))
                        series.setdefault(key, []).append(sample.value)
    points = int(HISTORY_DAYS * 86400 / HISTORY_STEP_S)
    times = end - HISTORY_STEP_S * np.arange(points - 1, -1, -1)
    cycles, within = np.divmod(np.arange(points), 12)
    values = {
        key: cycles * history[-1] + np.asarray(history)[within]
        for _, series in families.values()
        for key, history in series.items()
    }
    blocks = np.floor(times / _BLOCK_S)
    directory.mkdir(parents=True, exist_ok=True)
    for block in np.unique(blocks):
        rows = np.flatnonzero(blocks == block)
        path = directory / f"{int(block)}.om.txt"
        with path.open("w") as out:
            for name, (kind, series) in families.items():
                samples = (
                    Sample(sample_name, dict(label_items), float(v), float(t))
                    for (sample_name, label_items) in series
                    for v, t in zip(
                        values[(sample_name, label_items)][rows], times[rows], strict=True
                    )
                )
                write_family(out, name, kind, samples)
            out.write("# EOF\n")
        yield path


def _wait_file(path: Path, process: subprocess.Popen, timeout_s: float = 120.0) -> str:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if path.exists() and path.read_text():
            return path.read_text()
        if process.poll() is not None:
            raise RuntimeError("the page server exited")
        time.sleep(0.05)
    raise RuntimeError("the page server did not start")


def main(argv: list[str] | None = None) -> None:
    """Subprocess entry points of the benchmark (``serve``, ``measure``), and
    ``prometheus-cycle`` (:func:`prometheus_cycle`)."""
    parser = argparse.ArgumentParser(prog="python -m eval.perf_sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("endpoints", type=int)
    serve.add_argument("ready_file", type=Path)
    measure = sub.add_parser("measure")
    measure.add_argument("config", type=Path)
    measure.add_argument("cycles", type=int)
    measure.add_argument("decisions", type=int)
    sub.add_parser("prometheus-cycle", help="cycle_ms_prometheus_256 alone (JSON)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        _serve_fleet(args.endpoints, args.ready_file)
    elif args.command == "prometheus-cycle":
        print(json.dumps(prometheus_cycle()))
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        print(json.dumps(_measure(args.config, args.cycles, args.decisions)))


if __name__ == "__main__":
    main()
