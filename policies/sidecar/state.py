"""Persisted sidecar state: the budget engine's windows, the knobs and desired replicas in force,
the kill switch.

A restart must not forget the budget: the engine state (burn-rate windows, period counts,
phase, priors) is saved with :meth:`slo.engine.BudgetEngine.save` and the sidecar's own state as
JSON, both written atomically into one directory. A restore refuses an engine state of another
spec (the sidecar then starts with fresh budgets and says so).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.sidecar.actuators import write_atomically
from slo.engine import BudgetEngine

ENGINE_FILE = "engine.npz"
SIDECAR_FILE = "sidecar.json"
STATE_FORMAT = 1


class StateError(RuntimeError):
    """A state could not be saved or restored (the message says which file and why)."""


@dataclass(frozen=True)
class SidecarState:
    """What the sidecar restores besides the engine.

    Parameters
    ----------
    in_force:
        Knob values last actuated (what the fleet runs with).
    last_safe:
        Knob values of the last action that passed the guardrails.
    kill_switch:
        Whether the kill switch was engaged (it stays engaged across restarts).
    saved_at:
        Engine time of the save.
    desired_replicas:
        Desired replicas per pool in force (an elastic policy's; empty otherwise).
    """

    in_force: dict[str, float]
    last_safe: dict[str, float]
    kill_switch: bool
    saved_at: float
    desired_replicas: dict[str, int] = field(default_factory=dict)


def save(directory: Path, engine: BudgetEngine, state: SidecarState) -> None:
    """Write the engine and sidecar state into ``directory`` (created if needed)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{ENGINE_FILE}.", dir=directory)
        os.close(handle)
        try:
            engine.save(temporary)
            os.replace(temporary, directory / ENGINE_FILE)
        finally:
            Path(temporary).unlink(missing_ok=True)
        body = {"format": STATE_FORMAT, "spec_fingerprint": engine.spec_fingerprint()}
        body.update(state.__dict__)
        write_atomically(directory / SIDECAR_FILE, json.dumps(body, indent=1) + "\n")
    except OSError as exc:
        raise StateError(f"cannot save the state in {directory}: {exc}") from None


def restore(directory: Path, engine: BudgetEngine) -> SidecarState | None:
    """Load a saved state into ``engine``; ``None`` when there is none.

    Raises
    ------
    StateError
        The files are unreadable or belong to another spec; ``engine`` is left as it was.
    """
    engine_path, sidecar_path = directory / ENGINE_FILE, directory / SIDECAR_FILE
    if not engine_path.exists() and not sidecar_path.exists():
        return None
    try:
        body: dict[str, Any] = json.loads(sidecar_path.read_text())
        if body.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported state format {body.get('format')!r}")
        if body.get("spec_fingerprint") != engine.spec_fingerprint():
            raise ValueError("the saved state belongs to a different SLO spec")
        state = SidecarState(
            in_force={str(k): float(v) for k, v in body["in_force"].items()},
            last_safe={str(k): float(v) for k, v in body["last_safe"].items()},
            kill_switch=bool(body["kill_switch"]),
            saved_at=float(body["saved_at"]),
            desired_replicas={str(k): int(v) for k, v in body.get("desired_replicas", {}).items()},
        )
        backup = engine.state_dict()
        try:
            engine.load(engine_path)
        except Exception:
            engine.load_state_dict(backup)
            raise
    except Exception as exc:  # a corrupt file fails in many ways (zip, JSON, shapes, keys)
        raise StateError(f"cannot restore the state from {directory}: {exc}") from None
    return state
