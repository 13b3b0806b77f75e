import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from envs.contract import (
    DEFAULT_KNOBS,
    NEUTRAL_KNOB_VALUES,
    ActionContract,
    FleetSignals,
    FleetSignalTracker,
    KnobSpec,
    ObservationContract,
    ReplicaGauges,
    elastic_knobs,
    neutral_knob_values,
    replica_change_toward,
)

ZOO = Path(__file__).resolve().parents[1] / "policies" / "zoo"


def _signals(contract: ObservationContract, value: float = 0.5) -> FleetSignals:
    from envs.contract import FLEET_FEATURES, POOL_FEATURES

    return FleetSignals(
        pools={p: dict.fromkeys(POOL_FEATURES, value) for p in contract.pools},
        fleet=dict.fromkeys(FLEET_FEATURES, value),
    )


@pytest.mark.parametrize("knob", DEFAULT_KNOBS, ids=lambda k: k.name)
@pytest.mark.parametrize("unit", [-1.0, -0.3, 0.0, 0.7, 1.0])
def test_knob_mapping_round_trips_and_stays_in_range(knob: KnobSpec, unit: float) -> None:
    value = knob.from_unit(unit)
    assert knob.low <= value <= knob.high
    if not knob.integer:
        assert knob.to_unit(value) == pytest.approx(unit, abs=1e-9)


@pytest.mark.parametrize("knob", [k for k in DEFAULT_KNOBS if k.integer], ids=lambda k: k.name)
def test_integer_knobs_round_trip_and_round_to_the_nearest_value(knob: KnobSpec) -> None:
    for value in np.arange(knob.low, knob.high + 1.0):
        assert knob.from_unit(knob.to_unit(value)) == value
    for unit in np.linspace(-1.0, 1.0, 41):
        exact = knob.low + (unit + 1.0) / 2.0 * (knob.high - knob.low)
        assert abs(knob.from_unit(unit) - exact) <= 0.5  # truncation is up to a whole step off


@pytest.mark.parametrize("unit", [-5.0, 5.0, math.nan, math.inf, -math.inf])
def test_out_of_range_and_nan_actions_are_clipped(unit: float) -> None:
    values = ActionContract().decode(np.full(len(DEFAULT_KNOBS), unit))
    for knob in DEFAULT_KNOBS:
        assert knob.low <= values[knob.name] <= knob.high


def test_encode_decode_neutral_values() -> None:
    contract = ActionContract()
    decoded = contract.decode(contract.encode(NEUTRAL_KNOB_VALUES))
    for name, value in NEUTRAL_KNOB_VALUES.items():
        assert decoded[name] == pytest.approx(value, rel=1e-6, abs=1e-6)


def test_wrong_action_length_is_refused() -> None:
    with pytest.raises(ValueError, match="entries"):
        ActionContract().decode([0.0, 0.0])


def test_bad_knob_range_is_refused() -> None:
    with pytest.raises(ValueError, match="low"):
        KnobSpec("broken", 1.0, 1.0)
    with pytest.raises(ValueError, match="log-scaled"):
        KnobSpec("broken", 0.0, 1.0, scale="log")


def test_observation_layout_and_scaling() -> None:
    contract = ObservationContract(slo_names=("ttft", "availability"), windows=("5m", "1h"))
    burn = np.array([[0.0, 3.0], [np.nan, 1e12]])
    obs = contract.build(
        burn,
        np.array([0.5, -3.0]),
        np.array([1.0, 0.0]),
        _signals(contract),
        {k: 0.0 for k in contract.knob_names},
    )
    assert obs.shape == (contract.size,) and obs.dtype == np.float32
    index = {n: i for i, n in enumerate(contract.feature_names)}
    assert obs[index["slo.ttft.log_burn_rate.1h"]] == pytest.approx(2.0)  # log2(1 + 3)
    assert obs[index["slo.availability.log_burn_rate.5m"]] == 0.0  # no request: nothing spent
    assert obs[index["slo.availability.log_burn_rate.1h"]] == pytest.approx(8.0)  # clipped
    assert obs[index["slo.availability.budget_remaining"]] == -1.0  # clipped
    assert obs[index["slo.ttft.alert"]] == 1.0
    assert np.isfinite(obs).all()


def test_contracts_serialise_and_detect_tampering() -> None:
    obs = ObservationContract(slo_names=("ttft",), spec_digest="abc")
    assert ObservationContract.from_dict(obs.to_dict()) == obs
    act = ActionContract()
    assert ActionContract.from_dict(act.to_dict()) == act
    tampered = obs.to_dict()
    tampered["feature_names"] = list(reversed(tampered["feature_names"]))
    with pytest.raises(ValueError, match="feature_names"):
        ObservationContract.from_dict(tampered)
    assert ObservationContract(slo_names=("ttft", "itl")).digest != obs.digest


