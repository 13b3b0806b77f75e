"""Scaling pools: provisioning delays, draining, the replica cap, provisioned GPU-seconds, spot
interruptions, configuration errors, and fixed fleets left as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.sim import (
    AutoscalingConfig,
    ConfigError,
    Knobs,
    PoolConfig,
    ReplicaState,
    RouterConfig,
    SimConfig,
    Simulator,
    WorkloadConfig,
)
from envs.sim.workload import TraceReplay, Workload
from slo.events import Outcome, Reason

SERVING, PROVISIONING = ReplicaState.SERVING, ReplicaState.PROVISIONING
DRAINING, STOPPED = ReplicaState.DRAINING, ReplicaState.STOPPED


def pool_config(
    rate: float = 6.0, replicas: int = 1, max_replicas: int | None = 3, tp: int = 1, **scaling
) -> SimConfig:
    """One pool of Llama-2-7B replicas under Poisson, Azure-conversation traffic."""
    pool = PoolConfig(
        name="strong",
        replicas=replicas,
        max_replicas=max_replicas,
        tp=tp,
        autoscaling=AutoscalingConfig(**scaling),
    )
    return SimConfig(pools=[pool], workload=WorkloadConfig(kind="poisson", rate=rate))


def events_until(sim: Simulator, until: float, step: float = 10.0) -> np.ndarray:
    chunks = []
    while sim.now < until:
        chunks.append(sim.advance(min(until, sim.now + step)))
    return np.concatenate(chunks)


def one_request(tmp_path) -> Workload:
    """A workload of one short request at time 0 (a replay starts at its first row), the next
    after every test's horizon."""
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n100000,100,10\n")
    return Workload(TraceReplay(path, loop=False), None)


def test_fixed_pools_and_spare_slots_change_nothing():
    fixed = pool_config(max_replicas=None, replicas=2)
    spare = pool_config(max_replicas=5, replicas=2)
    assert fixed.pools[0].replica_slots == 2 and spare.pools[0].replica_slots == 5
    runs = []
    for config in (fixed, spare):
        sim = Simulator(config, seed=3)
        runs.append((events_until(sim, 300.0), sim.fleet_stats()))
    (events, stats), (spare_events, spare_stats) = runs
    assert len(events) > 1000 and events.tobytes() == spare_events.tobytes()
    np.testing.assert_array_equal(stats.lifecycle, [SERVING] * 2)
    np.testing.assert_array_equal(spare_stats.lifecycle, [SERVING] * 2 + [STOPPED] * 3)
    for s in (stats, spare_stats):
        assert s.pool_desired.tolist() == [2] and s.pool_serving.tolist() == [2]
        assert s.pool_provisioning.tolist() == [0] and s.pool_draining.tolist() == [0]
        assert s.pool_provisioned_gpu_s.tolist() == [600.0]
        assert s.pool_interruptions.tolist() == [0]


def test_new_replicas_serve_only_after_their_provisioning_delay():
    config = pool_config(provision_base_s=30.0, provision_s_per_gib=2.0, provision_jitter=0.0)
    delay = config.pools[0].nominal_provisioning_s()
    assert delay == pytest.approx(30.0 + 2.0 * 12.55, abs=0.05)  # 6.7 B bf16 weights: 12.55 GiB
    sim = Simulator(config, seed=0)
    events = [events_until(sim, 50.0)]
    assert sim.set_desired_replicas("strong", 3) == 3
    assert sim.desired_replicas == {"strong": 3}
    ready = 50.0 + delay
    events.append(sim.advance(ready - 1e-6))
    stats = sim.fleet_stats()
    np.testing.assert_array_equal(stats.lifecycle, [SERVING, PROVISIONING, PROVISIONING])
    assert stats.pool_provisioning.tolist() == [2]
    events.append(sim.advance(ready + 1e-6))
    np.testing.assert_array_equal(sim.fleet_stats().lifecycle, [SERVING] * 3)
    events.append(events_until(sim, 300.0))
    events = np.concatenate(events)
    for r in (1, 2):
        arrivals = events["t_arrival"][events["replica"] == r]
        assert len(arrivals) > 100
        assert ready <= arrivals.min() < ready + 2.0  # the first requests after it is ready


