"""The sidecar against the policy's envelope, over the engine twin's real HTTP: a fleet outside
it is refused at start naming what differs (nothing written), and a fleet that leaves it later
is said so (log, /readyz, /metrics) while the sidecar holds or falls back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from envs.paths import EXAMPLE_FLEETS_DIR
from envs.twin import EngineTwin
from eval.perf_sidecar import fleet_contracts, linear_policy
from policies.sidecar.config import (
    SidecarConfigError,
    load_twin_config,
)
from policies.sidecar.loop import Sidecar
from tests.test_sidecar_nodata import http, served

pytest.importorskip("onnx", reason="the test policy is written with onnx (train extra)")

ZOO_POLICY = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-standard.onnx"
INTERVAL_S = 30.0


def _config(twin: EngineTwin, policy: Path, tmp_path: Path, discovery: bool, **extra):
    settings = {}
    if discovery:
        settings = {"engines": [], "discovery": {"url": f"{twin.url}/engines"}}
    entries = {
        "policy": str(policy),
        "port": 0,
        "interval_s": INTERVAL_S,
        "audit_log": str(tmp_path / "audit" / "decisions.jsonl"),
        "state": {"directory": str(tmp_path / "state")},
    }
    return load_twin_config(None, entries | settings | extra, twin.url)


def _reference_fleet_with(directory: Path, pool: int, **changes) -> Path:
    """The reference fleet file with one pool changed (its pools keep their names, which the
    policy's contract observes)."""
    fleet = yaml.safe_load((EXAMPLE_FLEETS_DIR / "reference.yaml").read_text())
    fleet["pools"][pool] |= changes
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pool", "changes", "discovery", "differences"),
    [
        (
            1,
            {"replicas": 4, "gpu": "h100-80gb"},
            True,  # the listing gives each engine's tier, model and GPU
            [
                "role 'cheap': 4 replicas, outside the trained 1",
                "GPUs ['h100-80gb'] unknown to the policy (trained on ['a100-80gb'])",
            ],
        ),
        (
            1,
            {"model": "llama-3.2-3b"},
            True,
            ["models ['llama-3.2-3b'] unknown to the policy"],
        ),
        (
            0,
            {"replicas": 3, "gpu": "h100-80gb"},
            False,  # a fixed engines list: roles from the pools' names, no models or GPUs
            ["role 'strong': 3 replicas, outside the trained 2"],
        ),
    ],
)
def test_a_fleet_outside_the_envelope_is_refused_at_start(
    pool: int, changes: dict, discovery: bool, differences: list[str], tmp_path: Path
) -> None:
    fleet = _reference_fleet_with(tmp_path, pool, **changes)
    twin = EngineTwin("steady", seed=3, speed=0.0, fleet=fleet)
    twin.start()
    try:
        config = _config(twin, ZOO_POLICY, tmp_path, discovery)
        with pytest.raises(SidecarConfigError) as info:
            Sidecar(config)
    finally:
        twin.close()
    message = str(info.value)
    assert message.startswith(f"{ZOO_POLICY}: the fleet is outside the policy's envelope")
    assert "trained on fleets reference" in message
    for difference in differences:
        assert difference in message
    assert len(message.split("; ")) == len(differences) + 1  # and "nothing started"
    assert message.endswith("nothing started")
    assert not (tmp_path / "audit").exists() and not (tmp_path / "state").exists()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A linear policy for the reference fleet, its envelope the reference fleet's."""
    path = tmp_path_factory.mktemp("policy") / "linear.onnx"
    return linear_policy(path, *fleet_contracts(), seed=5, scale=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["hold", "fallback"])
def test_a_fleet_leaving_the_envelope_is_said_and_held_or_handed_over(
    action: str, stand_in: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An elastic twin scaled by someone else (an HPA, an operator): the fleet changes size.
    twin = EngineTwin("steady", seed=3, speed=0.0, elastic=True)
    twin.start()
    config = _config(twin, stand_in, tmp_path, True, envelope={"action": action})
    sidecar = Sidecar(config)
    server = served(sidecar)
    try:
        decisions = [sidecar.cycle(twin.now)]
        twin.step(INTERVAL_S)
        decisions.append(sidecar.cycle(twin.now))
        assert [d.mode for d in decisions] == ["policy", "policy"]
        assert "budgetpilot_sidecar_fleet_in_envelope 1.0" in http(f"{server.url}/metrics")[1]

        twin.set_replicas({"desired": {"strong": 3}})
        twin.step(INTERVAL_S)
        with caplog.at_level(logging.WARNING, logger="budgetpilot.sidecar"):
            outside = sidecar.cycle(twin.now)
        assert outside.mode == action
        assert "role 'strong': 3 replicas, outside the trained 2" in outside.reason
        assert any("outside the policy's envelope" in r.getMessage() for r in caplog.records)
        status, body = http(f"{server.url}/readyz")
        assert status == 503
        assert "role 'strong': 3 replicas" in json.loads(body)["problem"]
        assert "budgetpilot_sidecar_fleet_in_envelope 0.0" in http(f"{server.url}/metrics")[1]
        if action == "hold":
            assert outside.knobs == decisions[-1].knobs

        twin.set_replicas({"desired": {"strong": 2}})
        twin.step(INTERVAL_S)
        assert sidecar.cycle(twin.now).mode == "policy"
        assert http(f"{server.url}/readyz")[0] == 200
        assert "budgetpilot_sidecar_fleet_in_envelope 1.0" in http(f"{server.url}/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()
        sidecar.close()
        twin.close()
