"""Realistic engine pages (``tests/fixtures/metrics``) and how tests make scrapes of them."""

from __future__ import annotations

import re
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
#: Cumulative samples (grow with traffic); gauges and ``_created`` stay.
_CUMULATIVE = re.compile(r"^(\S+?(?:_total|_bucket|_count|_sum))(\{[^}]*\})? (\S+)$")


def fixture(name: str, model: str | None = None) -> str:
    """A fixture page, its ``model_name`` label set to ``model`` if given."""
    text = (FIXTURES / name).read_text()
    return text if model is None else re.sub(r'model_name="[^"]*"', f'model_name="{model}"', text)


def grown(page: str, factor: float) -> str:
    """``page`` with every cumulative sample multiplied by ``factor`` (same error ratios)."""
    lines = []
    for line in page.splitlines():
        match = _CUMULATIVE.match(line)
        if match and "_created" not in line:
            line = f"{match[1]}{match[2] or ''} {float(match[3]) * factor!r}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def selects(line: str, sample: str) -> bool:
    """Whether ``line`` is of ``sample``: a sample name, or ``name@le`` for one bucket."""
    name, _, le = sample.partition("@")
    return line.startswith(name + "{") and (not le or f'le="{le}"' in line)


def with_value(page: str, sample: str, value: str) -> str:
    """``page`` with the value of the (first) line of ``sample`` replaced."""
    lines = page.splitlines()
    index = next(i for i, line in enumerate(lines) if selects(line, sample))
    lines[index] = lines[index].rsplit(" ", 1)[0] + f" {value}"
    return "\n".join(lines) + "\n"


def without(page: str, sample: str) -> str:
    """``page`` without the lines of ``sample``."""
    return "\n".join(line for line in page.splitlines() if not selects(line, sample)) + "\n"


def value_of(page: str, sample: str) -> float:
    """The value of the (first) line of ``sample``."""
    return float(next(line for line in page.splitlines() if selects(line, sample)).rsplit()[-1])