def test_provisioning_delays_are_lognormal_around_the_nominal_and_seeded(tmp_path):
    def delays(seed: int) -> np.ndarray:
        config = pool_config(replicas=0, max_replicas=200)
        sim = Simulator(config, workload=one_request(tmp_path), seed=seed)
        sim.set_desired_replicas("strong", 200)
        ready = np.full(200, np.nan)
        while np.isnan(ready).any():
            sim.advance(sim.now + 2.0)
            serving = sim.fleet_stats().lifecycle == SERVING
            ready[serving & np.isnan(ready)] = sim.now
        return ready - 1.0  # the middle of the step it became ready in

    nominal = pool_config().pools[0].nominal_provisioning_s()
    first, again, other = delays(0), delays(0), delays(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    logs = np.log(first / nominal)
    assert abs(np.median(logs)) < 0.05  # the nominal delay is the median
    assert np.std(logs) == pytest.approx(0.2, abs=0.04)  # the default jitter


@pytest.mark.parametrize("drain_timeout_s", [math.inf, 2.0])
def test_draining_finishes_or_aborts_its_requests_admits_none_then_stops(drain_timeout_s):
    sim = Simulator(pool_config(replicas=2, max_replicas=2, drain_timeout_s=drain_timeout_s))
    events = [events_until(sim, 100.0)]
    sim.set_desired_replicas("strong", 1)
    lifecycle = sim.fleet_stats().lifecycle
    assert sorted(lifecycle.tolist()) == [SERVING, DRAINING]
    drained = int(np.flatnonzero(lifecycle == DRAINING)[0])
    events = np.concatenate(events + [events_until(sim, 300.0)])
    mine = events[events["replica"] == drained]
    assert mine["t_arrival"].max() < 100.0, "no request reaches a draining replica"
    left = mine[mine["t_end"] > 100.0]
    assert len(left) > 5
    stopped_at = mine["t_end"].max()
    if math.isinf(drain_timeout_s):
        assert np.all(left["outcome"] == Outcome.SERVED)
    else:
        assert stopped_at == 100.0 + drain_timeout_s
        cut = left["t_end"] == stopped_at
        assert cut.any() and np.all(left["outcome"][~cut] == Outcome.SERVED)
        assert np.all(left["outcome"][cut] == Outcome.ABORTED)
        assert np.all(left["reason"][cut] == Reason.TIMEOUT)
    stats = sim.fleet_stats()
    assert stats.lifecycle[drained] == STOPPED and stats.pool_serving.tolist() == [1]
    assert stats.pool_provisioned_gpu_s[0] == pytest.approx(300.0 + stopped_at, abs=1e-9)
    assert sim.arrivals == len(events) + sim.in_flight


def test_a_failure_ends_a_drain():
    sim = Simulator(pool_config(replicas=2, max_replicas=2, drain_timeout_s=math.inf))
    events_until(sim, 100.0)
    sim.set_desired_replicas("strong", 1)
    drained = int(np.flatnonzero(sim.fleet_stats().lifecycle == DRAINING)[0])
    sim.fail_replica("strong", drained, at_s=101.0, duration_s=50.0)
    events = events_until(sim, 200.0)
    failed = events[events["outcome"] == Outcome.FAILED]
    assert len(failed) > 0 and np.all(failed["t_end"] == 101.0)
    assert np.all(failed["replica"] == drained)
    stats = sim.fleet_stats()
    assert stats.lifecycle[drained] == STOPPED
    assert stats.pool_provisioned_gpu_s[0] == pytest.approx(200.0 + 101.0, abs=1e-9)


def test_cap_clamping_and_undraining():
    sim = Simulator(pool_config(replicas=2, max_replicas=3, drain_timeout_s=math.inf))
    events_until(sim, 20.0)
    assert sim.set_desired_replicas("strong", 10) == 3
    assert sim.set_desired_replicas("strong", np.int64(-4)) == 0
    assert sim.desired_replicas == {"strong": 0}
    assert sim.fleet_stats().pool_draining.tolist() == [2]
    sim.advance(21.0)
    with pytest.raises(ValueError, match="no pool named 'weak'"):
        sim.set_desired_replicas("weak", 1)
    with pytest.raises(TypeError, match="must be an integer"):
        sim.set_desired_replicas("strong", 1.5)
    sim.set_desired_replicas("strong", 3)
    stats = sim.fleet_stats()
    # Both replicas were still draining: they serve again at once; the third slot provisions.
    np.testing.assert_array_equal(stats.lifecycle, [SERVING, SERVING, PROVISIONING])
    for _ in range(20):
        sim.advance(sim.now + 30.0)
        stats = sim.fleet_stats()
        assert stats.lifecycle.shape == (3,)
        assert stats.pool_provisioning + stats.pool_serving + stats.pool_draining <= 3
    assert stats.pool_serving.tolist() == [3]


@pytest.mark.parametrize("fallback", [True, False])
def test_a_tier_scaled_to_zero_falls_back_or_rejects(fallback):
    config = SimConfig(
        pools=[
            PoolConfig(name="strong", replicas=2),
            PoolConfig(name="cheap", model="llama-3.2-1b", replicas=1, tier=1, capability=0.6),
        ],
        router=RouterConfig(fallback=fallback),
        workload=WorkloadConfig(kind="poisson", rate=6.0),
        knobs=Knobs(cheap_tier_share=0.5),
    )
    sim = Simulator(config, seed=0)
    before = events_until(sim, 60.0)
    assert sim.set_desired_replicas("cheap", 0) == 0
    after = events_until(sim, 180.0)
    assert (before["tier"] == 1).any()
    assert not np.any((after["tier"] == 1) & (after["t_arrival"] >= 60.0))
    no_replica = (after["reason"] == Reason.NO_REPLICA).mean()
    assert no_replica == 0.0 if fallback else no_replica == pytest.approx(0.5, abs=0.1)
    assert sim.fleet_stats().lifecycle.tolist() == [SERVING, SERVING, STOPPED]


def test_provisioned_gpu_seconds_of_a_scripted_scaling(tmp_path):
    config = pool_config(replicas=1, max_replicas=4, tp=2, provision_jitter=0.0)
    delay = config.pools[0].nominal_provisioning_s()
    sim = Simulator(config, workload=one_request(tmp_path), seed=0)
    script = [(100.0, 3), (110.0, 2), (1000.0, 1)]  # (time, desired replicas)
    for t, n in script:
        sim.advance(t)
        sim.set_desired_replicas("strong", n)
        if t == 110.0:  # one of the two provisioning replicas was cancelled
            assert sim.fleet_stats().pool_provisioning.tolist() == [1]
    sim.advance(1200.0)
    stats = sim.fleet_stats()
    assert sim.arrivals == 1 and sim.in_flight == 0 and stats.pool_serving.tolist() == [1]
    # 2 GPUs x (first replica 1200 s + cancelled one 10 s + the other from 100 s to 1000 s)
    assert stats.pool_provisioned_gpu_s[0] == pytest.approx(2 * (1200 + 10 + 900), abs=1e-9)
    series = sim.series()
    assert series["provisioned_gpu_s"][-1] == stats.pool_provisioned_gpu_s[0]
    assert 100.0 + delay < 1000.0
    assert series["serving"].tolist() == [1, 1, 2, 1]  # at 100, 110, 1000 (before), 1200 s


def test_spot_interruption_drains_for_the_notice_then_takes_the_replica_away():
    config = pool_config(
        rate=6.0, replicas=2, max_replicas=2, spot_rate_per_hour=4.0, spot_notice_s=1.0
    )
    sim = Simulator(config, seed=0)
    events = events_until(sim, 1800.0, step=30.0)
    stats = sim.fleet_stats()
    assert stats.pool_interruptions[0] >= 2
    lost = events[events["outcome"] == Outcome.FAILED]
    assert len(lost) > 0 and np.all(lost["reason"] == Reason.REPLICA_FAILURE)
    for t_away in np.unique(lost["t_end"]):
        replica = lost["replica"][lost["t_end"] == t_away][0]
        mine = events[events["replica"] == replica]
        noticed = (mine["t_arrival"] > t_away - 1.0) & (mine["t_arrival"] <= t_away)
        assert not noticed.any(), "no request reaches a replica under notice"
    # The pool replaces what it lost: its slots only free up when a replica is taken away.
    assert sim.series()["serving"].min() < 2
    assert stats.pool_serving[0] + stats.pool_provisioning[0] == 2
    assert sim.arrivals == len(events) + sim.in_flight


def test_spot_interruptions_follow_their_rate_and_seed():
    def run(seed: int) -> tuple[np.ndarray, float, int]:
        config = pool_config(
            rate=0.5, replicas=4, max_replicas=8, spot_rate_per_hour=0.5, spot_notice_s=60.0
        )
        sim = Simulator(config, seed=seed)
        events = events_until(sim, 40 * 3600.0, step=600.0)
        stats = sim.fleet_stats()
        return events, stats.pool_provisioned_gpu_s[0] / 3600.0, int(stats.pool_interruptions[0])

    events, replica_hours, interruptions = run(0)
    expected = 0.5 * replica_hours  # every provisioned replica-hour is exposed
    assert replica_hours > 4 * 40
    assert abs(interruptions - expected) < 4 * math.sqrt(expected)
    again, other = run(0)[0], run(1)[0]
    assert events.tobytes() == again.tobytes()
    assert events.tobytes() != other.tobytes()


@pytest.mark.parametrize(
    "pool,field",
    [
        ({"replicas": 4, "max_replicas": 2}, "pools.0.max_replicas: Value error, must be at least"),
        ({"max_replicas": -1}, "pools.0.max_replicas"),
        ({"autoscaling": {"provision_jitter": -0.1}}, "pools.0.autoscaling.provision_jitter"),
        ({"autoscaling": {"provision_base_s": "inf"}}, "pools.0.autoscaling.provision_base_s"),
        ({"autoscaling": {"spot_rate_per_hour": "often"}}, "autoscaling.spot_rate_per_hour"),
        ({"autoscaling": {"drain_timeout_s": -1}}, "pools.0.autoscaling.drain_timeout_s"),
        ({"autoscaling": {"warmup_s": 10}}, "pools.0.autoscaling.warmup_s"),
    ],
)
def test_bad_scaling_configuration_names_the_field(pool, field):
    with pytest.raises(ConfigError, match="fleet.yaml") as err:
        SimConfig.from_dict({"pools": [{"name": "strong", **pool}]}, source="fleet.yaml")
    assert field in str(err.value)


def test_failures_may_name_every_replica_slot():
    pools = [{"name": "strong", "replicas": 1, "max_replicas": 3}]
    failure = {"pool": "strong", "at_s": 1, "duration_s": 1}
    SimConfig.from_dict({"pools": pools, "failures": [{**failure, "replica": 2}]})
    with pytest.raises(ConfigError, match="failures.0.replica: pool 'strong' has 3 replicas"):
        SimConfig.from_dict({"pools": pools, "failures": [{**failure, "replica": 3}]})
