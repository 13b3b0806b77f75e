"""A policy's envelope: the fleets it was trained on, written at export, read by servers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

pytest.importorskip("torch")

from envs.contract import ObservationContract  # noqa: E402
from envs.fleet_env import LLMFleetEnv  # noqa: E402
from envs.paths import EXAMPLE_FLEETS_DIR  # noqa: E402
from envs.scenarios import MAX_REPLICAS, REFERENCE_FLEET  # noqa: E402
from policies.export import training_envelope, training_fleet_names  # noqa: E402
from policies.manifest import (  # noqa: E402
    REFERENCE_GPUS,
    REFERENCE_MODELS,
    REFERENCE_REPLICAS,
    Envelope,
    EnvelopeAssumedWarning,
    FleetFacts,
    ManifestError,
    PolicyManifest,
)
from policies.runtime import read_manifest  # noqa: E402
from training.config import PresetError, load_preset  # noqa: E402
from training.learner import make_training_env  # noqa: E402

ZOO = EXAMPLE_FLEETS_DIR.parents[1] / "policies" / "zoo"
SINGLE_TIER = str(EXAMPLE_FLEETS_DIR / "single-tier.yaml")
ENVELOPE = Envelope(
    roles={"strong": (2, 4), "cheap": (0, 1)},
    models=("llama-3-8b", "llama-3.2-1b", "qwen2-7b"),
    gpus=("a100-80gb",),
    spec_service="llm-serving",
    spec_digest="1a0882700c865c7a",
    fleets=("reference", "single-tier"),
)


@pytest.mark.parametrize("elastic", [False, True])
def test_the_reference_envelope_is_the_reference_fleets(elastic: bool) -> None:
    env = LLMFleetEnv("steady", elastic=elastic)
    contract = env.observation_contract
    trained = training_envelope(env, ("reference",))
    assert trained == Envelope.reference(contract, trained.spec_service, trained.spec_digest)
    pools = {p.name: p.replicas for p in REFERENCE_FLEET.config.pools}
    assert pools == REFERENCE_REPLICAS
    assert sorted(p.model for p in REFERENCE_FLEET.config.pools) == list(REFERENCE_MODELS)
    assert {p.gpu for p in REFERENCE_FLEET.config.pools} == set(REFERENCE_GPUS)
    if elastic:
        assert trained.roles == {pool: (1, cap) for pool, cap in MAX_REPLICAS.items()}


def test_a_role_no_training_fleet_has_is_outside_the_envelope() -> None:
    env = LLMFleetEnv("steady", fleet=SINGLE_TIER, contract=3)
    assert set(training_envelope(env, ("single-tier",)).roles) == {"strong"}


@pytest.mark.parametrize(
    ("env_kwargs", "names"),
    [
        ({}, ("reference",)),
        ({"fleet": None}, ("reference",)),
        ({"fleet": SINGLE_TIER}, ("single-tier",)),
        ({"fleets": [SINGLE_TIER, "fleets/fleet-64.yaml"]}, ("single-tier", "fleet-64")),
        ({"fleets": ["reference", "reference", SINGLE_TIER]}, ("reference", "single-tier")),
    ],
)
def test_a_runs_training_fleets_are_named_by_their_files(env_kwargs, names) -> None:
    assert training_fleet_names(env_kwargs) == names


def test_a_policy_trained_over_fleets_has_their_union_as_envelope() -> None:
    env = LLMFleetEnv("steady", fleets=[None, SINGLE_TIER], contract=3)
    envelope = training_envelope(env, ("reference", "single-tier"))
    assert envelope == ENVELOPE
    assert Envelope.from_dict(json.loads(json.dumps(envelope.to_dict()))) == envelope


@pytest.mark.parametrize(
    ("facts", "differences"),
    [
        (FleetFacts({"strong": 3, "cheap": 1}), []),
        (FleetFacts({"strong": 4}, frozenset({"qwen2-7b"}), frozenset({"a100-80gb"})), []),
        (FleetFacts({"strong": 8}), ["role 'strong': 8 replicas, outside the trained 2-4"]),
        (FleetFacts({"cheap": 1}), ["role 'strong' missing (trained with 2-4 replicas)"]),
        (
            FleetFacts({"strong": 2, "fast": 3}),
            ["role 'fast': 3 replicas of a role the policy never saw"],
        ),
        (
            FleetFacts({"strong": 2}, frozenset({"llama-2-70b", "llama-3-8b"})),
            ["models ['llama-2-70b'] unknown to the policy"],
        ),
        (
            FleetFacts({"strong": 2}, gpus=frozenset({"h100-80gb"})),
            ["GPUs ['h100-80gb'] unknown to the policy"],
        ),
        (
            FleetFacts({"strong": 2}, spec_digest="0123456789abcdef"),
            ["SLO spec 0123456789abcdef is not the one trained on (llm-serving@1a08"],
        ),
    ],
)
def test_a_fleet_outside_the_envelope_is_described_by_what_differs(facts, differences) -> None:
    found = ENVELOPE.differences(facts)
    assert len(found) == len(differences)
    for sentence, expected in zip(found, differences, strict=True):
        assert sentence.startswith(expected)


def test_an_old_manifest_is_taken_as_the_reference_fleets_with_a_warning() -> None:
    with pytest.warns(EnvelopeAssumedWarning, match="reference fleet"):
        manifest = read_manifest(ZOO / "ppo-standard-v2.onnx")
    envelope = manifest.envelope
    assert envelope.assumed
    assert envelope.roles == {"strong": (2, 2), "cheap": (1, 1)}
    assert envelope.spec_digest == manifest.spec_hash
    assert "envelope" not in manifest.to_dict()  # an assumed envelope is never written
    recorded = replace(envelope, assumed=False)
    data = replace(manifest, envelope=recorded).to_dict()
    assert PolicyManifest.from_dict(data).envelope == recorded


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda e: e["roles"].update(fast={"min_replicas": 1, "max_replicas": 2}), "roles.fast"),
        (lambda e: e["roles"]["strong"].update(min_replicas=3), "roles.strong.max_replicas"),
        (lambda e: e["roles"]["strong"].pop("max_replicas"), "roles.strong.max_replicas"),
        (lambda e: e.update(gpus="a100"), "envelope.gpus"),
        (lambda e: e["slo_spec"].update(digest="0" * 16), "envelope.slo_spec.digest"),
    ],
)
def test_a_bad_envelope_is_refused_naming_its_field(edit, field: str) -> None:
    with pytest.warns(EnvelopeAssumedWarning):
        data = read_manifest(ZOO / "ppo-standard-v2.onnx").to_dict()
    envelope = replace(ENVELOPE, spec_digest=data["spec_hash"]).to_dict()
    envelope["roles"]["strong"] = {"min_replicas": 2, "max_replicas": 2}
    edit(envelope)
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        PolicyManifest.from_dict(data | {"envelope": envelope})


def _preset(tmp_path, env_kwargs: dict):
    path = tmp_path / "fleets.yaml"
    preset = {
        "timesteps": 256,
        "chunk_timesteps": 256,
        "scenarios": ["steady"],
        "ppo": {"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 1},
        "env_kwargs": {"episode_hours": 0.05, "warmup_s": 60.0} | env_kwargs,
    }
    path.write_text(yaml.safe_dump(preset))
    return path


def test_a_preset_names_fleets_to_draw_from_with_contract_3_by_default(tmp_path) -> None:
    preset = load_preset(_preset(tmp_path, {"fleets": ["reference", "single-tier"]}))
    kwargs = preset.env_kwargs.as_kwargs()
    assert kwargs["contract"] == 3
    assert kwargs["fleets"] == [
        str(EXAMPLE_FLEETS_DIR / f"{n}.yaml") for n in ("reference", "single-tier")
    ]
    env = make_training_env(preset.scenarios, kwargs).unwrapped
    assert isinstance(env.observation_contract, ObservationContract)
    assert env.observation_contract.by_role and len(env.fleets) == 2


@pytest.mark.parametrize(
    ("env_kwargs", "match"),
    [
        ({"fleets": ["reference", "single-tier"], "contract": 2}, "needs contract 3"),
        ({"fleets": ["reference"], "fleet": "single-tier"}, "give one"),
        ({"fleets": ["reference", "atlantis"]}, r"env_kwargs\.fleets.*no fleet file 'atlantis'"),
    ],
)
def test_a_bad_fleet_list_in_a_preset_is_refused(tmp_path, env_kwargs, match) -> None:
    with pytest.raises(PresetError, match=match):
        load_preset(_preset(tmp_path, env_kwargs))


@pytest.mark.parametrize(("preset", "contract"), [("quick", 3), ("standard", 3), ("elastic", 2)])
def test_new_training_observes_contract_3_but_elastic_stays_on_2(preset, contract) -> None:
    # The sidecar does not run elastic v3 policies yet: an elastic preset defaults to v2.
    assert load_preset(preset).env_kwargs.as_kwargs()["contract"] == contract
