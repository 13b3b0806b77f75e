"""The live fleet against the policy's envelope (the fleets it was trained on).

The sidecar refuses to start beside a fleet outside the envelope of its policy
(:class:`policies.manifest.Envelope`), and when discovery later shows the fleet leaving it, it
stops deciding by policy (``envelope.action``: hold or fallback) until the fleet is back.

What is compared is what the engines say: each engine's role is its listed ``tier`` (0:
``strong``, other tiers: ``cheap``), else its pool's name; its model and GPU when the listing
gives them (a fixed ``engines`` list and Kubernetes Pods do not: those are then not compared).
Replicas provisioning or serving count; draining ones are on their way out.
"""

from __future__ import annotations

from collections.abc import Sequence

from envs.contract import ReplicaLifecycle, neutral_knob_values, role_of_tier
from policies.manifest import Envelope, FleetFacts
from policies.sidecar.config import EngineEndpoint
from policies.sidecar.discovery import DiscoveredEngine

#: Lifecycle states whose replicas count as part of the fleet.
_COUNTED = (ReplicaLifecycle.PROVISIONING, ReplicaLifecycle.SERVING)


def engine_role(engine: EngineEndpoint | DiscoveredEngine) -> str:
    """The envelope role of an engine: from its tier when listed, else its pool's name."""
    tier = getattr(engine, "tier", None)
    return engine.pool if tier is None else role_of_tier(tier)


def knobs_without_counterpart(
    engines: Sequence[EngineEndpoint | DiscoveredEngine],
) -> dict[str, float]:
    """Knobs the fleet of ``engines`` has no counterpart for, at the neutral value they are
    held at (as the environments hold them): ``cheap_tier_share`` without a cheap tier."""
    if any(engine_role(e) == "cheap" for e in engines):
        return {}
    return neutral_knob_values(("cheap_tier_share",))


def fleet_facts(engines: Sequence[EngineEndpoint | DiscoveredEngine]) -> FleetFacts:
    """What ``engines`` tell of the fleet: replicas per role, and the models and GPUs the
    listing names (``None`` when no engine names one)."""
    counted = [e for e in engines if getattr(e, "lifecycle", ReplicaLifecycle.SERVING) in _COUNTED]
    replicas: dict[str, int] = {}
    for engine in counted:
        role = engine_role(engine)
        replicas[role] = replicas.get(role, 0) + 1
    models = frozenset(m for e in counted if (m := getattr(e, "model", None)) is not None)
    gpus = frozenset(g for e in counted if (g := getattr(e, "gpu", None)) is not None)
    return FleetFacts(replicas, models or None, gpus or None)


def outside_envelope(
    envelope: Envelope, engines: Sequence[EngineEndpoint | DiscoveredEngine]
) -> list[str]:
    """How the fleet of ``engines`` lies outside ``envelope`` (empty: inside)."""
    return envelope.differences(fleet_facts(engines))


def describe(envelope: Envelope, differences: Sequence[str]) -> str:
    """One message: the fleet is outside the envelope, what differs, what it was trained on."""
    trained = ", ".join(envelope.fleets) or "?"
    return (
        f"the fleet is outside the policy's envelope (trained on fleets {trained}): "
        + "; ".join(differences)
    )
