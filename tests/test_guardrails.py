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
    replica_change_toward,
    replicas_knob_name,
)
from policies.sidecar.config import GuardrailSettings, ScalingSettings
from policies.sidecar.guardrails import Guardrails, ReplicaGuardrails

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
    assert [i.guardrail for i in interventions if i.knob == knob][-1] == "bounds"


def test_an_integer_knob_needs_whole_bounds():
    with pytest.raises(ValueError, match=r"guardrails\.bounds\.shed_priority_below: .*whole"):
        Guardrails(CONTRACT, GuardrailSettings(bounds={"shed_priority_below": (0.5, 1.5)}))


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
    assert all(i.knob == STRONG and i.applied == expected for i in interventions)
    if guardrails:  # the published knob is the one that moves toward the bounded count
        assert knobs[STRONG] == replica_change_toward(desired, expected)
    else:
        assert knobs[STRONG] == change


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        ({"strong": None}, "scaling.strong: the policy scales pool 'strong'"),
        ({"gpu": ScalingSettings(deployment="x", max_replicas=1)}, "scaling.gpu: not a pool"),
        (
            {"cheap": ScalingSettings(deployment="x", max_replicas=4)},
            "scaling.cheap.max_replicas: 4 exceeds the policy's max_replicas 3",
        ),
    ],
)
def test_scaling_that_does_not_fit_the_contract_is_refused_naming_the_field(scaling, message):
    settings = {
        "strong": ScalingSettings(deployment="s", max_replicas=6),
        "cheap": ScalingSettings(deployment="c", max_replicas=3),
    } | scaling
    settings = {pool: value for pool, value in settings.items() if value is not None}
    with pytest.raises(ValueError, match=re.escape(message)):
        ReplicaGuardrails(ELASTIC, settings)