def _gauges(healthy: list[bool], waiting: list[float]) -> ReplicaGauges:
    return ReplicaGauges(
        pool=np.array([0, 0, 1]),
        healthy=np.array(healthy),
        kv_usage=np.array([0.2, 0.8, 0.5]),
        kv_usage_mean=np.array([0.1, 0.5, 0.4]),
        waiting=np.array(waiting),
        running=np.array([64.0, 128.0, 10.0]),
        max_num_seqs=np.array([256.0, 256.0, 100.0]),
    )


def test_fleet_signal_tracker_features() -> None:
    contract = ObservationContract(slo_names=("a",), nominal_capacity_rps=10.0)
    tracker = FleetSignalTracker(contract, control_interval_s=30.0)
    signals = tracker.update(_gauges([True, True, True], [3.0, 5.0, 0.0]), 300, 60)
    strong, cheap = signals.pools["strong"], signals.pools["cheap"]
    assert strong["kv_usage_mean"] == pytest.approx(0.3)
    assert strong["kv_usage_max"] == pytest.approx(0.8)
    assert strong["waiting_per_replica"] == pytest.approx(math.log1p(4.0))
    assert strong["running_per_replica"] == pytest.approx(0.375)
    assert cheap["healthy_fraction"] == 1.0 and cheap["running_per_replica"] == 0.1
    assert signals.fleet["load_per_capacity"] == pytest.approx(1.0)
    assert signals.fleet["arrival_rate_trend"] == pytest.approx(0.0)
    assert signals.fleet["preemptions_per_replica_s"] == pytest.approx(math.log1p(60 / 3 / 30))
    # Twice the traffic of the hour so far: the trend is positive; an unhealthy replica counts
    # out of the pool's usage but its queue is spread over the healthy ones.
    signals = tracker.update(_gauges([False, True, False], [3.0, 5.0, 7.0]), 900, 0)
    assert signals.fleet["arrival_rate_trend"] == pytest.approx(math.log2(30 / 20), rel=1e-3)
    assert signals.pools["strong"]["kv_usage_mean"] == pytest.approx(0.5)
    assert signals.pools["strong"]["waiting_per_replica"] == pytest.approx(math.log1p(8.0))
    assert signals.pools["strong"]["healthy_fraction"] == 0.5
    assert signals.pools["cheap"] == {
        "kv_usage_mean": 0.0,
        "kv_usage_max": 0.0,
        "waiting_per_replica": pytest.approx(math.log1p(7.0)),
        "running_per_replica": 0.0,
        "healthy_fraction": 0.0,
    }
    tracker.reset()
    assert tracker.update(_gauges([True] * 3, [0.0] * 3), 0, 0).fleet["arrival_rate_trend"] == 0


def test_nominal_capacity_is_part_of_the_contract() -> None:
    a = ObservationContract(slo_names=("a",), nominal_capacity_rps=10.0)
    b = ObservationContract(slo_names=("a",), nominal_capacity_rps=12.0)
    assert a.digest != b.digest
    assert ObservationContract.from_dict(b.to_dict()) == b
    with pytest.raises(ValueError, match="nominal_capacity_rps"):
        ObservationContract(slo_names=("a",), nominal_capacity_rps=0.0)


def test_unknown_values_are_observed_as_nothing_spent_and_zero() -> None:
    """A budget without data is full (1), a signal without data 0: never a made-up alarm."""
    contract = ObservationContract(slo_names=("ttft",), windows=("5m",))
    signals = _signals(contract)
    signals.fleet["load_per_capacity"] = math.nan
    obs = contract.build(
        np.array([[np.nan]]),
        np.array([np.nan]),
        np.array([0.0]),
        signals,
        {k: 0.0 for k in contract.knob_names},
    )
    index = {n: i for i, n in enumerate(contract.feature_names)}
    assert obs[index["slo.ttft.budget_remaining"]] == 1.0
    assert obs[index["fleet.load_per_capacity"]] == 0.0
    assert obs[index["slo.ttft.log_burn_rate.5m"]] == 0.0


def test_neutral_values_of_every_knob_and_replica_knob() -> None:
    names = [*NEUTRAL_KNOB_VALUES, "strong_replicas_change"]
    assert neutral_knob_values(names) == NEUTRAL_KNOB_VALUES | {"strong_replicas_change": 0.0}
    with pytest.raises(KeyError, match="knob 'warp' has no neutral value"):
        neutral_knob_values(["warp"])


