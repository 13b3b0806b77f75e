"""The fleet around the replicas: tiers and downgrade routing, routing policies, admission and
shedding, tenant weights, failures and recovery."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim import (
    Knobs,
    PoolConfig,
    RouterConfig,
    ScheduledFailure,
    SimConfig,
    Simulator,
    TenantConfig,
    WorkloadConfig,
)
from slo.events import Outcome, Reason


def events_until(sim: Simulator, until: float, step: float = 15.0) -> np.ndarray:
    chunks = []
    while sim.now < until:
        chunks.append(sim.advance(min(until, sim.now + step)))
    return np.concatenate(chunks)


def two_tier_config(rate: float = 10.0, **router) -> SimConfig:
    return SimConfig(
        pools=[
            PoolConfig(name="strong", replicas=2),
            PoolConfig(name="cheap", model="llama-3.2-1b", replicas=1, tier=1, capability=0.6),
        ],
        router=RouterConfig(**router),
        workload=WorkloadConfig(kind="poisson", rate=rate),
    )


def test_cheap_tier_share_moves_the_easiest_traffic_and_unloads_the_strong_tier():
    decode_tokens, served_share = [], []
    for share in (0.0, 0.5):
        config = two_tier_config().model_copy(update={"knobs": Knobs(cheap_tier_share=share)})
        sim = Simulator(config, seed=0)
        events = events_until(sim, 600.0)
        stats = sim.fleet_stats()
        decode_tokens.append(stats.decode_tokens[stats.pool == 0].sum())
        served = events[events["outcome"] == Outcome.SERVED]
        cheap = served["tier"] == 1
        served_share.append(cheap.mean())
        assert np.all(served["intended_tier"] == 0)
        assert np.all(served["quality_loss"][~cheap] == 0.0)
        if share:
            # The easiest requests go down, and only those harder than its capability lose.
            assert served["difficulty"][cheap].mean() < served["difficulty"][~cheap].mean() - 0.2
            hard = served["difficulty"][cheap] > 0.6
            assert np.all(served["quality_loss"][cheap][hard] > 0)
            assert np.all(served["quality_loss"][cheap][~hard] == 0)
    assert served_share[0] == 0.0
    assert served_share[1] == pytest.approx(0.5, abs=0.05)
    assert decode_tokens[1] < 0.65 * decode_tokens[0]


@pytest.mark.parametrize("policy", ["round-robin", "least-outstanding", "kv-aware"])
def test_routing_policies_spread_load(policy):
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=4)],
        router=RouterConfig(policy=policy),
        workload=WorkloadConfig(kind="poisson", rate=12.0),
    )
    events = events_until(Simulator(config, seed=0), 300.0)
    per_replica = np.bincount(events["replica"][events["replica"] >= 0], minlength=4)
    assert per_replica.min() > 0.7 * per_replica.mean()


@pytest.mark.parametrize("shed_below,shed_tenants", [(0, set()), (1, {0}), (2, {0, 1})])
def test_shedding_rejects_lowest_priorities_first(shed_below, shed_tenants):
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=2)],
        tenants=[TenantConfig(name=f"p{p}", priority=p) for p in range(3)],
        workload=WorkloadConfig(kind="poisson", rate=9.0),
        knobs=Knobs(shed_priority_below=shed_below),
    )
    events = events_until(Simulator(config, seed=1), 120.0)
    for tenant in range(3):
        mine = events[events["tenant"] == tenant]
        shed = (mine["outcome"] == Outcome.REJECTED) & (mine["reason"] == Reason.ADMISSION)
        assert len(mine) > 50
        assert shed.all() if tenant in shed_tenants else not shed.any()


def test_token_bucket_caps_the_admitted_rate():
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=2)],
        workload=WorkloadConfig(kind="poisson", rate=12.0),
        knobs=Knobs(admission_rate_limit=5.0),
    )
    events = events_until(Simulator(config, seed=0), 300.0)
    admitted = events["reason"] != Reason.ADMISSION
    assert admitted.sum() / 300.0 == pytest.approx(5.0, rel=0.05)


def test_concurrency_limit_bounds_requests_in_flight():
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=1)],
        workload=WorkloadConfig(kind="poisson", rate=30.0),
        knobs=Knobs(concurrency_limit=50),
    )
    sim = Simulator(config, seed=0)
    rejected = 0
    for t in range(10, 200, 10):
        events = sim.advance(float(t))
        assert sim.in_flight <= 50
        rejected += int((events["reason"] == Reason.ADMISSION).sum())
    assert rejected > 0


def test_tenant_weights_share_an_overloaded_queue():
    tenants = [TenantConfig(name="heavy"), TenantConfig(name="light")]
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=1)],
        tenants=tenants,
        workload=WorkloadConfig(kind="poisson", rate=20.0),
        knobs=Knobs(tenant_weights=(3.0, 1.0)),
    )
    events = events_until(Simulator(config, seed=0), 400.0)
    served = events[events["outcome"] == Outcome.SERVED]
    per_tenant = np.bincount(served["tenant"], minlength=2)
    assert per_tenant[0] / per_tenant[1] == pytest.approx(3.0, rel=0.2)


def test_failure_fails_requests_and_recovery_restores_service():
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=2)],
        failures=[ScheduledFailure(pool="strong", replica=1, at_s=100.0, duration_s=50.0)],
        workload=WorkloadConfig(kind="poisson", rate=8.0),
    )
    sim = Simulator(config, seed=0)
    events = events_until(sim, 300.0)
    failed = events[events["outcome"] == Outcome.FAILED]
    assert len(failed) > 0
    assert np.all(failed["reason"] == Reason.REPLICA_FAILURE)
    assert np.all(failed["t_end"] == 100.0) and np.all(failed["replica"] == 1)
    on_1 = events[events["replica"] == 1]
    during = (on_1["t_arrival"] >= 100.0) & (on_1["t_arrival"] < 150.0)
    assert not during.any(), "the router avoids a failed replica"
    after = on_1[(on_1["t_arrival"] >= 150.0) & (on_1["outcome"] == Outcome.SERVED)]
    assert len(after) > 100, "the recovered replica serves again"
    assert sim.arrivals == len(events) + sim.in_flight


def test_random_failures_follow_mtbf():
    config = SimConfig(
        pools=[PoolConfig(name="strong", replicas=4, mtbf_s=200.0, mttr_s=20.0)],
        workload=WorkloadConfig(kind="poisson", rate=10.0),
    )
    sim = Simulator(config, seed=0)
    events = events_until(sim, 2000.0, step=50.0)
    outages = np.unique(events["t_end"][events["outcome"] == Outcome.FAILED])
    assert 20 < len(outages) < 60  # ~4 replicas x 2000 s / 220 s per cycle = 36
    healthy = sim.series()["healthy"]
    assert healthy.min() < 4 and healthy.max() == 4


@pytest.mark.parametrize("fallback", [True, False])
def test_tier_without_healthy_replica(fallback):
    config = two_tier_config(rate=6.0, fallback=fallback).model_copy(
        update={"knobs": Knobs(cheap_tier_share=0.5)}
    )
    sim = Simulator(config, seed=0)
    sim.fail_replica("cheap", 0, at_s=60.0, duration_s=120.0)
    events = events_until(sim, 180.0)
    during = events[(events["t_arrival"] > 60.0) & (events["t_arrival"] < 180.0)]
    no_replica = during["reason"] == Reason.NO_REPLICA
    if fallback:  # downgraded requests go back to the strong tier
        assert not no_replica.any()
        assert np.all(during["tier"][during["outcome"] == Outcome.SERVED] == 0)
    else:
        assert no_replica.mean() == pytest.approx(0.5, abs=0.1)
        assert np.all(during["outcome"][no_replica] == Outcome.REJECTED)


def test_set_capability_changes_quality_loss_from_now_on():
    config = two_tier_config().model_copy(update={"knobs": Knobs(cheap_tier_share=0.8)})
    sim = Simulator(config, seed=0)
    before = events_until(sim, 200.0)
    sim.set_capability("cheap", 0.0)
    after = events_until(sim, 400.0)

    def mean_loss(events):
        served = events[(events["outcome"] == Outcome.SERVED) & (events["tier"] == 1)]
        return served["quality_loss"].mean()

    assert mean_loss(after) > mean_loss(before) + 0.2
