"""One policy of observation contract v3 governing fleets of different sizes and tiers through
the sidecar, over the engine twin's real HTTP: the same policy file on the reference fleet and
on a single-tier fleet of another model, its role features those of the twin's replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from envs.fleet_env import LLMFleetEnv
from envs.paths import EXAMPLE_FLEETS_DIR
from envs.twin import EngineTwin
from eval.cli import app
from eval.perf_sidecar import linear_policy
from policies.sidecar.config import (
    SidecarConfigError,
    load_config,
    load_twin_config,
    twin_settings,
)
from policies.sidecar.loop import Sidecar

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")
pytest.importorskip("torch", reason="the envelope is computed as the exporter does")

from policies.export import training_envelope  # noqa: E402

SINGLE_TIER = EXAMPLE_FLEETS_DIR / "single-tier.yaml"
TIERED = EXAMPLE_FLEETS_DIR / "tiered-h100-a100.yaml"
INTERVAL_S = 30.0
CYCLES = 4


@pytest.fixture(scope="module")
def v3_policy(tmp_path_factory) -> Path:
    """A linear policy of contract v3 whose envelope covers both fleets."""
    env = LLMFleetEnv("steady", contract=3, fleets=[None, SINGLE_TIER])
    envelope = training_envelope(env, ("reference", "single-tier"))
    path = tmp_path_factory.mktemp("v3") / "linear-v3.onnx"
    contracts = (env.observation_contract, env.action_contract, env.slo_spec)
    return linear_policy(path, *contracts, seed=5, scale=0.5, envelope=envelope)


def _config(twin: EngineTwin, policy: Path, **extra):
    entries = {"policy": str(policy), "port": 0, "interval_s": INTERVAL_S}
    discovery = {"engines": [], "discovery": {"url": f"{twin.url}/engines"}}
    return load_twin_config(None, entries | discovery | extra, twin.url)


@pytest.mark.slow
@pytest.mark.parametrize("fleet", [None, SINGLE_TIER], ids=["reference", "single-tier"])
def test_one_v3_policy_governs_fleets_of_different_sizes(v3_policy, fleet) -> None:
    twin = EngineTwin("steady", seed=11, speed=0.0, fleet=fleet)
    twin.start()
    try:
        config = _config(twin, v3_policy)
        capacity = twin.fleet_capacity()["capacity_rps"]
        assert config.fleet_capacity == {r: c for r, c in capacity.items() if c > 0}
        sidecar = Sidecar(config)
        sidecar.cycle(twin.now)  # the counters' baseline
        roles = np.array(["strong" if r.tier == 0 else "cheap" for r in twin.replicas])
        listed_max_num_seqs = np.array([r.max_num_seqs for r in twin.replicas])
        for _ in range(CYCLES):
            twin.step(INTERVAL_S)
            stats = twin.stats
            decision = sidecar.cycle(twin.now)
            assert decision.mode == "policy" and decision.actuated == {"twin": "ok"}
            assert twin.knobs() == decision.knobs
            if fleet is not None:  # no cheap tier: the knob is held and the decision says so
                assert decision.knobs["cheap_tier_share"] == 0.0
                held = [i for i in decision.interventions if i.guardrail == "no_counterpart"]
                assert [i.knob for i in held] == ["cheap_tier_share"] * (
                    decision.proposed["cheap_tier_share"] > 0
                )
            signals = decision.observation.signals.pools
            for role in ("strong", "cheap"):
                mine = roles == role
                features = signals[role]
                if not mine.any():  # the single tier has no cheap role: masked
                    assert set(features.values()) == {0.0}
                    continue
                assert features["present"] == 1.0
                assert features["capacity_share"] == pytest.approx(
                    capacity[role] / capacity["strong"]
                )
                assert features["healthy_fraction"] == 1.0
                assert features["kv_usage_max"] == pytest.approx(stats.kv_usage[mine].max())
                queue = np.log1p(stats.waiting[mine].sum() / capacity[role])
                assert features["queue_s"] == pytest.approx(queue)
                # engines do not export their batch limit: the listing's, not the one in force
                running = np.mean(stats.running[mine] / listed_max_num_seqs[mine])
                assert features["running_per_replica"] == pytest.approx(running)
        sidecar.close()
    finally:
        twin.close()


def test_a_v3_policy_without_the_fleets_capacity_is_refused(v3_policy) -> None:
    twin = EngineTwin("steady", seed=11, speed=0.0)
    twin.start()
    try:
        config = load_config(None, {"policy": str(v3_policy)} | twin_settings(twin.url))
        with pytest.raises(SidecarConfigError, match=r"fleet_capacity: .*\['strong', 'cheap'\]"):
            Sidecar(config)
    finally:
        twin.close()


@pytest.mark.parametrize(
    ("capacity", "code", "says"),
    [
        ("strong=15.2,cheap=43.2", 0, '"mode": "policy"'),
        (None, 2, "--fleet-capacity strong=RPS,cheap=RPS"),
        ("strong=15.2,cheap=fast", 2, "fleet_capacity.cheap"),
        ("strong=15.2,fast=43.2", 2, "fleet_capacity.fast"),
        ("strong", 2, "--fleet-capacity 'strong': expected comma-separated key=value pairs"),
    ],
)
def test_the_fleets_capacity_is_given_on_the_command_line(v3_policy, capacity, code, says):
    with EngineTwin("steady", seed=11, speed=0.0) as twin:
        twin.start()
        engines = [
            f"name={e['name']},url={e['metrics_url']},pool={e['pool']},"
            f"max_num_seqs={e['max_num_seqs']}"
            for e in twin.engines()
        ]
        args = ["sidecar", "--policy", str(v3_policy), "--counters", f"{twin.url}/router/metrics"]
        args += [flag for e in engines for flag in ("--engine", e)]
        args += [] if capacity is None else ["--fleet-capacity", capacity]
        result = CliRunner().invoke(app, [*args, "--once"])
    assert result.exit_code == code, result.output
    assert says in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fleet", "code", "says"),
    [
        (SINGLE_TIER, 0, "fits the config (4 engines)"),
        (TIERED, 2, "the fleet is outside the policy's envelope"),
    ],
    ids=["single-tier", "tiered"],
)
def test_the_sidecar_command_takes_the_twins_fleet(v3_policy, fleet, code, says) -> None:
    with EngineTwin("steady", seed=11, speed=0.0, fleet=fleet) as twin:
        twin.start()
        args = ["sidecar", "--twin", twin.url, "--policy", str(v3_policy), "--check"]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert says in result.output


@pytest.fixture(scope="module")
def elastic_v3_policy(tmp_path_factory) -> Path:
    """A linear elastic policy of contract v3 that keeps the setting knobs neutral and grows
    the strong role (its replica knob's bias 1, beyond the dead band) while shrinking the cheap
    one (-1)."""
    from envs.contract import neutral_knob_values, replicas_knob_name

    env = LLMFleetEnv("short-flash-crowd", elastic=True, contract=3)
    action = env.action_contract
    bias = np.arctanh(np.clip(action.encode(neutral_knob_values(action.names)), -0.995, 0.995))
    bias[action.names.index(replicas_knob_name("strong"))] = 1.0
    bias[action.names.index(replicas_knob_name("cheap"))] = -1.0
    envelope = training_envelope(env, ("reference",))
    path = tmp_path_factory.mktemp("v3-elastic") / "linear-v3-elastic.onnx"
    contracts = (env.observation_contract, action, env.slo_spec)
    return linear_policy(path, *contracts, bias=bias, scale=0.0, envelope=envelope)


@pytest.mark.slow
def test_an_elastic_v3_policy_scales_each_pool_by_its_roles_knob(elastic_v3_policy) -> None:
    with EngineTwin("short-flash-crowd", seed=3, speed=0.0) as twin:
        twin.start()
        sidecar = Sidecar(_config(twin, elastic_v3_policy))
        caps = twin.replicas_state()["max_replicas"]
        # Scaling from the twin: every pool, keyed by its own name, capped by the twin.
        assert {p: b.max_replicas for p, b in sidecar.scaling.bounds.items()} == caps
        published = []
        try:
            for _ in range(CYCLES):
                decision = sidecar.cycle(twin.now)
                published.append(decision.desired_replicas)
                assert decision.mode == "policy" and decision.actuated == {"twin": "ok"}
                assert twin.sim.desired_replicas == decision.desired_replicas
                counts = twin.replicas_state()["replicas"]
                features = decision.observation.signals.pools
                for pool, role in (("strong", "strong"), ("cheap", "cheap")):
                    # The role's replicas relative to its pools' caps, as the environment's.
                    serving = counts[pool]["serving"] / caps[pool]
                    assert features[role]["replicas_serving"] == pytest.approx(serving)
                twin.step(INTERVAL_S)
        finally:
            sidecar.close()
        assert published[-1]["strong"] > published[0]["strong"]
        assert published[-1]["cheap"] <= published[0]["cheap"]
