"""The sidecar benchmark's own setup: the policies it times are accepted by a sidecar of the
benchmark's fleet (64 or 256 endpoints, outside any shipped policy's envelope), and a given
policy is timed from a copy, its own manifest untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.perf_sidecar import PROMETHEUS_REPLICAS, sidecar_config, timed_policy
from policies.manifest import PolicyManifest
from policies.sidecar.config import SidecarConfigError, load_config
from policies.sidecar.loop import Sidecar

pytest.importorskip("onnx", reason="the stand-in policy is written with onnx (train extra)")

ZOO_POLICY = Path(__file__).parents[1] / "policies" / "zoo" / "ppo-standard.onnx"


def _sidecar(policy: Path, endpoints: int, tmp_path: Path) -> Sidecar:
    config = sidecar_config(policy, "http://127.0.0.1:9", endpoints, port=0)
    config["state"] = {"directory": str(tmp_path / "state")}
    return Sidecar(load_config(None, config))


@pytest.mark.filterwarnings("ignore::policies.manifest.EnvelopeAssumedWarning")
@pytest.mark.parametrize("endpoints", [64, PROMETHEUS_REPLICAS])
@pytest.mark.parametrize("given", [None, ZOO_POLICY], ids=["stand-in", "zoo"])
def test_the_timed_policy_governs_the_benchmark_fleet(
    given: Path | None, endpoints: int, tmp_path: Path
) -> None:
    policy = timed_policy(tmp_path / "timed", endpoints, given)
    sidecar = _sidecar(policy, endpoints, tmp_path)
    sidecar.close()
    roles = PolicyManifest.from_json(policy.with_suffix(".json").read_text()).envelope.roles
    assert roles["strong"] == (1, endpoints - 1)


@pytest.mark.filterwarnings("ignore::policies.manifest.EnvelopeAssumedWarning")
def test_a_given_policy_is_refused_as_it_ships_and_its_manifest_stays(tmp_path: Path) -> None:
    before = ZOO_POLICY.with_suffix(".json").read_bytes()
    with pytest.raises(SidecarConfigError, match="outside the policy's envelope"):
        _sidecar(ZOO_POLICY, 64, tmp_path)  # why the benchmark widens a copy's envelope
    timed_policy(tmp_path / "timed", 64, ZOO_POLICY)
    assert ZOO_POLICY.with_suffix(".json").read_bytes() == before
