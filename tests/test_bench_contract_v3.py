"""The benchmark runs a policy of observation contract v3 on any fleet inside its envelope and
refuses one outside it, naming what differs."""

from __future__ import annotations

import pytest

from envs.paths import EXAMPLE_FLEETS_DIR
from eval.bench import RunSpec, resolve_controllers, run_episode
from tests.test_sidecar_contract_v3 import SINGLE_TIER, v3_policy  # noqa: F401 (a fixture)

TIERED = str(EXAMPLE_FLEETS_DIR / "tiered-h100-a100.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("fleet", [None, str(SINGLE_TIER)], ids=["reference", "single-tier"])
def test_a_v3_policy_runs_on_every_fleet_of_its_envelope(v3_policy, fleet) -> None:  # noqa: F811
    (spec,) = resolve_controllers([str(v3_policy)])
    assert spec.contract_version == 3
    assert spec.unfit_reason("steady", fleet) is None
    run = RunSpec(spec, "steady", seed=0, episode_hours=0.05, warmup_s=60.0, fleet=fleet)
    assert run.env_kwargs["contract"] == 3
    result = run_episode(run)
    assert result.metrics  # an episode governed by the policy, measured


@pytest.mark.slow
def test_a_fleet_outside_the_envelope_is_refused_naming_what_differs(v3_policy) -> None:  # noqa: F811
    (spec,) = resolve_controllers([str(v3_policy)])
    reason = spec.unfit_reason("steady", TIERED)
    assert reason.startswith(f"linear-v3 cannot govern steady on {TIERED}: the fleet is outside")
    for difference in (
        "role 'cheap': 8 replicas, outside the trained 0-1",
        "models ['llama-2-70b'] unknown to the policy",
        "GPUs ['h100-80gb'] unknown to the policy",
    ):
        assert difference in reason