def test_encode_needs_every_knob_and_gives_float32() -> None:
    contract = ActionContract()
    assert contract.encode(NEUTRAL_KNOB_VALUES).dtype == np.float32
    values = {k: v for k, v in NEUTRAL_KNOB_VALUES.items() if k != "offload_fraction"}
    with pytest.raises(KeyError, match=re.escape("knob values missing for ['offload_fraction']")):
        contract.encode(values)


def test_a_contract_of_other_knobs_and_version_round_trips() -> None:
    contract = ActionContract(knobs=(KnobSpec("share", 0.0, 0.5),), version="test/v9")
    assert ActionContract.from_dict(contract.to_dict()) == contract


def test_an_elastic_tracker_needs_the_desired_replicas_of_every_pool() -> None:
    contract = ObservationContract(slo_names=("a",), max_replicas=(4, 2))
    tracker = FleetSignalTracker(contract, control_interval_s=30.0)
    gauges = dataclasses.replace(
        _gauges([True, True, True], [0.0, 0.0, 0.0]), lifecycle=np.array([2, 2, 2])
    )
    with pytest.raises(ValueError, match=r"^an elastic observation contract needs Replica"):
        tracker.update(gauges, 0, 0)
    with pytest.raises(ValueError, match=re.escape("has 1 entries, one per pool ['strong', 'c")):
        tracker.update(dataclasses.replace(gauges, pool_desired=np.array([3])), 0, 0)
    signals = tracker.update(dataclasses.replace(gauges, pool_desired=np.array([3, 1])), 0, 0)
    assert signals.pools["strong"]["replicas_desired"] == 0.75


@pytest.mark.parametrize(
    ("desired", "target", "change"),
    [(4, 4, 0.0), (4, 5, 0.25), (4, 6, 0.5), (4, 3, -0.25), (10, 11, 0.1), (1, 3, 0.5)],
)
def test_replica_change_toward_a_target(desired: int, target: int, change: float) -> None:
    assert replica_change_toward(desired, target) == pytest.approx(change)


def _one_replica(**gauges) -> ReplicaGauges:
    values = {"kv_usage": 0.5, "kv_usage_mean": 0.5, "waiting": 0.0, "running": 1.0}
    values |= {"max_num_seqs": 256.0} | gauges
    arrays = {k: np.array([v]) for k, v in values.items()}
    return ReplicaGauges(pool=np.array([0]), healthy=np.array([True]), **arrays)


def test_nothing_arriving_or_preempted_is_observed_as_zero() -> None:
    contract = ObservationContract(slo_names=("a",), pools=("strong",))
    signals = FleetSignalTracker(contract, 30.0).update(_one_replica(), 0, 0)
    assert signals.fleet["load_per_capacity"] == 0.0
    assert signals.fleet["preemptions_per_replica_s"] == 0.0


def test_preemptions_and_running_are_per_replica() -> None:
    contract = ObservationContract(slo_names=("a",), pools=("strong",))
    gauges = _one_replica(running=1.0, max_num_seqs=1.0)
    signals = FleetSignalTracker(contract, 30.0).update(gauges, 0, 60)
    assert signals.fleet["preemptions_per_replica_s"] == pytest.approx(math.log1p(2.0))
    assert signals.pools["strong"]["running_per_replica"] == 1.0


@pytest.mark.parametrize(("interval_s", "kept"), [(3600.0, 1), (1800.25, 1), (1800.0, 2)])
def test_the_arrival_trend_compares_with_the_last_hour(interval_s: float, kept: int) -> None:
    """Each update keeps ``int(3600 / interval)`` rates (at least one)."""
    contract = ObservationContract(slo_names=("a",), pools=("strong",))
    tracker = FleetSignalTracker(contract, interval_s)
    for arrivals in (0.0, 10.0 * interval_s):
        signals = tracker.update(_one_replica(), arrivals, 0)
    rates = [0.0, 10.0][-kept:]
    expected = math.log2((10.0 + 1e-3) / (sum(rates) / kept + 1e-3))
    assert signals.fleet["arrival_rate_trend"] == pytest.approx(expected)


@pytest.mark.parametrize("interval_s", [0.0, -30.0])
def test_a_control_interval_must_be_positive(interval_s: float) -> None:
    contract = ObservationContract(slo_names=("a",))
    with pytest.raises(ValueError, match=f"^control_interval_s must be > 0, got {interval_s}"):
        FleetSignalTracker(contract, interval_s)
    assert FleetSignalTracker(contract, 0.5).control_interval_s == 0.5


