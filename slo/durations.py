"""Prometheus-style durations (``30s``, ``5m``, ``1h30m``, ``3d``, ``2w``) as seconds and back."""

from __future__ import annotations

import re

_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
#: Units used when formatting, largest first (Prometheus accepts compound durations). Weeks are
#: left out so that a 30-day period keeps Sloth's name ``30d``.
_FORMAT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds.

    Parameters
    ----------
    value:
        A Prometheus duration string (``"30s"``, ``"1h30m"``, ``"3d"``) or a number of seconds.

    Raises
    ------
    ValueError
        If the value is not a positive duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: expected e.g. '30s', '5m', '1h', '3d'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text or _PART.sub("", text):
            raise ValueError(f"bad duration {value!r}: expected e.g. '30s', '5m', '1h30m', '3d'")
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"bad duration {value!r}: must be positive and finite")
    return seconds


def format_duration(seconds: float) -> str:
    """Format whole seconds as a compact Prometheus duration (``5400`` -> ``"1h30m"``)."""
    remaining = round(seconds)
    if remaining <= 0:
        raise ValueError(f"cannot format non-positive duration {seconds!r}")
    parts = []
    for unit, size in _FORMAT_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
