"""Observation contract v3: the same features for any fleet, pools by role, fleets drawn per
episode."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.contract import (
    OBSERVATION_VERSION_V3,
    ROLE_FEATURES,
    ROLES,
    FleetShape,
    FleetSignalTracker,
    ObservationContract,
    ReplicaGauges,
    ReplicaLifecycle,
    fleet_independent_contract,
    role_of_tier,
)
from envs.fleet_env import LLMFleetEnv
from envs.paths import EXAMPLE_FLEETS_DIR
from envs.scenarios import REFERENCE_FLEET, cheap_tier_alone, governed_fleet
from eval.cli import app

SINGLE_TIER = str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")
REFERENCE = str(EXAMPLE_FLEETS_DIR / "reference.yaml")


def _features(env: LLMFleetEnv, obs: np.ndarray, prefix: str) -> dict[str, float]:
    names = env.observation_contract.feature_names
    return {n: float(v) for n, v in zip(names, obs, strict=True) if n.startswith(prefix)}


@pytest.mark.parametrize("elastic", [False, True])
def test_v3_contract_is_the_same_on_fleets_of_different_sizes_and_tiers(elastic: bool) -> None:
    contracts = [
        LLMFleetEnv("steady", fleet=fleet, contract=3, elastic=elastic).observation_contract
        for fleet in (None, SINGLE_TIER)
    ]
    assert contracts[0] == contracts[1]
    assert contracts[0].digest == contracts[1].digest
    assert contracts[0].version == OBSERVATION_VERSION_V3
    assert contracts[0].pools == ROLES
    assert "pool.cheap.present" in contracts[0].feature_names
    assert ("pool.strong.replicas_desired" in contracts[0].feature_names) == elastic
    # v2 is one fleet's: its pools by name and its capacity
    v2 = [LLMFleetEnv("steady", fleet=f).observation_contract for f in (None, SINGLE_TIER)]
    assert v2[0].digest != v2[1].digest


def test_v3_contract_round_trips_without_the_fleets_numbers() -> None:
    contract = fleet_independent_contract(("ttft",), ("5m", "1h"), ("admission_limit",), "d")
    data = contract.to_dict()
    assert "nominal_capacity_rps" not in data and "max_replicas" not in data
    assert ObservationContract.from_dict(data) == contract
    with pytest.raises(ValueError, match="roles"):
        ObservationContract(("ttft",), pools=("main",), version=OBSERVATION_VERSION_V3)
    with pytest.raises(ValueError, match="scales is a"):
        ObservationContract(("ttft",), scales=True)


def test_a_fleet_without_a_cheap_tier_masks_its_role_and_fixes_its_knob() -> None:
    env = LLMFleetEnv("steady", fleet=SINGLE_TIER, contract=3, episode_hours=0.1)
    obs, info = env.reset(seed=1)
    for _ in range(3):
        obs, *_, info = env.step(env.action_space.sample())
    cheap = _features(env, obs, "pool.cheap.")
    assert set(cheap.values()) == {0.0}
    strong = _features(env, obs, "pool.strong.")
    assert strong["pool.strong.present"] == 1.0
    assert strong["pool.strong.capacity_share"] == pytest.approx(1.0)
    assert strong["pool.strong.healthy_fraction"] == 1.0
    assert "cheap_tier_share" in info["fixed_knobs"]
    assert info["knobs"]["cheap_tier_share"] == 0.0


def test_roles_are_normalised_by_their_measured_capacity() -> None:
    env = LLMFleetEnv("flash-crowd", contract=3, episode_hours=0.2)
    obs, _ = env.reset(seed=3)
    strong_rps, cheap_rps = REFERENCE_FLEET.role_capacity_rps
    assert strong_rps == REFERENCE_FLEET.capacity_rps
    assert cheap_rps > strong_rps  # one 1B replica serves more than two 8B ones
    share = _features(env, obs, "pool.cheap.")["pool.cheap.capacity_share"]
    assert share == pytest.approx(cheap_rps / strong_rps, rel=1e-6)
    neutral = env.action_contract.encode(env.knob_values)
    queued = [_features(env, env.step(neutral)[0], "pool.strong.") for _ in range(20)]
    # the queue in seconds at the strong tier's capacity, as log1p
    assert any(q["pool.strong.queue_s"] > 0 for q in queued)
    alone = cheap_tier_alone(REFERENCE_FLEET.config)
    assert [p.tier for p in alone.pools] == [0] and {t.tier for t in alone.tenants} == {0}


def test_fleet_shape_counts_replica_slots_by_role() -> None:
    shape = REFERENCE_FLEET.shape()
    assert shape.role_max_replicas == (2, 1)
    assert [role_of_tier(t) for t in (0, 1, 2)] == ["strong", "cheap", "cheap"]
    with pytest.raises(ValueError, match="one value per role"):
        FleetShape(1.0, (1.0,), (1, 1))


def test_fleets_are_drawn_per_episode_from_the_seed() -> None:
    def fleets_drawn(seed: int) -> list[str]:
        env = LLMFleetEnv("steady", fleets=[REFERENCE, SINGLE_TIER], contract=3, episode_hours=0.05)
        drawn = []
        for episode in range(6):
            obs, info = env.reset(seed=seed if episode == 0 else None)
            assert env.observation_space.contains(obs)
            drawn.append(env.fleet.config.pools[0].name)
            # The info names the fleet drawn (its file's stem), at reset and at every step.
            name = {"strong": "reference", "main": "single-tier"}[drawn[-1]]
            assert info["fleet"] == env.step(env.action_space.sample())[4]["fleet"] == name
        return drawn

    first = fleets_drawn(7)
    assert first == fleets_drawn(7)
    assert set(first) == {"strong", "main"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fleets": [REFERENCE, SINGLE_TIER]}, "needs contract=3"),
        ({"fleets": [], "contract": 3}, "non-empty"),
        ({"fleets": [REFERENCE], "fleet": SINGLE_TIER, "contract": 3}, "not both"),
        ({"contract": 4}, "2 or 3"),
    ],
)
def test_bad_fleet_lists_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LLMFleetEnv("steady", **kwargs)


@pytest.mark.parametrize(
    ("fleet", "roles"), [(REFERENCE, ["strong", "cheap"]), (SINGLE_TIER, ["strong"])]
)
def test_simulate_prints_the_capacity_per_role_the_sidecar_takes(fleet: str, roles: list) -> None:
    result = CliRunner().invoke(app, ["simulate", "--fleet", fleet, "--capacity", "--json"])
    assert result.exit_code == 0, result.output
    capacity = json.loads(result.stdout)
    assert list(capacity) == roles
    assert capacity["strong"] == pytest.approx(governed_fleet(fleet).capacity_rps)
    if "cheap" in roles:
        assert capacity["cheap"] == pytest.approx(REFERENCE_FLEET.role_capacity_rps[1])


# ----------------------------------------------------------------------------------------------
# The v3 contract and its signals, by hand


def _contract(scales: bool = False) -> ObservationContract:
    knobs = ("offload_fraction",)
    return fleet_independent_contract(("ttft", "e2e"), ("30m",), knobs, "d1", scales)


@pytest.mark.parametrize("scales", [False, True])
def test_a_v3_contract_holds_what_it_was_given_and_round_trips(scales: bool) -> None:
    contract = _contract(scales)
    given = (contract.slo_names, contract.windows, contract.knob_names, contract.spec_digest)
    assert given == (("ttft", "e2e"), ("30m",), ("offload_fraction",), "d1")
    assert contract.pools == ROLES and contract.scales is scales and contract.elastic is scales
    assert contract.to_dict()["scales"] is scales
    assert ObservationContract.from_dict(contract.to_dict()) == contract
    assert fleet_independent_contract(("ttft",), ("30m",), (), "d1").scales is False


def test_a_v2_contract_needs_its_nominal_capacity() -> None:
    data = ObservationContract(slo_names=("ttft",)).to_dict()
    del data["nominal_capacity_rps"]
    with pytest.raises(KeyError, match="nominal_capacity_rps"):
        ObservationContract.from_dict(data)


def test_v3_shapes_and_contracts_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^capacity_rps must be > 0, got 0.0$"):
        FleetShape(0.0, (1.0, 1.0), (1, 1))
    single_tier = FleetShape(10.0, (10.0, 0.0), (2, 0))
    assert single_tier.present(0) and not single_tier.present(1)
    with pytest.raises(ValueError, match=r"has no max_replicas \(the fleet gives its caps\)$"):
        ObservationContract(("ttft",), version=OBSERVATION_VERSION_V3, max_replicas=(2, 1))
    message = rf"^a {re.escape(OBSERVATION_VERSION_V3)} contract needs the fleet's FleetShape$"
    with pytest.raises(ValueError, match=message):
        FleetSignalTracker(_contract(), 30.0)


def _gauges(pools: list[int], waiting: list[float], running: list[float], **extra) -> ReplicaGauges:
    n = len(pools)
    return ReplicaGauges(
        pool=np.array(pools),
        healthy=np.ones(n, dtype=bool),
        kv_usage=np.zeros(n),
        kv_usage_mean=np.zeros(n),
        waiting=np.array(waiting),
        running=np.array(running),
        max_num_seqs=np.full(n, 64.0),
        **extra,
    )


def _role_features(pools: dict[str, dict[str, float]], role: str) -> dict[str, float]:
    return {name: pools[role][name] for name in ROLE_FEATURES}


def test_v3_signals_are_relative_to_each_roles_capacity() -> None:
    tracker = FleetSignalTracker(_contract(), 30.0, FleetShape(20.0, (20.0, 40.0), (2, 1)))
    signals = tracker.update(_gauges([0, 0, 1], [3.0, 5.0, 7.0], [11.0, 13.0, 17.0]), 600.0, 0.0)
    assert _role_features(signals.pools, "strong") == pytest.approx(
        {"present": 1.0, "capacity_share": 1.0, "queue_s": math.log1p(8.0 / 20.0)}
    )
    assert _role_features(signals.pools, "cheap") == pytest.approx(
        {"present": 1.0, "capacity_share": 2.0, "queue_s": math.log1p(7.0 / 40.0)}
    )
    assert signals.fleet["load_per_capacity"] == pytest.approx(600.0 / 30.0 / 20.0)


@pytest.mark.parametrize(
    ("capacity", "max_replicas", "cheap"),
    [
        (40.0, 0, None),  # the fleet has no cheap pool: masked, whatever its capacity says
        (0.0, 1, None),  # a cheap pool of no measured capacity: masked too
        (0.5, 1, {"present": 1.0, "capacity_share": 0.025, "queue_s": math.log1p(7.0 / 0.5)}),
    ],
)
def test_a_role_without_pool_or_capacity_is_masked(capacity, max_replicas, cheap) -> None:
    shape = FleetShape(20.0, (20.0, capacity), (2, max_replicas))
    tracker = FleetSignalTracker(_contract(), 30.0, shape)
    pools, waiting = [0, 0, 1][: 2 + max_replicas], [3.0, 5.0, 7.0][: 2 + max_replicas]
    signals = tracker.update(_gauges(pools, waiting, [0.0] * len(pools)), 600.0, 0.0)
    features = _role_features(signals.pools, "cheap")
    if cheap is None:
        assert features == dict.fromkeys(ROLE_FEATURES, 0.0)
        assert all(isinstance(v, float) for v in features.values())
    else:
        assert features == pytest.approx(cheap)


def test_elastic_v3_replica_features_are_relative_to_each_roles_slots() -> None:
    shape = FleetShape(20.0, (20.0, 40.0), (4, 1))
    tracker = FleetSignalTracker(_contract(scales=True), 30.0, shape)
    serving = ReplicaLifecycle.SERVING
    gauges = _gauges(
        [0, 0, 1], [0.0] * 3, [0.0] * 3, lifecycle=np.array([serving] * 3), pool_desired=[3, 1]
    )
    pools = tracker.update(gauges, 600.0, 0.0).pools
    strong, cheap = pools["strong"], pools["cheap"]
    assert (strong["replicas_serving"], strong["replicas_desired"]) == (0.5, 0.75)
    assert (cheap["replicas_serving"], cheap["replicas_desired"]) == (1.0, 1.0)