def test_gauges_of_different_lengths_are_refused() -> None:
    contract = ObservationContract(slo_names=("a",), pools=("strong",))
    tracker = FleetSignalTracker(contract, 30.0)
    with pytest.raises(ValueError):
        tracker.update(dataclasses.replace(_one_replica(), waiting=np.zeros(2)), 0, 0)
    elastic = FleetSignalTracker(dataclasses.replace(contract, max_replicas=(2,)), 30.0)
    with pytest.raises(ValueError, match=r"^an elastic observation contract needs ReplicaGauges\."):
        elastic.update(_one_replica(), 0, 0)
    gauges = dataclasses.replace(_one_replica(), lifecycle=np.array([2, 2]))
    with pytest.raises(ValueError, match=r"^ReplicaGauges\.lifecycle has 2 entries, not 1$"):
        tracker.update(gauges, 0, 0)


@pytest.mark.parametrize("policy", ["ppo-standard", "ppo-elastic"])
def test_the_shipped_policies_carry_the_contracts_the_code_builds(policy: str) -> None:
    """Every knob's range, scale and counterpart as the reference policies were trained with."""
    manifest = json.loads((ZOO / f"{policy}.json").read_text())
    observation = ObservationContract.from_dict(manifest["observation_contract"])
    knobs = elastic_knobs(observation.pools) if observation.elastic else DEFAULT_KNOBS
    assert ActionContract.from_dict(manifest["action_contract"]) == ActionContract(knobs=knobs)


def test_an_observation_contract_of_other_pools_round_trips() -> None:
    contract = ObservationContract(
        slo_names=("a",), pools=("gpu",), version="test/v9", max_replicas=(3,)
    )
    assert ObservationContract.from_dict(contract.to_dict()) == contract
    older = {k: v for k, v in contract.to_dict().items() if k != "spec_digest"}
    assert ObservationContract.from_dict(older).spec_digest == ""


def test_decode_takes_a_batch_of_one() -> None:
    contract = ActionContract()
    assert contract.decode(np.ones((1, 7), dtype=np.float32)) == pytest.approx(
        {k.name: k.high for k in contract.knobs}
    )


def test_max_replicas_are_whole_counts_of_at_least_one() -> None:
    contract = ObservationContract(slo_names=("a",), max_replicas=[4.0, 1.0])
    assert contract.max_replicas == (4, 1) and all(type(n) is int for n in contract.max_replicas)
    with pytest.raises(ValueError, match=r"one count >= 1 per pool \['strong', 'cheap'\], got"):
        ObservationContract(slo_names=("a",), max_replicas=(4, 0))


def test_feature_bounds_of_burn_rates_budgets_and_alerts() -> None:
    contract = ObservationContract(slo_names=("a",), windows=("5m",))
    low, high = contract.bounds()
    assert low.dtype == high.dtype == np.float32  # the observation space's
    assert (low[:3].tolist(), high[:3].tolist()) == ([0.0, -1.0, 0.0], [8.0, 1.0, 1.0])
    knobs = slice(-len(contract.knob_names), None)
    assert set(low[knobs].tolist()) == {-1.0} and set(high[knobs].tolist()) == {1.0}


def test_a_nan_action_is_the_middle_of_the_range() -> None:
    assert KnobSpec("share", 0.0, 0.8).from_unit(math.nan) == pytest.approx(0.4)
    assert KnobSpec("limit", 0.3, 3.0, scale="log").from_unit(math.nan) == pytest.approx(
        0.3**0.5 * 3.0**0.5
    )


def test_tampered_feature_names_are_refused_in_so_many_words() -> None:
    data = ObservationContract(slo_names=("a",)).to_dict()
    data["feature_names"] = data["feature_names"][:-1]
    with pytest.raises(ValueError, match="^observation contract: feature_names do not match its"):
        ObservationContract.from_dict(data)


@pytest.mark.parametrize(("value", "edge"), [(math.inf, "high"), (-math.inf, "low")])
def test_infinite_values_are_observed_at_the_edge_of_their_range(value, edge) -> None:
    contract = ObservationContract(slo_names=("ttft",), windows=("5m",))
    signals = _signals(contract)
    signals.fleet["load_per_capacity"] = value
    knobs = {k: 0.0 for k in contract.knob_names}
    obs = contract.build(np.array([[0.0]]), np.array([value]), np.array([0.0]), signals, knobs)
    low, high = contract.bounds()
    bound = high if edge == "high" else low
    for name in ("slo.ttft.budget_remaining", "fleet.load_per_capacity"):
        i = contract.feature_names.index(name)
        assert obs[i] == bound[i]
