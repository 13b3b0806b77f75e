"""The sidecar's guardrails keep every published knob within the operator's configured bounds.

The contract's ranges are the outer limit (:meth:`Guardrails.final_clamp`); the configured
``guardrails.bounds`` are tighter, and it is the last bounds pass of :meth:`Guardrails.apply`
that keeps a value in force outside them (bounds tightened by a config change, a fleet started
elsewhere) from staying there through hysteresis or the step limit. Integer knobs are rounded
to the nearest whole value, never truncated.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.contract import (
    ActionContract,
    KnobSpec,
    ObservationContract,
    elastic_knobs,
    fleet_independent_contract,
    next_desired_replicas,
    replica_change_toward,
    replicas_knob_name,
)
from policies.sidecar.config import GuardrailSettings, ScalingSettings
from policies.sidecar.guardrails import (
    ACTION_TOLERANCE,
    Guardrails,
    Intervention,
    ReplicaGuardrails,
    action_problem,
)

CONTRACT = ActionContract()
KNOBS = {k.name: k for k in CONTRACT.knobs}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def in_range(knob: KnobSpec) -> st.SearchStrategy[float]:
    """Values of ``knob`` within its contract range (whole values for an integer knob)."""
    if knob.integer:
        return st.integers(int(knob.low), int(knob.high)).map(float)
    return st.floats(knob.low, knob.high, allow_nan=False)


@st.composite
def configured_bounds(draw: st.DrawFn, knob: KnobSpec) -> tuple[float, float]:
    """A ``[low, high]`` bound an operator may configure for ``knob``."""
    low, high = sorted((draw(in_range(knob)), draw(in_range(knob))))
    return low, high


@st.composite
def guardrail_case(draw: st.DrawFn) -> tuple[Guardrails, dict, dict]:
    """Guardrails with random bounds on random knobs, values in force anywhere in the contract's
    ranges (possibly outside the bounds) and any proposal within them."""
    bounded = draw(st.sets(st.sampled_from(sorted(KNOBS)), min_size=1))
    guard = GuardrailSettings(
        max_step=draw(st.floats(0.01, 1.0)),
        hysteresis=draw(st.floats(0.0, 0.49)),
        bounds={name: draw(configured_bounds(KNOBS[name])) for name in bounded},
    )
    in_force = {name: draw(in_range(knob)) for name, knob in KNOBS.items()}
    proposed = {name: draw(in_range(knob)) for name, knob in KNOBS.items()}
    return Guardrails(CONTRACT, guard), in_force, proposed


@FUZZ
@given(case=guardrail_case())
def test_published_values_stay_within_the_configured_bounds(case):
    guardrails, in_force, proposed = case
    values, _ = guardrails.apply(proposed, in_force)
    for name, (low, high) in guardrails.settings.bounds.items():
        assert low <= values[name] <= high, (name, in_force[name], proposed[name])


@pytest.mark.parametrize(
    ("knob", "bounds", "current", "proposed", "expected"),
    [
        # In force above the new bound, the step limit alone would leave it at 0.6.
        ("cheap_tier_share", (0.0, 0.3), 0.8, 0.8, 0.3),
        # Held by hysteresis just outside the bound: the bound wins.
        ("offload_fraction", (0.1, 0.445), 0.45, 0.46, 0.445),
        # An integer knob may always move by one, the bound says two.
        ("shed_priority_below", (2.0, 2.0), 0.0, 0.0, 2.0),
    ],
)
def test_a_value_in_force_outside_the_bounds_is_brought_inside(
    knob, bounds, current, proposed, expected
):
    guardrails = Guardrails(CONTRACT, GuardrailSettings(max_step=0.25, bounds={knob: bounds}))
    in_force = {k.name: k.low for k in CONTRACT.knobs} | {knob: current}
    values, interventions = guardrails.apply(in_force | {knob: proposed}, in_force)
    assert values[knob] == pytest.approx(expected)
    last = [i for i in interventions if i.knob == knob][-1]
    assert (last.guardrail, last.applied) == ("bounds", pytest.approx(expected))


def test_an_intervention_records_the_proposed_and_the_applied_value():
    settings = GuardrailSettings(max_step=1.0, bounds={"cheap_tier_share": (0.0, 0.3)})
    guardrails = Guardrails(CONTRACT, settings)
    in_force = {k.name: k.low for k in CONTRACT.knobs}
    _, interventions = guardrails.apply(in_force | {"cheap_tier_share": 0.8}, in_force)
    assert interventions == [Intervention("cheap_tier_share", "bounds", 0.8, 0.3)]


@pytest.mark.parametrize("bounds", [(0.5, 1.5), (0.0, 1.5), (0.5, 2.0)])
def test_an_integer_knob_needs_whole_bounds(bounds):
    message = f"guardrails.bounds.shed_priority_below: {list(bounds)} must be whole numbers (an "
    with pytest.raises(ValueError, match=re.escape(message + "integer knob)")):
        Guardrails(CONTRACT, GuardrailSettings(bounds={"shed_priority_below": bounds}))


def test_replica_knobs_are_bounded_by_the_scaling_settings_not_by_bounds():
    contract = ActionContract(knobs=elastic_knobs(("strong",)))
    message = (
        "guardrails.bounds.strong_replicas_change: replica knobs are bounded by scaling.<pool> "
        "(min_replicas, max_replicas, max_step)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        Guardrails(contract, GuardrailSettings(bounds={"strong_replicas_change": (-0.1, 0.1)}))


@pytest.mark.parametrize(("proposed", "expected"), [(0.4, 0.0), (0.6, 1.0), (1.6, 2.0)])
def test_integer_knobs_round_to_the_nearest_whole_value(proposed, expected):
    guardrails = Guardrails(CONTRACT, GuardrailSettings(max_step=1.0, hysteresis=0.0))
    in_force = {k.name: k.low for k in CONTRACT.knobs}
    values, _ = guardrails.apply(in_force | {"shed_priority_below": proposed}, in_force)
    assert values["shed_priority_below"] == expected
    clamped, _ = guardrails.final_clamp({"shed_priority_below": proposed}, in_force)
    assert clamped["shed_priority_below"] == expected


@pytest.mark.parametrize(("unit", "expected"), [(-0.6, 0.0), (-0.4, 1.0), (0.55, 2.0)])
def test_decoded_integer_knobs_round_to_the_nearest_whole_value(unit, expected):
    """``shed_priority_below`` spans [0, 2]: u = 0.55 is 1.55, so 2 (truncation would give 1)."""
    action = np.zeros(len(CONTRACT.knobs))
    action[CONTRACT.names.index("shed_priority_below")] = unit
    assert CONTRACT.decode(action)["shed_priority_below"] == expected
    guardrails = Guardrails(CONTRACT, GuardrailSettings())
    decoded = guardrails.decode(action)["shed_priority_below"]  # not rounded yet
    assert decoded == pytest.approx(1.0 + unit) and not math.isclose(decoded, expected)


ELASTIC = ObservationContract(slo_names=("ttft",), max_replicas=(6, 3))
STRONG = replicas_knob_name("strong")


def replica_guardrails(**strong) -> ReplicaGuardrails:
    settings = {"deployment": "vllm-strong", "max_replicas": 6} | strong
    cheap = ScalingSettings(deployment="vllm-cheap", max_replicas=3)
    return ReplicaGuardrails(ELASTIC, {"strong": ScalingSettings(**settings), "cheap": cheap})


@pytest.mark.parametrize(
    ("scaling", "desired", "change", "expected", "guardrails"),
    [
        ({}, 2, 0.5, 3, []),  # one replica up: within every limit
        ({}, 4, 0.5, 5, ["replica_step"]),  # +2 asked, one step allowed
        ({"max_step": 3}, 4, 0.5, 6, []),
        ({"max_replicas": 4, "max_step": 3}, 4, 0.5, 4, ["replica_bounds"]),
        ({"min_replicas": 3, "max_step": 3}, 3, -0.5, 3, ["replica_bounds"]),
        ({"min_replicas": 2}, 4, -0.5, 3, ["replica_step"]),
        ({"min_replicas": 3, "max_step": 2}, 1, 0.0, 3, ["replica_bounds"]),  # started below
        ({"max_replicas": 2, "max_step": 2}, 6, 0.0, 2, ["replica_bounds"]),  # started above
        ({}, 3, 0.05, 3, []),  # inside the dead band: kept
    ],
)
def test_desired_replicas_move_by_max_step_within_the_scaling_bounds(
    scaling, desired, change, expected, guardrails
):
    replicas = replica_guardrails(**scaling)
    counts, knobs, interventions = replicas.apply(
        {"strong": desired, "cheap": 1}, {STRONG: change, "cheap_replicas_change": 0.0}
    )
    assert counts == {"strong": expected, "cheap": 1}
    assert [i.guardrail for i in interventions] == guardrails
    proposed = next_desired_replicas(desired, change, 6)
    assert [(i.knob, i.proposed, i.applied) for i in interventions] == [
        (STRONG, proposed, expected) for _ in guardrails
    ]
    if guardrails:  # the published knob is the one that moves toward the bounded count
        assert knobs[STRONG] == replica_change_toward(desired, expected)
    else:
        assert knobs[STRONG] == change


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        (
            {"strong": None},
            "scaling.strong: the policy scales pool 'strong'; give its deployment, "
            "min_replicas, max_replicas and max_step",
        ),
        (
            {"strong": None, "gpu": ScalingSettings(deployment="x", max_replicas=1)},
            "scaling.gpu: not a pool of the policy's contract ['strong', 'cheap']\n  "
            "scaling.strong: the policy scales pool 'strong'",
        ),
        ({"gpu": ScalingSettings(deployment="x", max_replicas=1)}, "scaling.gpu: not a pool"),
        (
            {"cheap": ScalingSettings(deployment="x", max_replicas=4)},
            "scaling.cheap.max_replicas: 4 exceeds the policy's max_replicas 3",
        ),
    ],
)
def test_scaling_that_does_not_fit_the_contract_is_refused_naming_the_field(scaling, message):
    """Each problem named, one per line."""
    settings = {
        "strong": ScalingSettings(deployment="s", max_replicas=6),
        "cheap": ScalingSettings(deployment="c", max_replicas=3),
    } | scaling
    settings = {pool: value for pool, value in settings.items() if value is not None}
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplicaGuardrails(ELASTIC, settings)


ELASTIC_V3 = fleet_independent_contract(("ttft",), ("5m",), (), "", scales=True)
TIERED_ROLES = {"big": "strong", "fast": "cheap", "spare": "cheap"}


def test_a_v3_roles_knob_moves_each_of_its_pools_within_the_pools_own_bounds():
    scaling = {
        "big": ScalingSettings(deployment="b", max_replicas=4),
        "fast": ScalingSettings(deployment="f", max_replicas=8, max_step=2),
        "spare": ScalingSettings(deployment="s", max_replicas=2),
    }
    replicas = ReplicaGuardrails(ELASTIC_V3, scaling, TIERED_ROLES)
    desired = {"big": 2, "fast": 4, "spare": 2}
    knobs = {STRONG: 0.5, "cheap_replicas_change": 0.5}
    counts, published, interventions = replicas.apply(desired, knobs)
    # Every pool of the cheap role grows by its knob, each up to its own max_replicas (the
    # cap of a v3 policy's pool), which needs no intervention.
    assert counts == {"big": 3, "fast": 6, "spare": 2}
    assert interventions == []
    assert published == knobs  # a knob of two pools keeps the policy's value
    # The observation sees each role's sums.
    assert replicas.by_contract_pool(counts) == [3.0, 8.0]


def test_v3_scaling_must_name_the_listed_pools():
    scaling = {"big": ScalingSettings(deployment="b", max_replicas=4)}
    with pytest.raises(ValueError, match=r"scaling.fast: the policy scales pool 'fast'"):
        ReplicaGuardrails(ELASTIC_V3, scaling, TIERED_ROLES)
    scaling |= {"gpu": ScalingSettings(deployment="g", max_replicas=1)}
    with pytest.raises(ValueError, match=r"scaling.gpu: not a pool of the listed engines' pools"):
        ReplicaGuardrails(ELASTIC_V3, scaling, {"big": "strong"})


# ------------------------------------------------------------------------------------------------
# The rules one by one, at their edges


def one_knob(knob: KnobSpec) -> ActionContract:
    return ActionContract(knobs=(knob,))


@pytest.mark.parametrize(
    ("knob", "hysteresis", "current", "proposed", "expected"),
    [
        # Integer: held within half a step plus the band (0.54 here)...
        (KnobSpec("level", 0.0, 2.0, integer=True), 0.02, 1.0, 1.52, 1.0),
        (KnobSpec("level", 0.0, 2.0, integer=True), 0.25, 0.0, 0.99, 0.0),
        # ...and not at it: the band is strict.
        (KnobSpec("level", 0.0, 2.0, integer=True), 0.25, 0.0, 1.0, 1.0),
        # The band is a fraction of the range, wherever the range starts.
        (KnobSpec("replicas", 1.0, 5.0, integer=True), 0.1, 2.0, 3.0, 3.0),
        (KnobSpec("replicas", 1.0, 5.0, integer=True), 0.1, 2.0, 2.85, 2.0),
        # Continuous: within twice the band in [-1, 1] units (strictly), on either side.
        (KnobSpec("share", -1.0, 1.0), 0.125, 0.0, 0.25, 0.25),
        (KnobSpec("share", -1.0, 1.0), 0.125, 0.0, 0.24, 0.0),
        (KnobSpec("share", -1.0, 1.0), 0.125, 0.6, 0.61, 0.6),
        (KnobSpec("share", -1.0, 1.0), 0.125, 0.6, 0.4, 0.6),
    ],
)
def test_hysteresis_holds_only_within_its_band(knob, hysteresis, current, proposed, expected):
    guardrails = Guardrails(one_knob(knob), GuardrailSettings(max_step=1.0, hysteresis=hysteresis))
    values, _ = guardrails.apply({knob.name: proposed}, {knob.name: current})
    assert values[knob.name] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("knob", "max_step", "current", "proposed", "expected"),
    [
        (KnobSpec("replicas", 1.0, 5.0, integer=True), 0.5, 1.0, 5.0, 3.0),  # half of 4 steps
        (KnobSpec("replicas", 1.0, 5.0, integer=True), 0.1, 5.0, 1.0, 4.0),  # always one
        (KnobSpec("share", -1.0, 1.0), 0.25, 0.5, -1.0, 0.0),
        (KnobSpec("tokens", 1024.0, 16384.0, scale="log"), 0.25, 1024.0, 16384.0, 2048.0),
    ],
)
def test_the_step_limit_is_a_share_of_the_range(knob, max_step, current, proposed, expected):
    guardrails = Guardrails(one_knob(knob), GuardrailSettings(max_step=max_step, hysteresis=0.0))
    values, _ = guardrails.apply({knob.name: proposed}, {knob.name: current})
    assert values[knob.name] == pytest.approx(expected)


def test_replica_knobs_pass_the_knob_guardrails_unchanged():
    contract = ActionContract(knobs=elastic_knobs(("strong", "cheap")))
    guardrails = Guardrails(contract, GuardrailSettings(max_step=0.01))
    in_force = {k.name: k.low for k in contract.knobs}
    proposed = {k.name: k.high for k in contract.knobs}
    values, interventions = guardrails.apply(proposed, in_force)
    assert {n: values[n] for n in ("strong_replicas_change", "cheap_replicas_change")} == {
        "strong_replicas_change": 0.5,
        "cheap_replicas_change": 0.5,
    }
    assert {i.knob for i in interventions} == set(CONTRACT.names)  # every other knob limited


def test_final_clamp_records_what_it_changed_and_falls_back_to_the_default():
    guardrails = Guardrails(CONTRACT, GuardrailSettings())
    default = {k.name: k.high for k in CONTRACT.knobs}
    default["offload_fraction"] = math.inf  # a default that is no value: the knob's low end
    values = {"cheap_tier_share": 5.0, "offload_fraction": math.nan, "admission_limit": math.nan}
    values |= {n: default[n] for n in CONTRACT.names if n not in values}
    del values["max_context_tokens"]
    clamped, interventions = guardrails.final_clamp(values, default)
    assert clamped["offload_fraction"] == 0.0
    assert clamped["admission_limit"] == 3.0  # NaN: the default
    assert clamped["max_context_tokens"] == 16384.0  # missing: the default
    assert [(i.knob, i.guardrail, i.applied) for i in interventions] == [
        ("cheap_tier_share", "final_clamp", 0.8),
        ("offload_fraction", "final_clamp", 0.0),
        ("admission_limit", "final_clamp", 3.0),
        ("max_context_tokens", "final_clamp", 16384.0),
    ]
    assert interventions[0].proposed == 5.0 and interventions[-1].proposed is None


def test_configured_knob_values_are_checked_by_name_and_range():
    guardrails = Guardrails(CONTRACT, GuardrailSettings())
    edges = {k.name: k.low for k in CONTRACT.knobs} | {"cheap_tier_share": 0.8}
    assert guardrails.check_values(edges, "initial_knobs") == edges  # both ends are in range
    with pytest.raises(ValueError, match=r"^initial_knobs\.warp: unknown knob"):
        guardrails.check_values({"warp": 1.0}, "initial_knobs")
    with pytest.raises(ValueError, match=r"kill_knobs\.cheap_tier_share: 0\.9 is outside"):
        guardrails.check_values({"cheap_tier_share": 0.9}, "kill_knobs")


@pytest.mark.parametrize(
    ("action", "problem"),
    [
        (np.zeros((1, 7)), None),  # a batch of one, as onnxruntime returns it
        (np.full(7, 1.0 + ACTION_TOLERANCE), None),  # float32 rounding of a tanh at 1
        (np.zeros((1, 6)), "6 values for 7 knobs"),
        ([0.0, math.nan, 0.0, 0.0, math.inf, 0.0, 0.0], "non-finite values at [1, 4]"),
    ],
)
def test_action_shapes_tolerance_and_the_entries_named(action, problem):
    assert action_problem(action, 7) == problem


def test_decode_takes_a_batch_of_one_and_refuses_a_wrong_length():
    guardrails = Guardrails(CONTRACT, GuardrailSettings())
    decoded = guardrails.decode(np.ones((1, 7)))
    assert decoded == pytest.approx({k.name: k.high for k in CONTRACT.knobs})
    with pytest.raises(ValueError):
        guardrails.decode(np.zeros(8))
