"""Read the series the sidecar needs from a Prometheus exposition page.

An engine's page holds hundreds of series; the sidecar needs a few: its gauges and counters,
and of each SLO's latency histogram only the ``_count``, the bucket at the SLO's threshold and
the ``+Inf`` bucket (kept so that the metrics feed can tell a threshold that is no bucket
boundary). Lines are selected by metric name and ``le`` label first, and only the selected
lines go through prometheus_client's parser, which checks their syntax (a selected line it
refuses fails the page; lines of other series are neither read nor checked; a NaN spelt as a C
runtime prints it is read as NaN, one non-finite series): parsing is most of
a scrape's cost, and 64 engines must be read within the 100 ms cycle budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from prometheus_client.parser import text_string_to_metric_families

from slo.metrics import normalise_nan

#: A parsed sample: metric name, labels, value.
Sample = tuple[str, dict[str, str], float]

_LE = re.compile(r'[{,]\s*le\s*=\s*"([^"]*)"')


class PageError(ValueError):
    """The page is not valid exposition text (the message says where)."""


@dataclass(frozen=True)
class SeriesSelection:
    """Which series to read.

    Parameters
    ----------
    names:
        Sample names read whole (gauges, counters, histogram ``_count``).
    buckets:
        Histogram ``_bucket`` sample names -> the ``le`` bounds to keep (``+Inf`` always is).
    """

    names: frozenset[str]
    buckets: Mapping[str, frozenset[float]]

    @classmethod
    def of(
        cls, names: Iterable[str | None], buckets: Mapping[str, Iterable[float]]
    ) -> SeriesSelection:
        """Build a selection (``None`` names are skipped)."""
        return cls(
            names=frozenset(n for n in names if n),
            buckets={name: frozenset(bounds) for name, bounds in buckets.items()},
        )

    @cached_property
    def prefixes(self) -> tuple[str, ...]:
        """Every selected line starts with one of these (a cheap first filter)."""
        return tuple(sorted(self.names | set(self.buckets)))

    def keeps(self, name: str, line: str) -> bool:
        """Whether a line starting with a selected name is a selected series (buckets: by
        bound)."""
        if name in self.names:
            return True
        bounds = self.buckets.get(name)
        if bounds is None:
            return False
        le = _LE.search(line)
        if le is None:
            return True  # a bucket without a bound: the parser's and the feed's problem
        return _bound_selected(le.group(1), bounds)


def _bound_selected(label: str, bounds: frozenset[float]) -> bool:
    try:
        bound = float(label)
    except ValueError:
        return True  # not a number: kept so the metrics feed reports it
    return math.isinf(bound) or any(math.isclose(bound, b, rel_tol=1e-9) for b in bounds)


def read_page(text: str, selection: SeriesSelection) -> list[Sample]:
    """The selected samples of one exposition page.

    Raises
    ------
    PageError
        A selected line is not valid exposition text, or no selected series is on the page.
    """
    # Lines of other series are neither read nor checked; no TYPE lines are needed either,
    # since the metrics feed works on sample names.
    kept = []
    for line in text.splitlines():
        if line.startswith(selection.prefixes):
            name = line.split("{", 1)[0].split(None, 1)[0]
            if selection.keeps(name, line):
                kept.append(normalise_nan(line))
    if not kept:
        raise PageError("none of the series the sidecar reads is on the page")
    try:
        return [
            (s.name, s.labels, float(s.value))
            for family in text_string_to_metric_families("\n".join(kept) + "\n")
            for s in family.samples
        ]
    except Exception as exc:  # the parser raises ValueError, but also IndexError/KeyError
        raise PageError(f"invalid exposition text: {type(exc).__name__}: {exc}"[:300]) from None
