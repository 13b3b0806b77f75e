"""The sidecar's guardrails keep every published knob within the operator's configured bounds.

The contract's ranges are the outer limit (:meth:`Guardrails.final_clamp`); the configured
``guardrails.bounds`` are tighter, and it is the last bounds pass of :meth:`Guardrails.apply`
that keeps a value in force outside them (bounds tightened by a config change, a fleet started
elsewhere) from staying there through hysteresis or the step limit. Integer knobs are rounded
to the nearest whole value, never truncated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.contract import ActionContract, KnobSpec
from policies.sidecar.config import GuardrailSettings
from policies.sidecar.guardrails import Guardrails

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
