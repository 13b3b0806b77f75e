"""The capacity of a fleet under its traffic, measured once and cached by content.

A fleet file's ``workload.load`` is a multiple of the requests per second that fleet serves
when saturated by that traffic's mix (:func:`envs.sim.simulator.measure_capacity`), so that
"80% load" means the same on every fleet and every trace. Measuring takes a few simulated
minutes of a saturated fleet; the result is cached in a JSON file named by the SHA-256 of
everything it depends on: the pools (the content of a model's ``config.json`` and of a GPU's
calibration file, not their paths), router, gateway and tenants, the traffic's shape, lengths
and trace file content, the step-time and length parameters, and the measuring method. Any
change measures again.

The cache lives in ``$BUDGETPILOT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/budgetpilot`` (by
default ``~/.cache/budgetpilot``), under ``capacity/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from envs.sim.catalog import is_model_path
from envs.sim.config import SimConfig
from envs.sim.knobs import Knobs

#: Environment variable naming the cache folder.
CACHE_ENV = "BUDGETPILOT_CACHE_DIR"
#: Bumped whenever :func:`envs.sim.simulator.measure_capacity` changes what it measures.
METHOD_VERSION = 1
_PARAMS_DIR = Path(__file__).resolve().parent / "params"


def cache_dir() -> Path:
    """The folder of budgetpilot's caches (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "budgetpilot"


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def measured_fleet(config: SimConfig) -> SimConfig:
    """The part of ``config`` its capacity depends on: without scheduled failures, knobs (the
    measurement sets its own), time series, SLO spec or episode settings, and with the
    workload's rate, load and rate curves cleared (a capacity is a steady rate's and mix's)."""
    workload = config.workload.model_copy(update={"rate": None, "load": None, "rate_curve": None})
    unrelated = {"failures": [], "knobs": Knobs(), "series_rows": 16, "slo_spec": None}
    unrelated |= {"tenants": config.steady_tenants()}
    unrelated |= {"capacity_rps": None}
    return config.model_copy(update={"workload": workload, "description": ""} | unrelated)


def capacity_key(config: SimConfig) -> str:
    """SHA-256 of everything the capacity of ``config`` depends on."""
    fleet = measured_fleet(config).model_dump(
        mode="json", exclude={"control_interval_s", "episode_hours"}
    )
    for pool in fleet["pools"]:
        if is_model_path(pool["model"]):
            pool["model"] = {"config.json sha256": _file_digest(pool["model"])}
        gpu = pool["gpu"]
        if isinstance(gpu, dict) and gpu["calibration"] is not None:
            gpu["calibration"] = {"sha256": _file_digest(gpu["calibration"])}
    # Always cleared by measured_fleet; dropped so that keys stay those of fleets before them.
    del fleet["workload"]["rate_curve"]
    for tenant in fleet["tenants"]:
        del tenant["rate_curve"]
    trace = fleet["workload"]["trace"]
    if trace is not None:
        fleet["workload"]["trace"] = {"sha256": _file_digest(trace)}
    content = {
        "method": METHOD_VERSION,
        "fleet": fleet,
        "params": {p.name: _file_digest(p) for p in sorted(_PARAMS_DIR.glob("*.json"))},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def fleet_capacity(config: SimConfig, cache: Path | None = None) -> float:
    """Requests per second the fleet of ``config`` serves saturated by its traffic's mix: its
    ``capacity_rps`` if the file states one, else measured (or read from the cache).

    Parameters
    ----------
    config: the fleet and its traffic (rate, load, failures and knobs do not matter).
    cache: the cache folder (default :func:`cache_dir`).
    """
    from envs.sim.simulator import measure_capacity

    if config.capacity_rps is not None:
        return config.capacity_rps
    key = capacity_key(config)
    path = (cache or cache_dir()) / "capacity" / f"{key}.json"
    try:
        return float(json.loads(path.read_text())["capacity_rps"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet, or an unreadable entry: measure again
    capacity = measure_capacity(measured_fleet(config))
    write_json_atomically(path, {"capacity_rps": capacity, "method": METHOD_VERSION})
    return capacity


def with_load_resolved(config: SimConfig, cache: Path | None = None) -> SimConfig:
    """``config`` with its ``workload.load`` turned into a rate: load times the measured
    capacity (:func:`fleet_capacity`). A config without a load is returned as it is."""
    load = config.workload.load
    if load is None:
        return config
    capacity = fleet_capacity(config, cache)
    if capacity <= 0:
        raise ValueError("workload.load: the fleet serves nothing (no replica at the start)")
    workload = config.workload.model_copy(update={"rate": load * capacity, "load": None})
    return config.model_copy(update={"workload": workload})


def write_json_atomically(path: Path, content: dict, indent: int | None = None) -> None:
    """Write JSON so that a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f, indent=indent)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
