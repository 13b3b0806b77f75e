"""The replica engine: exact timing against a step-by-step reference, conservation, KV limits,
preemption, offload, saturation, knobs, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim import Knobs, PoolConfig, SimConfig, Simulator, TenantConfig, WorkloadConfig
from envs.sim.steptime import StepTimeModel, iteration_time, prefill_attn_pairs
from envs.sim.workload import TraceReplay, Workload
from slo.events import ITL_BUCKETS_S, Outcome, Reason


def small_config(rate: float = 8.0, replicas: int = 2, **pool) -> SimConfig:
    """A small fleet of Llama-2-7B replicas under Poisson, Azure-conversation traffic."""
    return SimConfig(
        pools=[PoolConfig(name="strong", replicas=replicas, **pool)],
        workload=WorkloadConfig(kind="poisson", rate=rate),
    )


def run_events(sim: Simulator, until: float, step: float = 10.0) -> np.ndarray:
    """All events up to ``until``, checking time order at every advance."""
    chunks = []
    while sim.now < until:
        start = sim.now
        events = sim.advance(min(until, start + step))
        assert np.all(np.diff(events["t_end"]) >= 0), "events are sorted by end time"
        assert np.all(events["t_end"] >= start) and np.all(events["t_end"] <= sim.now)
        assert np.all(events["t_end"] >= events["t_arrival"])
        chunks.append(events)
    return np.concatenate(chunks)


def trace_workload(tmp_path, rows: list[tuple[float, int, int]]) -> Workload:
    """A replay of explicit (time, prompt, output) requests, played once."""
    path = tmp_path / "trace.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [f"{t},{p},{o}" for t, p, o in rows]
    path.write_text("\n".join(lines) + "\n")
    return Workload(TraceReplay(path, loop=False), None)


def step_by_step(coeffs, rows, offload: float):
    """Reference: one replica stepped iteration by iteration (vLLM v1 rules, no KV pressure).

    Returns per request (ttft, e2e, gaps)."""
    pending = sorted(range(len(rows)), key=lambda i: rows[i][0])
    running: list[dict] = []
    results: dict[int, tuple[float, float, list[float]]] = {}
    t = 0.0
    while pending or running:
        if not running and rows[pending[0]][0] > t:
            t = rows[pending[0]][0]
        prefill, pairs = 0, 0.0
        while pending and rows[pending[0]][0] <= t:
            i = pending.pop(0)
            running.append({"i": i, "gen": 0, "prefill": True, "gaps": [], "first": None})
            prefill += rows[i][1]
            pairs += prefill_attn_pairs(rows[i][1])
        decoders = [r for r in running if not r["prefill"]]
        ctx = sum(rows[r["i"]][1] + r["gen"] for r in decoders)
        d = iteration_time(
            coeffs, prefill, pairs, len(decoders), (1 - offload) * ctx, offload * ctx
        )
        t += d
        for r in running:
            if r["prefill"]:
                r["prefill"], r["first"] = False, t
            else:
                r["gaps"].append(d)
            r["gen"] += 1
        for r in [r for r in running if r["gen"] >= rows[r["i"]][2]]:
            running.remove(r)
            arrival = rows[r["i"]][0]
            results[r["i"]] = (r["first"] - arrival, t - arrival, r["gaps"])
    return results


@pytest.mark.parametrize("offload", [0.0, 0.5])
def test_event_driven_timing_matches_step_by_step(tmp_path, offload):
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.0, 20.0, 40)).round(4)
    times -= times[0]
    rows = [
        (float(t), int(p), int(o))
        for t, p, o in zip(times, rng.integers(20, 600, 40), rng.integers(2, 300, 40), strict=True)
    ]
    config = small_config(replicas=1).model_copy(update={"knobs": Knobs(offload_fraction=offload)})
    sim = Simulator(config, workload=trace_workload(tmp_path, rows), seed=0)
    events = run_events(sim, 200.0)
    assert len(events) == len(rows) and sim.in_flight == 0
    coeffs = StepTimeModel.for_deployment(config.pools[0].deployment()).coeffs
    expected = step_by_step(coeffs, rows, offload)
    by_arrival = {round(float(t), 4): i for i, (t, _, _) in enumerate(rows)}
    edges = np.asarray(ITL_BUCKETS_S)
    for ev in events:
        ttft, e2e, gaps = expected[by_arrival[round(float(ev["t_arrival"]), 4)]]
        assert ev["outcome"] == Outcome.SERVED and ev["reason"] == Reason.STOP
        assert ev["ttft_s"] == pytest.approx(ttft, rel=1e-5)
        assert ev["e2e_s"] == pytest.approx(e2e, rel=1e-5)
        hist = np.bincount(np.searchsorted(edges, gaps), minlength=len(edges) + 1)
        np.testing.assert_array_equal(ev["itl_hist"], hist)
        if gaps:
            assert ev["itl_max_s"] == pytest.approx(max(gaps), rel=1e-5)


def outcome_counts(events: np.ndarray) -> dict[Outcome, int]:
    return {o: int((events["outcome"] == o).sum()) for o in Outcome}


def check_served_events(events: np.ndarray) -> None:
    """Per-request consistency of served events: every gap counted once, maxima in range."""
    served = events[events["outcome"] == Outcome.SERVED]
    assert len(served)
    np.testing.assert_array_equal(served["itl_hist"].sum(axis=1), served["output_tokens"] - 1)
    stop = served["reason"] == Reason.STOP
    np.testing.assert_array_equal(
        served["output_tokens"][stop], served["requested_output_tokens"][stop]
    )
    assert np.all(served["output_tokens"][~stop] < served["requested_output_tokens"][~stop])
    assert np.all(served["ttft_s"] > 0) and np.all(served["ttft_s"] <= served["e2e_s"])
    multi = served[served["output_tokens"] > 1]
    edges = np.asarray(ITL_BUCKETS_S, dtype=np.float32)
    top_bucket = np.array([np.flatnonzero(h).max() for h in multi["itl_hist"]])
    np.testing.assert_array_equal(np.searchsorted(edges, multi["itl_max_s"]), top_bucket)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_kv_pressure_preempts_and_never_exceeds_capacity(mode):
    # A quarter of an A100 for KV: a few hundred thousand tokens of demand on ~13k tokens.
    config = small_config(rate=12.0, gpu_memory_utilization=0.3, preemption_mode=mode)
    sim = Simulator(config, seed=1)
    events = run_events(sim, 300.0)
    stats = sim.fleet_stats()
    assert stats.preemptions.sum() > 0
    assert np.all(stats.kv_peak_blocks <= stats.kv_capacity_blocks)
    assert np.all(stats.kv_peak_blocks > 0.9 * stats.kv_capacity_blocks)
    assert events["preemptions"].sum() > 0
    assert sim.arrivals == len(events) + sim.in_flight
    check_served_events(events)


def test_shrinking_kv_pool_preempts_down_to_the_new_capacity():
    config = small_config(rate=12.0, gpu_memory_utilization=0.3)
    sim = Simulator(config.model_copy(update={"knobs": Knobs(offload_fraction=0.5)}), seed=0)
    before = run_events(sim, 200.0)
    wide = sim.fleet_stats()
    assert np.all(wide.kv_used_blocks > wide.kv_capacity_blocks / 2)
    sim.set_knobs(sim.knobs.replace(offload_fraction=0.0))
    events = run_events(sim, 400.0)
    narrow = sim.fleet_stats()
    assert np.all(narrow.kv_capacity_blocks * 2 == wide.kv_capacity_blocks)
    assert np.all(narrow.kv_peak_blocks <= narrow.kv_capacity_blocks)
    assert np.all(narrow.preemptions > wide.preemptions)
    assert sim.arrivals == sim.in_flight + len(before) + len(events)


def test_every_request_ends_once_with_mixed_outcomes():
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=2, max_model_len=3000, mtbf_s=120.0)],
        tenants=[
            TenantConfig(name="impatient", patience_s=2.0),
            TenantConfig(name="patient"),
        ],
        workload=WorkloadConfig(kind="bursty", rate=20.0),
        knobs=Knobs(concurrency_limit=300, max_output_tokens=400),
    )
    sim = Simulator(config, seed=2)
    events = run_events(sim, 600.0, step=30.0)
    assert sim.arrivals == len(events) + sim.in_flight
    counts = outcome_counts(events)
    assert all(counts[o] > 0 for o in Outcome), counts
    reasons = set(events["reason"].tolist())
    expected = {Reason.STOP, Reason.LENGTH, Reason.ADMISSION, Reason.TOO_LONG, Reason.TIMEOUT,
                Reason.REPLICA_FAILURE}  # fmt: skip
    assert expected <= reasons
    check_served_events(events)
    timeouts = events[events["reason"] == Reason.TIMEOUT]
    assert np.all(timeouts["tenant"] == 0)
    waited = timeouts["t_end"] - timeouts["t_arrival"]
    assert np.all(waited >= 2.0 - 1e-9) and np.all(waited < 2.5)


def test_overload_saturates_throughput_and_grows_queues():
    served_rate, waiting = [], []
    for rate in (4.0, 40.0):
        sim = Simulator(small_config(rate=rate, replicas=1), seed=0)
        sim.advance(120.0)
        early = sim.fleet_stats().waiting.sum()
        events = run_events(sim, 420.0)
        served_rate.append((events["outcome"] == Outcome.SERVED).sum() / 300.0)
        waiting.append((early, sim.fleet_stats().waiting.sum()))
    assert served_rate[0] == pytest.approx(4.0, rel=0.15)  # below capacity: serves what comes
    assert served_rate[1] < 0.5 * 40.0  # above: throughput is capped...
    assert waiting[1][1] > waiting[1][0] + 1000  # ...and the queue keeps growing


def test_offload_raises_kv_capacity_and_iteration_time():
    stats, itl = [], []
    for offload in (0.0, 0.5):
        config = small_config(rate=6.0, replicas=1)
        sim = Simulator(config.model_copy(update={"knobs": Knobs(offload_fraction=offload)}))
        events = run_events(sim, 300.0)
        stats.append(sim.fleet_stats())
        served = events[events["outcome"] == Outcome.SERVED]
        itl.append(np.median((served["e2e_s"] - served["ttft_s"]) / (served["output_tokens"] - 1)))
    assert stats[1].kv_capacity_blocks[0] == 2 * stats[0].kv_capacity_blocks[0]
    assert itl[1] > 1.2 * itl[0]


def test_knobs_apply_from_now_on():
    sim = Simulator(small_config(rate=10.0), seed=4)
    before = run_events(sim, 120.0)
    sim.set_knobs(sim.knobs.replace(max_context_tokens=512, max_output_tokens=64))
    after = run_events(sim, 400.0)
    assert not before["truncated"].any() and not (before["reason"] == Reason.LENGTH).any()
    arrived_after = after[after["t_arrival"] >= 120.0]
    long = arrived_after["original_prompt_tokens"] > 512
    assert long.any()
    np.testing.assert_array_equal(arrived_after["truncated"], long)
    assert np.all(arrived_after["prompt_tokens"][long] == 512)
    served = arrived_after[arrived_after["outcome"] == Outcome.SERVED]
    assert served["output_tokens"].max() == 64
    cut = served["requested_output_tokens"] > 64
    assert np.all(served["reason"][cut] == Reason.LENGTH)
    assert np.all(served["reason"][~cut] == Reason.STOP)


def test_prompt_that_can_never_fit_is_rejected_too_long():
    sim = Simulator(small_config(max_model_len=1024), seed=0)
    events = run_events(sim, 60.0)
    too_long = events["reason"] == Reason.TOO_LONG
    assert too_long.any()
    assert np.all(events["outcome"][too_long] == Outcome.REJECTED)
    assert np.all(events["prompt_tokens"][too_long] >= 1024)
    assert np.all(events["prompt_tokens"][~too_long] < 1024)


def test_same_seed_same_events_other_seed_differs():
    def run(seed: int) -> np.ndarray:
        sim = Simulator(small_config(rate=10.0, mtbf_s=60.0), seed=seed)
        events = run_events(sim, 200.0, step=7.0)
        sim.set_knobs(sim.knobs.replace(offload_fraction=0.3))
        return np.concatenate([events, run_events(sim, 300.0, step=13.0)])

    first, again, other = run(5), run(5), run(6)
    assert first.tobytes() == again.tobytes()
    assert len(first) != len(other) or first.tobytes() != other.tobytes()


def test_fleet_stats_and_series():
    sim = Simulator(small_config(rate=6.0, replicas=3), seed=0)
    sim.fleet_stats()
    for t in (30.0, 60.0, 90.0):
        sim.advance(t)
    stats = sim.fleet_stats()
    assert stats.t == 90.0 and stats.pool_names == ("strong",)
    assert stats.kv_usage_mean.shape == (3,)
    assert np.all((stats.kv_usage_mean > 0) & (stats.kv_usage_mean < 1))
    assert np.all((stats.busy_fraction > 0) & (stats.busy_fraction <= 1 + 1e-9))
    assert np.all(stats.healthy) and np.all(stats.max_num_seqs == 256)
    series = sim.series()
    np.testing.assert_array_equal(series["t"], [30.0, 60.0, 90.0])
    assert series["arrivals"].sum() == sim.arrivals


def test_advance_rejects_going_back():
    sim = Simulator(small_config(), seed=0)
    sim.advance(10.0)
    with pytest.raises(ValueError, match="backwards"):
        sim.advance(5.0)
