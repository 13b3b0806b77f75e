"""Observation contract v3: the same features for any fleet, pools by role, fleets drawn per
episode."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.contract import (
    OBSERVATION_VERSION_V3,
    ROLES,
    FleetShape,
    ObservationContract,
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
    queued = [
        _features(env, env.step(env.action_space.sample())[0], "pool.strong.") for _ in range(20)
    ]
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
            obs, _ = env.reset(seed=seed if episode == 0 else None)
            assert env.observation_space.contains(obs)
            drawn.append(env.fleet.config.pools[0].name)
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
